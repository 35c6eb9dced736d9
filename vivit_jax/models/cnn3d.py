"""The term project's 3D CNN baseline (its Section III.E).

Volumes are channels-last: (batch, D, H, W, C).
"""

from typing import Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

# Convolutions as one matmul over unfolded (im2col) patches
# (`unfolded_conv`), and max pooling as a max over the axes of a reshaped
# array instead of XLA's reduce-window, whose gradient (select-and-scatter,
# lowered on CPUs through packed (value, index) pairs) took most of the train
# step. False gives `lax.conv_general_dilated` and `nn.max_pool` (for tests
# and comparisons).
FAST_PATHS = True


def unfolded_conv(lhs, rhs, window_strides, padding, lhs_dilation=None,
                  rhs_dilation=None, dimension_numbers=None,
                  feature_group_count=1, precision=None):
  """`lax.conv_general_dilated` (Flax's `Conv.conv_general_dilated` hook) as
  one matmul: the k^n shifted copies of the padded input are concatenated
  along the channels, (batch * positions, k^n * C), and multiplied with the
  kernel reshaped to (k^n * C, F). Same sums as the convolution; XLA:CPU's
  convolution (and, above all, its gradients) with few input channels ran
  2-17x slower. Channels-last, stride 1, no dilation, one group only; other
  convolutions go to `lax.conv_general_dilated`.
  """
  n = lhs.ndim - 2
  channels_last = jax.lax.ConvDimensionNumbers(
      lhs_spec=(0, n + 1, *range(1, n + 1)),
      rhs_spec=(n + 1, n, *range(n)),
      out_spec=(0, n + 1, *range(1, n + 1)))
  plain = (all(s == 1 for s in window_strides)
           and all(d == 1 for d in (lhs_dilation or ()))
           and all(d == 1 for d in (rhs_dilation or ()))
           and feature_group_count == 1 and not isinstance(padding, str)
           and dimension_numbers == channels_last)
  if not plain:
    return jax.lax.conv_general_dilated(
        lhs, rhs, window_strides, padding, lhs_dilation=lhs_dilation,
        rhs_dilation=rhs_dilation, dimension_numbers=dimension_numbers,
        feature_group_count=feature_group_count, precision=precision)
  window = rhs.shape[:n]
  padded = jnp.pad(lhs, ((0, 0), *padding, (0, 0)))
  out = [p - k + 1 for p, k in zip(padded.shape[1:-1], window)]
  shifted = []
  for offset in np.ndindex(*window):
    index = tuple(slice(o, o + size) for o, size in zip(offset, out))
    shifted.append(padded[(slice(None), *index)])
  columns = jnp.concatenate(shifted, axis=-1)  # (batch, *out, k^n * C)
  return jnp.einsum('...i,io->...o', columns,
                    rhs.reshape(-1, rhs.shape[-1]), precision=precision)


def conv3(features: int, dtype: jnp.dtype) -> nn.Conv:
  """Conv3D(k=3, stride 1, padding 1), as `unfolded_conv` where FAST_PATHS."""
  return nn.Conv(features, (3, 3, 3), padding=1, dtype=dtype,
                 conv_general_dilated=unfolded_conv if FAST_PATHS else None)


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
      x = conv3(features, self.dtype)(x)
      x = nn.BatchNorm(use_running_average=not train, momentum=0.9,
                       epsilon=1e-5, axis_name=self.axis_name,
                       dtype=self.dtype)(x)
      x = max_pool(nn.relu(x), 2)
    x = jnp.mean(x, axis=(1, 2, 3))
    return nn.Dense(self.num_classes, dtype=self.dtype, name='head')(x).astype(
        jnp.float32)
