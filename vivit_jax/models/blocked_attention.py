"""Softmax attention computed a block of scores at a time (for CPUs).

All heads' scores Q K^T at once, (batch, heads, N, N) floats, outgrow a CPU's
caches at a few hundred tokens and its memory at a few thousand: at 4096
tokens, 8 heads and batch 8 they take 4 GiB per layer, kept for the backward
pass. Here each head's scores are computed for a block of query rows at a
time, about BLOCK_BYTES of them, and never kept: the backward pass recomputes
them from Q, K and the saved log-sum-exp of each row, as FlashAttention does
(Dao et al., 2022). Only O(N d) values per head are saved, and the result and
gradients are those of `jax.nn.dot_product_attention` up to float32 rounding.
"""

import functools

import jax
import jax.numpy as jnp

from vivit_jax.models import cpu_attention
from vivit_jax.models import cpu_kernels

# Bytes of scores computed at once: they stay in a CPU's L2 and L3 caches.
BLOCK_BYTES = 2 << 20


def _forward_rows(q, k, v):
  """q (rows, d) scaled, k and v (N, d) -> output (rows, d), lse (rows,)."""
  scores = q @ k.T
  row_max = jnp.max(scores, axis=-1, keepdims=True)
  weights = jnp.exp(scores - row_max)
  total = jnp.sum(weights, axis=-1, keepdims=True)
  return (weights @ v) / total, (row_max + jnp.log(total))[:, 0]


def _backward_rows(q, k, v, out, lse, d_out):
  """Gradients of `_forward_rows`'s output: (dq, dk, dv)."""
  weights = jnp.exp(q @ k.T - lse[:, None])
  d_weights = d_out @ v.T
  d_scores = weights * (d_weights - jnp.sum(d_out * out, -1, keepdims=True))
  return d_scores @ k, d_scores.T @ q, weights.T @ d_out


def _query_blocks(x, rows):
  """(N_padded, ...) -> (N_padded / rows, rows, ...)."""
  return x.reshape(-1, rows, *x.shape[1:])


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def _attend(q, k, v, rows, heads_per_block):
  return _attend_forward(q, k, v, rows, heads_per_block)[0]


def _attend_forward(q, k, v, rows, heads_per_block):
  """q (heads, N_padded, d), k and v (heads, N, d), float32."""

  def one_head(qkv):
    q, k, v = qkv
    out, lse = jax.lax.map(lambda block: _forward_rows(block, k, v),
                           _query_blocks(q, rows))
    return out.reshape(q.shape), lse.reshape(-1)

  out, lse = jax.lax.map(one_head, (q, k, v), batch_size=heads_per_block)
  return out, (q, k, v, out, lse)


def _attend_backward(rows, heads_per_block, residuals, d_out):
  """(dq, dk, dv), accumulating dk and dv over the blocks of query rows."""

  def one_head(arrays):
    q, k, v, out, lse, d_out = arrays

    def accumulate(dkv, block):
      dq, dk, dv = _backward_rows(block[0], k, v, *block[1:])
      return (dkv[0] + dk, dkv[1] + dv), dq

    blocks = tuple(_query_blocks(x, rows) for x in (q, out, lse, d_out))
    (dk, dv), dq = jax.lax.scan(
        accumulate, (jnp.zeros_like(k), jnp.zeros_like(v)), blocks)
    return dq.reshape(q.shape), dk, dv

  return jax.lax.map(one_head, (*residuals, d_out), batch_size=heads_per_block)


_attend.defvjp(_attend_forward, _attend_backward)


def xla_loops(query: jnp.ndarray, key: jnp.ndarray,
              value: jnp.ndarray) -> jnp.ndarray:
  """The blocked attention above as XLA loops; arguments and result as
  `dot_product_attention`'s."""
  batch, n, heads, head_dim = query.shape

  def heads_first(x):  # (batch, N, heads, d) -> (batch * heads, N, d) float32
    x = x.astype(jnp.float32).transpose(0, 2, 1, 3)
    return x.reshape(batch * heads, n, head_dim)

  rows = max(1, min(n, BLOCK_BYTES // (4 * n)))
  num_blocks = -(-n // rows)
  heads_per_block = max(1, min(batch * heads, BLOCK_BYTES // (4 * n * rows)))
  q = heads_first(query) * head_dim**-0.5
  q = jnp.pad(q, ((0, 0), (0, num_blocks * rows - n), (0, 0)))
  out = _attend(q, heads_first(key), heads_first(value), rows,
                heads_per_block)[:, :n]
  out = out.reshape(batch, heads, n, head_dim).transpose(0, 2, 1, 3)
  return out.astype(query.dtype)


def dot_product_attention(query: jnp.ndarray, key: jnp.ndarray,
                          value: jnp.ndarray) -> jnp.ndarray:
  """Softmax(Q K^T / sqrt(d)) V over the token axis, in float32.

  The fused C++ kernel (`cpu_attention`) computes it where it could be
  built, `xla_loops` elsewhere.

  Args:
    query, key, value: (batch, N, heads, head_dim), self-attention's.

  Returns:
    (batch, N, heads, head_dim), in the query's dtype.
  """
  if cpu_kernels.available():
    return cpu_attention.attention(query, key, value)
  return xla_loops(query, key, value)
