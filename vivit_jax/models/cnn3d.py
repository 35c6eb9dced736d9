"""The term project's 3D CNN baseline (its Section III.E).

Volumes are channels-last: (batch, D, H, W, C).
"""

from typing import Optional, Sequence

import flax.linen as nn
import jax.numpy as jnp


class CNN3D(nn.Module):
  """The term project's 3D CNN (its Section III.E).

  Three blocks of Conv3D(k=3, stride 1, padding 1) -> BatchNorm -> ReLU ->
  MaxPool(2), with 32, 64 and 128 filters, global average pooling and a
  linear classifier: 279,435 parameters for 11 classes.

  Attributes:
    axis_name: the `pmap` axis over which batch statistics are averaged.

  No attribute has a default: `create_model` sets each from the config,
  whose defaults live in `vivit_jax.config_builders`.
  """
  num_classes: int
  features: Sequence[int]
  axis_name: Optional[str]
  dtype: jnp.dtype

  @nn.compact
  def __call__(self, clip: jnp.ndarray, *, train: bool) -> jnp.ndarray:
    """(batch, D, H, W, C) -> (batch, num_classes)."""
    x = clip
    for features in self.features:
      x = nn.Conv(features, (3, 3, 3), padding=1, dtype=self.dtype)(x)
      x = nn.BatchNorm(use_running_average=not train, momentum=0.9,
                       epsilon=1e-5, axis_name=self.axis_name,
                       dtype=self.dtype)(x)
      x = nn.max_pool(nn.relu(x), (2, 2, 2), strides=(2, 2, 2))
    x = jnp.mean(x, axis=(1, 2, 3))
    return nn.Dense(self.num_classes, dtype=self.dtype, name='head')(x).astype(
        jnp.float32)
