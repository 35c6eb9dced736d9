"""Dense layers whose kernel gradient comes from the CPU kernel
(`cpu_dense.cc`).

XLA:CPU computes a dense layer's kernel gradient, x^T dy contracted over the
rows, at a third to a half of the rate of the layer's forward matmul
(benchmarks/PROFILE.md). `dense(x, kernel, bias)` is `x @ kernel + bias`,
XLA's matmul forward and for the input's gradient, the kernel's and the
bias's gradients from the kernel in one pass over x and dy; it takes the
kernel where models use the kernels (`cpu_kernels.used()`), the arrays are
float32 and the output width is a multiple of 32, else it is XLA's
throughout. `Dense` is `nn.Dense` computing through it.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from vivit_jax.models import cpu_kernels

_FEATURES = 32  # The kernel's feature block (kFeatures in cpu_dense.cc).


def _matmul(x, kernel):
  """(..., K) x (K, M) -> (..., M)."""
  return lax.dot_general(x, kernel, (((x.ndim - 1,), (0,)), ((), ())))


def _gradients(x, kernel, dy):
  """The gradients of x @ kernel + bias for dy: x's, the kernel's, the
  bias's."""
  dx = lax.dot_general(dy, kernel, (((dy.ndim - 1,), (1,)), ((), ())))
  d_kernel, d_bias = jax.ffi.ffi_call(
      cpu_kernels.DENSE_WEIGHT_GRAD,
      (cpu_kernels.like(kernel), cpu_kernels.like(kernel, kernel.shape[1:])),
      vmap_method='sequential')(x, dy)
  return dx, d_kernel, d_bias


@jax.custom_vjp
def _dense(x, kernel, bias):
  y = _matmul(x, kernel)
  return y if bias is None else y + bias


def _dense_forward(x, kernel, bias):
  return _dense(x, kernel, bias), (x, kernel, bias)


def _dense_backward(residuals, dy):
  x, kernel, bias = residuals
  dx, d_kernel, d_bias = _gradients(x, kernel, dy)
  return dx, d_kernel, None if bias is None else d_bias


_dense.defvjp(_dense_forward, _dense_backward)


def _kernel_computes(x, kernel, bias) -> bool:
  return (cpu_kernels.used() and kernel.ndim == 2
          and kernel.shape[1] % _FEATURES == 0
          and all(a.dtype == jnp.float32 for a in (x, kernel, bias)
                  if a is not None))


def dense(x: jnp.ndarray, kernel: jnp.ndarray,
          bias: jnp.ndarray | None = None) -> jnp.ndarray:
  """`x @ kernel + bias` (no bias where None).

  Args:
    x: (..., K).
    kernel: (K, M).
    bias: (M,) or None.

  Returns:
    (..., M).
  """
  if not _kernel_computes(x, kernel, bias):
    y = _matmul(x, kernel)
    return y if bias is None else y + bias
  return _dense(x, kernel, bias)


class Dense(nn.Dense):
  """`nn.Dense`: its fields and parameters (`kernel`, `bias`), computed by
  `dense`."""

  @nn.compact
  def __call__(self, inputs: jnp.ndarray) -> jnp.ndarray:
    """(..., in) -> (..., features)."""
    if (self.dot_general is not None or self.dot_general_cls is not None
        or self.precision is not None):
      return super().__call__(inputs)
    kernel = self.param('kernel', self.kernel_init,
                        (inputs.shape[-1], self.features), self.param_dtype)
    bias = (self.param('bias', self.bias_init, (self.features,),
                       self.param_dtype) if self.use_bias else None)
    inputs, kernel, bias = self.promote_dtype(inputs, kernel, bias,
                                              dtype=self.dtype)
    return dense(inputs, kernel, bias)
