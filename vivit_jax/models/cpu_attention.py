"""The fused CPU attention kernel (`cpu_attention.cc`).

XLA:CPU runs attention with small heads (8-wide in the term project's ViViT)
as matmuls contracting over head_dim, at 5-15% of a CPU's matmul peak
(benchmarks/PROFILE.md). `cpu_attention.cc` computes the same function as
`blocked_attention`, one head per thread with its inner loops over the keys,
as an XLA FFI custom call that reads the projections' (batch, N, heads,
head_dim) layout as it is.

`cpu_kernels` builds it; where it cannot, `blocked_attention` uses its XLA
path.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from vivit_jax.models import cpu_kernels


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _attend(q, k, v, scale):
  return _attend_forward(q, k, v, scale)[0]


def _attend_forward(q, k, v, scale):
  out, lse = jax.ffi.ffi_call(
      cpu_kernels.ATTENTION_FORWARD,
      (cpu_kernels.like(q), cpu_kernels.like(q, q.shape[:-1])),
      vmap_method='broadcast_all')(q, k, v, scale=np.float32(scale))
  return out, (q, k, v, out, lse)


def _attend_backward(scale, residuals, d_out):
  q = residuals[0]
  return tuple(jax.ffi.ffi_call(
      cpu_kernels.ATTENTION_BACKWARD, (cpu_kernels.like(q),) * 3,
      vmap_method='broadcast_all')(*residuals, d_out,
                                   scale=np.float32(scale)))


_attend.defvjp(_attend_forward, _attend_backward)


def attention(query: jnp.ndarray, key: jnp.ndarray,
              value: jnp.ndarray) -> jnp.ndarray:
  """Softmax(Q K^T / sqrt(d)) V over the token axis N, in float32, where
  `cpu_kernels.available()`.

  Args:
    query, key, value: (..., N, heads, head_dim).

  Returns:
    (..., N, heads, head_dim), in the query's dtype.
  """
  cpu_kernels.require('blocked_attention.dot_product_attention')
  out = _attend(*(x.astype(jnp.float32) for x in (query, key, value)),
                query.shape[-1]**-0.5)
  return out.astype(query.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _self_attend(qkv, bias, scale):
  return _self_attend_forward(qkv, bias, scale)[0]


def _self_attend_forward(qkv, bias, scale):
  biased = qkv + bias
  q, k, v = (biased[..., i, :, :] for i in range(3))
  return _attend_forward(q, k, v, scale)


def _self_attend_backward(scale, residuals, d_out):
  q = residuals[0]
  items = (int(np.prod(q.shape[:-3])),)
  d_qkv, sums = jax.ffi.ffi_call(
      cpu_kernels.ATTENTION_BACKWARD_PACKED,
      (cpu_kernels.like(q, (*q.shape[:-2], 3, *q.shape[-2:])),
       cpu_kernels.like(q, (*items, 3, *q.shape[-2:]))),
      vmap_method='broadcast_all')(*residuals, d_out,
                                   scale=np.float32(scale))
  return d_qkv, sums.sum(0)


_self_attend.defvjp(_self_attend_forward, _self_attend_backward)


def self_attention(qkv: jnp.ndarray, bias: jnp.ndarray) -> jnp.ndarray:
  """`attention(q, k, v)` of (q, k, v) = qkv + bias split on its slot axis,
  where `cpu_kernels.available()`, in float32: the kernel writes the
  gradient of qkv as one array and sums it for the bias's.

  Args:
    qkv: (..., N, 3, heads, head_dim), the projection before its bias.
    bias: (3, heads, head_dim).

  Returns:
    (..., N, heads, head_dim), in qkv's dtype.
  """
  cpu_kernels.require('blocked_attention.dot_product_attention')
  out = _self_attend(qkv.astype(jnp.float32), bias.astype(jnp.float32),
                     qkv.shape[-1]**-0.5)
  return out.astype(qkv.dtype)
