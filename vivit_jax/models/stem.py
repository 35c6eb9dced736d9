"""A convolutional stem before the tubelet embedding: a hybrid ViViT.

Small volume data sets (MedMNIST 3D: about a thousand training volumes)
give a transformer too little data to learn local features from scratch;
a few 3D convolutions before the tokens give it a CNN's locality, as the
hybrid ViTs of Dosovitskiy et al. (Section 3.1) do with a ResNet.

Clips are channels-last: (batch, T, H, W, C).
"""

from typing import Optional, Sequence

import flax.linen as nn
import jax.numpy as jnp

from vivit_jax.models.cnn3d import batch_norm_blocks
from vivit_jax.models.cnn3d import Conv3
from vivit_jax.models.cnn3d import max_pool
from vivit_jax.models import cpu_layer_norm

NORMS = ('layer', 'batch')


class ConvStem(nn.Module):
  """Per level: Conv3D(3^3, stride 1, padding 1) -> norm -> activation ->
  MaxPool(2), with `features[i]` filters at level i.

  norm 'layer': LayerNorm over the channels and GELU, so that an example's
  features do not depend on the rest of its batch; parameters
  `Conv_i/{kernel (3, 3, 3, C_in, F_i), bias}` and `LayerNorm_i/{scale,
  bias}`. norm 'batch': the 3D CNN's blocks (`cnn3d.batch_norm_blocks`),
  BatchNorm and ReLU; `BatchNorm_i/{scale, bias}` and the statistics
  `batch_stats/BatchNorm_i/{mean, var}` instead of `LayerNorm_i`.

  Attributes:
    features: filters per level; each level halves T, H and W (rounding
      down).
    norm: 'layer' or 'batch'.
    axis_name: the `pmap` axis over which batch statistics are averaged.
  """
  features: Sequence[int]
  norm: str = 'layer'
  axis_name: Optional[str] = None
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, clip: jnp.ndarray, *, train: bool = False
               ) -> jnp.ndarray:
    """(batch, T, H, W, C) -> (batch, T >> L, H >> L, W >> L, features[-1]),
    L = len(features): each level halves the sizes, rounding down.

    `train`: BatchNorm normalises by the batch's statistics and updates the
    running ones (norm 'batch' only).
    """
    if self.norm == 'batch':
      return batch_norm_blocks(clip, self.features, train=train,
                               axis_name=self.axis_name, dtype=self.dtype)
    x = clip
    for i, features in enumerate(self.features):
      x = Conv3(features, self.dtype, name=f'Conv_{i}')(x)
      x = cpu_layer_norm.LayerNorm(epsilon=1e-6, dtype=self.dtype)(x)
      x = max_pool(nn.gelu(x, approximate=False), 2)
    return x
