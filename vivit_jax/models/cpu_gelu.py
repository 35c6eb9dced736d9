"""GELU's tanh approximation through the CPU kernels (`cpu_gelu.cc`).

XLA:CPU runs it as two passes forward, writing the tanh out for the backward
pass, and one backward; the kernels make one pass each and keep only the
input (benchmarks/PROFILE.md has the times). `gelu` takes them where models
use the kernels (`cpu_kernels.used()`), the input is float32 and the
approximation is asked for; otherwise it is `jax.nn.gelu`.
"""

import jax
import jax.numpy as jnp

from vivit_jax.models import cpu_kernels


@jax.custom_vjp
def _tanh_gelu(x: jnp.ndarray) -> jnp.ndarray:
  return _tanh_gelu_forward(x)[0]


def _tanh_gelu_forward(x):
  y = jax.ffi.ffi_call(cpu_kernels.GELU_FORWARD, cpu_kernels.like(x),
                       vmap_method='broadcast_all')(x)
  return y, x


def _tanh_gelu_backward(x, dy):
  return (jax.ffi.ffi_call(cpu_kernels.GELU_BACKWARD, cpu_kernels.like(x),
                           vmap_method='broadcast_all')(x, dy),)


_tanh_gelu.defvjp(_tanh_gelu_forward, _tanh_gelu_backward)


def gelu(x: jnp.ndarray, approximate: bool = True) -> jnp.ndarray:
  """`jax.nn.gelu(x, approximate)`, any shape, to float32 rounding."""
  if approximate and x.dtype == jnp.float32 and cpu_kernels.used():
    return _tanh_gelu(x)
  return jax.nn.gelu(x, approximate=approximate)
