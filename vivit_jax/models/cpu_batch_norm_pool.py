"""BatchNorm -> ReLU -> max pooling by the CPU kernels of
`cpu_batch_norm_pool.cc`: one pass over the input forward and one backward.

Same function and gradients as `nn.BatchNorm` (fast variance, float32),
`nn.relu` and `cnn3d.max_pool` (VALID windows of window^3, stride window;
where elements of a window tie for its maximum, they share its gradient, as
`jnp.max`'s). XLA runs these as several passes over the convolution's
output, the largest tensor of the 3D CNN's step (benchmarks/PROFILE.md).

Shapes: y (batch, D, H, W, C) float32; per-channel vectors (C,); pooled
(batch, D // window, H // window, W // window, C).
"""

import functools
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from vivit_jax.models import cpu_kernels

_AXES = (0, 1, 2, 3)


def _pooled_shape(y: jnp.ndarray, window: int) -> jax.ShapeDtypeStruct:
  b, d, h, w, c = y.shape
  return jax.ShapeDtypeStruct(
      (b, d // window, h // window, w // window, c), jnp.float32)


def _pool(y, mean, mul, bias, window):
  """(pooled, centered): the pooled max of relu((y - mean) * mul + bias), and
  y - mean at each window's maximum."""
  shape = _pooled_shape(y, window)
  return jax.ffi.ffi_call(cpu_kernels.BATCH_NORM_POOL_FORWARD, (shape, shape),
                          vmap_method='sequential')(
                              y, mean, mul, bias, window=np.int64(window))


def _pool_grad(y, g, mean, mul, bias, alpha, beta, window):
  """mul * dz + alpha + beta * y, dz the gradient of `_pool`'s pooled output
  with respect to its z = (y - mean) * mul + bias, given pooled's gradient g."""
  return jax.ffi.ffi_call(cpu_kernels.BATCH_NORM_POOL_BACKWARD,
                          jax.ShapeDtypeStruct(y.shape, jnp.float32),
                          vmap_method='sequential')(
                              y, g, mean, mul, bias, alpha, beta,
                              window=np.int64(window))


def _sums(g, pooled, centered):
  """Per channel, sum(dz) and sum(dz * (y - mean)) over y's elements, from
  the pooled tensors: dz is nonzero only at windows' maxima above 0."""
  routed = jnp.where(pooled > 0, g, 0.0)
  return jnp.sum(routed, _AXES), jnp.sum(routed * centered, _AXES)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def normalize_relu_pool(y, mean, mul, bias, window: int):
  """Max pooling of relu((y - mean) * mul + bias) with given statistics (as
  BatchNorm with running averages, mul = scale / sqrt(var + epsilon))."""
  return _pool(y, mean, mul, bias, window)[0]


def _normalize_forward(y, mean, mul, bias, window):
  pooled, centered = _pool(y, mean, mul, bias, window)
  return pooled, (y, mean, mul, bias, pooled, centered)


def _normalize_backward(window, residuals, g):
  y, mean, mul, bias, pooled, centered = residuals
  sum_dz, sum_dz_centered = _sums(g, pooled, centered)
  zero = jnp.zeros_like(mean)
  dy = _pool_grad(y, g, mean, mul, bias, zero, zero, window)
  return dy, -mul * sum_dz, sum_dz_centered, sum_dz


normalize_relu_pool.defvjp(_normalize_forward, _normalize_backward)


def _statistics(y, axis_name):
  """`nn.BatchNorm`'s batch statistics: mean, mean of squares and variance
  (clipped at 0), averaged over `axis_name`'s devices."""
  mean, mean2 = jnp.mean(y, _AXES), jnp.mean(y * y, _AXES)
  if axis_name is not None:
    mean, mean2 = jax.lax.pmean(jnp.stack([mean, mean2]), axis_name)
  return mean, mean2, jnp.maximum(0.0, mean2 - mean * mean)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5))
def batch_norm_relu_pool(y, scale, bias, epsilon: float,
                         axis_name: Optional[str], window: int):
  """Training BatchNorm (batch statistics, averaged over `axis_name`'s
  devices), ReLU and max pooling.

  Returns:
    (pooled, mean, var): the pooled output and the batch statistics, for
    the running averages.
  """
  return _batch_norm_forward(y, scale, bias, epsilon, axis_name, window)[0]


def _batch_norm_forward(y, scale, bias, epsilon, axis_name, window):
  mean, mean2, var = _statistics(y, axis_name)
  rsqrt = jax.lax.rsqrt(var + epsilon)
  pooled, centered = _pool(y, mean, rsqrt * scale, bias, window)
  return (pooled, mean, var), (y, scale, bias, mean, mean2, rsqrt, pooled,
                               centered)


def _batch_norm_backward(epsilon, axis_name, window, residuals, cotangents):
  """The chain rule through `_batch_norm_forward`, written out so that the
  gradient through the statistics joins the one pass over y."""
  del epsilon  # In rsqrt.
  y, scale, bias, mean, mean2, rsqrt, pooled, centered = residuals
  g, g_mean, g_var = cotangents
  mul = rsqrt * scale
  sum_dz, sum_dz_centered = _sums(g, pooled, centered)
  # z = (y - mean) * mul + bias, mul = rsqrt(var + epsilon) * scale.
  d_mul = sum_dz_centered
  d_var = g_var - 0.5 * rsqrt**3 * scale * d_mul
  # var = max(0, mean2 - mean^2); jnp.maximum splits a tie's gradient.
  excess = mean2 - mean * mean
  d_mean2 = d_var * jnp.where(excess > 0, 1.0,
                              jnp.where(excess == 0, 0.5, 0.0))
  d_mean = g_mean - mul * sum_dz - 2 * mean * d_mean2
  if axis_name is not None:
    d_mean, d_mean2 = jax.lax.pmean(jnp.stack([d_mean, d_mean2]), axis_name)
  # mean = mean(y), mean2 = mean(y^2) over this device's elements.
  count = y.size // y.shape[-1]
  dy = _pool_grad(y, g, mean, mul, bias, d_mean / count, 2 * d_mean2 / count,
                  window)
  return dy, d_mul * rsqrt, sum_dz


batch_norm_relu_pool.defvjp(_batch_norm_forward, _batch_norm_backward)
