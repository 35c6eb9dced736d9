"""The term project's 3D CNN baseline (its Section III.E).

Volumes are channels-last: (batch, D, H, W, C).
"""

from typing import Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vivit_jax.models import cpu_batch_norm_pool
from vivit_jax.models import cpu_conv
from vivit_jax.models import cpu_kernels

# Convolutions by the fused kernels of `cpu_conv` (where `cpu_kernels.used()`)
# or as one matmul over unfolded patches (`unfolded_conv`); BatchNorm, ReLU
# and max pooling by the fused kernels of `cpu_batch_norm_pool` (there, for
# float32) or with max pooling as a max over the axes of a reshaped array
# instead of XLA's reduce-window, whose gradient (select-and-scatter, lowered
# on CPUs through packed (value, index) pairs) took most of the train step.
# False gives `lax.conv_general_dilated`, `nn.BatchNorm`, `nn.relu` and
# `nn.max_pool` (for tests and comparisons).
FAST_PATHS = True
_PADDING = ((1, 1),) * 3
# The term project's BatchNorm (Flax's momentum: the share of the running
# average kept) and max pooling window.
_MOMENTUM, _EPSILON, _POOL = 0.9, 1e-5, 2


def unfolded_conv(x: jnp.ndarray, kernel: jnp.ndarray,
                  padding: Sequence[tuple[int, int]]) -> jnp.ndarray:
  """A stride-1 channels-last convolution as one matmul: the k^n shifted
  copies of the padded input are concatenated along the channels,
  (batch * positions, k^n * C), and multiplied with the kernel reshaped to
  (k^n * C, F). Same sums as the convolution; XLA:CPU's convolution (and,
  above all, its gradients) with few input channels ran 2-17x slower.

  Args:
    x: (batch, *spatial, C).
    kernel: (*window, C, F).
    padding: (low, high) for each spatial axis.

  Returns:
    (batch, *out, F), out = spatial + low + high - window + 1.
  """
  window = kernel.shape[:-2]
  padded = jnp.pad(x, ((0, 0), *padding, (0, 0)))
  out = [p - k + 1 for p, k in zip(padded.shape[1:-1], window)]
  shifted = []
  for offset in np.ndindex(*window):
    index = tuple(slice(o, o + size) for o, size in zip(offset, out))
    shifted.append(padded[(slice(None), *index)])
  columns = jnp.concatenate(shifted, axis=-1)  # (batch, *out, k^n * C)
  return jnp.einsum('...i,io->...o', columns,
                    kernel.reshape(-1, kernel.shape[-1]))


class Conv3(nn.Module):
  """Conv3D(k=3, stride 1, padding 1) with `nn.Conv`'s parameters ('kernel'
  (3, 3, 3, C, F), LeCun normal; 'bias' (F,), zeros) and function.

  (batch, D, H, W, C) -> (batch, D, H, W, F). The CPU kernels add the bias
  as they write the output, one pass less over it.
  """
  features: int
  dtype: jnp.dtype

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    kernel = self.param('kernel', nn.initializers.lecun_normal(),
                        (3, 3, 3, x.shape[-1], self.features))
    bias = self.param('bias', nn.initializers.zeros_init(), (self.features,))
    x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias,
                                              dtype=self.dtype)
    if FAST_PATHS and cpu_kernels.used():
      return cpu_conv.conv(x, kernel, _PADDING, bias)
    if FAST_PATHS:
      return unfolded_conv(x, kernel, _PADDING) + bias
    return jax.lax.conv_general_dilated(
        x, kernel, (1, 1, 1), _PADDING,
        dimension_numbers=('NDHWC', 'DHWIO', 'NDHWC')) + bias


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


class BatchNormReluPool(nn.Module):
  """`nn.BatchNorm` (its parameters, statistics and function), ReLU and
  `max_pool`, in one pass of the fused CPU kernels over the input forward and
  one backward (`cpu_batch_norm_pool`).

  (batch, D, H, W, C) float32 -> (batch, D // window, H // window,
  W // window, C).
  """
  use_running_average: bool
  momentum: float
  epsilon: float
  axis_name: Optional[str]
  window: int

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    channels = (x.shape[-1],)
    ra_mean = self.variable('batch_stats', 'mean', jnp.zeros, channels)
    ra_var = self.variable('batch_stats', 'var', jnp.ones, channels)
    scale = self.param('scale', nn.initializers.ones, channels)
    bias = self.param('bias', nn.initializers.zeros, channels)
    if self.use_running_average:
      return cpu_batch_norm_pool.normalize_relu_pool(
          x, ra_mean.value, jax.lax.rsqrt(ra_var.value + self.epsilon) * scale,
          bias, self.window)
    initializing = self.is_initializing()
    pooled, mean, var = cpu_batch_norm_pool.batch_norm_relu_pool(
        x, scale, bias, self.epsilon,
        None if initializing else self.axis_name, self.window)
    if not initializing:
      ra_mean.value = self.momentum * ra_mean.value + (1 - self.momentum) * mean
      ra_var.value = self.momentum * ra_var.value + (1 - self.momentum) * var
    return pooled


def batch_norm_blocks(x: jnp.ndarray, features: Sequence[int], *, train: bool,
                      axis_name: Optional[str], dtype: jnp.dtype
                      ) -> jnp.ndarray:
  """The 3D CNN's blocks, built in the calling module (call it from its
  `nn.compact` method): per level i, `Conv_i` (Conv3D, k=3, stride 1,
  padding 1) -> `BatchNorm_i` -> ReLU -> MaxPool(2).

  (batch, D, H, W, C) -> (batch, D', H', W', features[-1]), each size halved
  (rounded down) per level; batch statistics averaged over `axis_name`.
  """
  fused = (FAST_PATHS and cpu_kernels.used()
           and jnp.dtype(dtype) == jnp.float32)
  for i, width in enumerate(features):
    x = Conv3(width, dtype, name=f'Conv_{i}')(x)
    if fused:
      x = BatchNormReluPool(not train, _MOMENTUM, _EPSILON, axis_name, _POOL,
                            name=f'BatchNorm_{i}')(x)
    else:
      x = nn.BatchNorm(use_running_average=not train, momentum=_MOMENTUM,
                       epsilon=_EPSILON, axis_name=axis_name, dtype=dtype,
                       name=f'BatchNorm_{i}')(x)
      x = max_pool(nn.relu(x), _POOL)
  return x


class CNN3D(nn.Module):
  """The term project's 3D CNN (its Section III.E).

  Three blocks of Conv3D(k=3, stride 1, padding 1) -> BatchNorm -> ReLU ->
  MaxPool(2) (`batch_norm_blocks`), with 32, 64 and 128 filters, global
  average pooling and a linear classifier: 279,435 parameters for 11
  classes.

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
    x = batch_norm_blocks(clip, self.features, train=train,
                          axis_name=self.axis_name, dtype=self.dtype)
    x = jnp.mean(x, axis=(1, 2, 3))
    return nn.Dense(self.num_classes, dtype=self.dtype, name='head')(x).astype(
        jnp.float32)
