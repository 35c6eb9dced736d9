"""A convolutional stem before the tubelet embedding: a hybrid ViViT.

Small volume data sets (MedMNIST 3D: about a thousand training volumes)
give a transformer too little data to learn local features from scratch;
a few 3D convolutions before the tokens give it a CNN's locality, as the
hybrid ViTs of Dosovitskiy et al. (Section 3.1) do with a ResNet.

Clips are channels-last: (batch, T, H, W, C).
"""

from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp

from vivit_jax.models.cnn3d import Conv3
from vivit_jax.models.cnn3d import max_pool


class ConvStem(nn.Module):
  """Per level: Conv3D(3^3, stride 1, padding 1) -> LayerNorm -> GELU ->
  MaxPool(2), with `features[i]` filters at level i.

  Parameters: `Conv_i/{kernel (3, 3, 3, C_in, F_i), bias}` and
  `LayerNorm_i/{scale, bias}`. LayerNorm over the channels, not BatchNorm,
  so that an example's features do not depend on the rest of its batch.

  Attributes:
    features: filters per level; each level halves T, H and W.
  """
  features: Sequence[int]
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, clip: jnp.ndarray) -> jnp.ndarray:
    """(batch, T, H, W, C) -> (batch, T/2^L, H/2^L, W/2^L, features[-1])."""
    x = clip
    for i, features in enumerate(self.features):
      x = Conv3(features, self.dtype, name=f'Conv_{i}')(x)
      x = nn.LayerNorm(epsilon=1e-6, dtype=self.dtype)(x)
      x = max_pool(nn.gelu(x, approximate=False), 2)
    return x
