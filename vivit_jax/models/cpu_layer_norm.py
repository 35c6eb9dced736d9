"""LayerNorm through the fused CPU kernel (`cpu_layer_norm.cc`).

XLA:CPU runs a LayerNorm's forward and backward as several fusions, each
a pass over the rows; the kernel reads each row once forward and once
backward (benchmarks/PROFILE.md has the times). `LayerNorm` is Flax's
`nn.LayerNorm` (its fields, parameters and defaults) and takes the kernel
where models use the kernels (`cpu_kernels.used()`) and the kernel computes
what Flax would: float32 input and parameters, one normalised axis, the
last, with scale and bias. Otherwise it is Flax's. The kernel computes the
variance from the centred values, where Flax (`use_fast_variance`) takes
mean(x^2) - mean(x)^2: the two agree to float32 rounding unless the mean
dwarfs the spread, where the kernel's is the accurate one.
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vivit_jax.models import cpu_kernels


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def layer_norm(x: jnp.ndarray, scale: jnp.ndarray, bias: jnp.ndarray,
               epsilon: float) -> jnp.ndarray:
  """(x - mean) / sqrt(var + epsilon) * scale + bias over the last axis.

  Args:
    x: (..., width), float32.
    scale, bias: (width,), float32.
    epsilon: added to the variance.

  Returns:
    (..., width).
  """
  return _forward(x, scale, bias, epsilon)[0]


def _forward(x, scale, bias, epsilon):
  rows = x.shape[:-1]
  y, mean, rstd = jax.ffi.ffi_call(
      cpu_kernels.LAYER_NORM_FORWARD,
      (cpu_kernels.like(x), cpu_kernels.like(x, rows),
       cpu_kernels.like(x, rows)),
      vmap_method='sequential')(x, scale, bias, epsilon=np.float32(epsilon))
  return y, (x, scale, mean, rstd)


def _gradients(target, residuals, *cotangents):
  """(dx, dscale, dbias) from the backward kernel `target`, called with the
  forward pass's residuals (x, scale, mean, rstd) and `cotangents`."""
  x = residuals[0]
  blocks = (cpu_kernels.ROW_BLOCKS, x.shape[-1])
  dx, dscale, dbias = jax.ffi.ffi_call(
      target,
      (cpu_kernels.like(x), cpu_kernels.like(x, blocks),
       cpu_kernels.like(x, blocks)),
      vmap_method='sequential')(*residuals, *cotangents)
  return dx, dscale.sum(0), dbias.sum(0)


def _backward(epsilon, residuals, dy):
  del epsilon  # In rstd.
  return _gradients(cpu_kernels.LAYER_NORM_BACKWARD, residuals, dy)


layer_norm.defvjp(_forward, _backward)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def layer_norm_passing_input(x: jnp.ndarray, scale: jnp.ndarray,
                             bias: jnp.ndarray, epsilon: float
                             ) -> tuple[jnp.ndarray, jnp.ndarray]:
  """(x, layer_norm(x, scale, bias, epsilon)): x passes through, so that the
  gradient it gets from its other uses (a residual connection) arrives here
  and the backward kernel adds it to the LayerNorm's in the same pass."""
  return _passing_forward(x, scale, bias, epsilon)[0]


def _passing_forward(x, scale, bias, epsilon):
  y, residuals = _forward(x, scale, bias, epsilon)
  return (x, y), residuals


def _passing_backward(epsilon, residuals, cotangents):
  del epsilon  # In rstd.
  dx_elsewhere, dy = cotangents
  return _gradients(cpu_kernels.LAYER_NORM_BACKWARD_ADDING, residuals, dy,
                    dx_elsewhere)


layer_norm_passing_input.defvjp(_passing_forward, _passing_backward)


class LayerNorm(nn.LayerNorm):
  """Flax's `nn.LayerNorm`, through `layer_norm` where the module docstring
  says: the same parameters (`scale`, `bias`) and outputs to float32
  rounding."""

  @nn.compact
  def __call__(self, x, *, mask=None, pass_input=False):
    """LayerNorm(x), or (x, LayerNorm(x)) with `pass_input`: x passed
    through for a residual connection, whose gradient the kernel then adds
    (`layer_norm_passing_input`)."""
    if not (mask is None and self._kernel_computes_it(x)):
      y = super().__call__(x, mask=mask)
      return (x, y) if pass_input else y
    features = (x.shape[-1],)
    scale = self.param('scale', self.scale_init, features, self.param_dtype)
    bias = self.param('bias', self.bias_init, features, self.param_dtype)
    if pass_input:
      return layer_norm_passing_input(x, scale, bias, self.epsilon)
    return layer_norm(x, scale, bias, self.epsilon)

  def _kernel_computes_it(self, x) -> bool:
    last = lambda axes: axes in (-1, (-1,), x.ndim - 1, (x.ndim - 1,))
    float32 = lambda dtype: jnp.dtype(dtype) == jnp.float32
    return (cpu_kernels.used() and float32(x.dtype)
            and float32(self.param_dtype)
            and (self.dtype is None or float32(self.dtype))
            and self.use_bias and self.use_scale
            and last(self.reduction_axes) and last(self.feature_axes)
            and self.axis_name is None)
