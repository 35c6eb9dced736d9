"""The term project's 3D CNN baseline (its Section III.E).

Volumes are channels-last: (batch, D, H, W, C).
"""

from typing import Optional, Sequence

import flax.linen as nn
import jax.numpy as jnp

# Max pooling as a max over the axes of a reshaped array instead of XLA's
# reduce-window, whose gradient (select-and-scatter, lowered on CPUs through
# packed (value, index) pairs) took most of the train step. False gives
# `nn.max_pool` (for tests and comparisons).
FAST_PATHS = True


def max_pool(x: jnp.ndarray, window: int) -> jnp.ndarray:
  """`nn.max_pool(x, (window,) * 3, strides=(window,) * 3)`, VALID padding.

  (batch, D, H, W, C) -> (batch, D // window, H // window, W // window, C).
  The gradient goes to the maximum of each window; where several elements
  of a window tie for it, it is shared among them (`jnp.max`'s rule), where
  `nn.max_pool` gives it to one: after a ReLU, ties at 0 get no gradient
  either way.
  """
  if not FAST_PATHS:
    return nn.max_pool(x, (window,) * 3, strides=(window,) * 3)
  b, *spatial, c = x.shape
  kept = [size // window for size in spatial]
  x = x[:, :kept[0] * window, :kept[1] * window, :kept[2] * window]
  x = x.reshape(b, kept[0], window, kept[1], window, kept[2], window, c)
  return jnp.max(x, axis=(2, 4, 6))


class CNN3D(nn.Module):
  """The term project's 3D CNN (its Section III.E).

  Three blocks of Conv3D(k=3, stride 1, padding 1) -> BatchNorm -> ReLU ->
  MaxPool(2), with 32, 64 and 128 filters, global average pooling and a
  linear classifier: 279,435 parameters for 11 classes.

  Attributes:
    axis_name: the `pmap` axis over which batch statistics are averaged.
  """
  num_classes: int
  features: Sequence[int] = (32, 64, 128)
  axis_name: Optional[str] = None
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, clip: jnp.ndarray, *, train: bool) -> jnp.ndarray:
    """(batch, D, H, W, C) -> (batch, num_classes)."""
    x = clip
    for features in self.features:
      x = nn.Conv(features, (3, 3, 3), padding=1, dtype=self.dtype)(x)
      x = nn.BatchNorm(use_running_average=not train, momentum=0.9,
                       epsilon=1e-5, axis_name=self.axis_name,
                       dtype=self.dtype)(x)
      x = max_pool(nn.relu(x), 2)
    x = jnp.mean(x, axis=(1, 2, 3))
    return nn.Dense(self.num_classes, dtype=self.dtype, name='head')(x).astype(
        jnp.float32)
