"""GELU's tanh approximation through the CPU kernels (`cpu_gelu.cc`).

XLA:CPU runs it as two passes forward, writing the tanh out for the backward
pass, and one backward; the kernels make one pass each and keep only the
input, and add the bias of the Dense layer before them (forward) and sum its
gradient (backward) in the same pass (benchmarks/PROFILE.md has the times).
`gelu` takes them where models use the kernels (`cpu_kernels.used()`), the
input is float32 and the approximation is asked for; otherwise it is
`jax.nn.gelu`. `DenseGelu` is `nn.Dense` followed by `gelu`, its bias added
by the kernel.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from vivit_jax.models import cpu_dense
from vivit_jax.models import cpu_kernels


@jax.custom_vjp
def _tanh_gelu(x: jnp.ndarray, bias: jnp.ndarray) -> jnp.ndarray:
  return _tanh_gelu_forward(x, bias)[0]


def _tanh_gelu_forward(x, bias):
  y = jax.ffi.ffi_call(cpu_kernels.GELU_FORWARD, cpu_kernels.like(x),
                       vmap_method='sequential')(x, bias)
  return y, (x, bias)


def _tanh_gelu_backward(residuals, dy):
  x = residuals[0]
  dx, dbias = jax.ffi.ffi_call(
      cpu_kernels.GELU_BACKWARD,
      (cpu_kernels.like(x),
       cpu_kernels.like(x, (cpu_kernels.ROW_BLOCKS, x.shape[-1]))),
      vmap_method='sequential')(*residuals, dy)
  return dx, dbias.sum(0)


_tanh_gelu.defvjp(_tanh_gelu_forward, _tanh_gelu_backward)


def _kernel_computes(dtype, approximate: bool) -> bool:
  return (approximate and jnp.dtype(dtype) == jnp.float32
          and cpu_kernels.used())


def gelu(x: jnp.ndarray, approximate: bool = True,
         bias: jnp.ndarray | None = None) -> jnp.ndarray:
  """`jax.nn.gelu(x + bias, approximate)` to float32 rounding.

  Args:
    x: (..., width).
    approximate: the tanh approximation, else the exact (erf) GELU.
    bias: (width,), or None for none.

  Returns:
    x's shape.
  """
  if _kernel_computes(x.dtype, approximate):
    return _tanh_gelu(x, jnp.zeros(x.shape[-1:], x.dtype)
                      if bias is None else bias.astype(x.dtype))
  return jax.nn.gelu(x if bias is None else x + bias, approximate=approximate)


class DenseGelu(nn.Dense):
  """`gelu(nn.Dense(...)(x), approximate)`: Dense's fields and parameters
  (`kernel`, `bias`), the bias added by the GELU kernel where it runs, the
  kernel's gradient taken by `cpu_dense.dense`."""
  approximate: bool = True

  @nn.compact
  def __call__(self, inputs: jnp.ndarray) -> jnp.ndarray:
    """(..., in) -> (..., features)."""
    dtype = (jnp.result_type(inputs, self.param_dtype) if self.dtype is None
             else self.dtype)
    if not (self.use_bias and self.dot_general is None
            and self.dot_general_cls is None and self.precision is None
            and _kernel_computes(dtype, self.approximate)):
      return gelu(super().__call__(inputs), self.approximate)
    kernel = self.param('kernel', self.kernel_init,
                        (inputs.shape[-1], self.features), self.param_dtype)
    bias = self.param('bias', self.bias_init, (self.features,),
                      self.param_dtype)
    inputs, kernel, bias = self.promote_dtype(inputs, kernel, bias,
                                              dtype=self.dtype)
    return gelu(cpu_dense.dense(inputs, kernel), self.approximate, bias)
