"""Scaled dot-product attention (Eq. 7) and Model 4's factorised variant.

Both functions plug into `flax.linen.MultiHeadDotProductAttention` as its
`attention_fn`: queries, keys and values arrive projected, with shape
(batch, N, heads, head_dim), and the result has the same shape.
"""

import flax.linen as nn
import jax
import jax.extend
import jax.numpy as jnp

from vivit_jax.models import blocked_attention
from vivit_jax.models import cpu_attention
from vivit_jax.models import cpu_kernels

# Part of jit's cache keys, so that a function traced outside is traced anew.
_XLA_ATTENTION = jax.make_user_context(default_value=False)


def xla_attention():
  """A context in which models use XLA's attention on every backend.

  It is one op over all the scores, whose FLOPs XLA's cost analysis counts;
  the analysis counts the body of a loop (`blocked_attention`'s XLA loops)
  once and a custom call (its CPU kernel) not at all.
  """
  return _XLA_ATTENTION(True)


def _cudnn_supports(query: jnp.ndarray) -> bool:
  """Whether cuDNN's flash attention takes these queries on this backend."""
  head_dim = query.shape[-1]
  return ('cuda' in jax.extend.backend.get_backend().platform_version
          and query.dtype in (jnp.bfloat16, jnp.float16)
          and head_dim % 8 == 0 and head_dim <= 128)


def _on_cpu_path() -> bool:
  """Whether attention without dropout takes the CPU path (the fused kernel
  or `blocked_attention`'s loops): on the CPU backend, outside
  `xla_attention()`."""
  return not _XLA_ATTENTION.value and jax.default_backend() == 'cpu'


def dot_product_attention(query, key, value, *, dropout_rng=None,
                          dropout_rate=0.0, deterministic=True, dtype=None,
                          precision=None):
  """Softmax(Q K^T / sqrt(d_k)) V, Eq. 7, over the token axis N.

  Attention dropout needs the explicit attention weights. Without it, GPUs
  run cuDNN's flash attention in bfloat16 and float16, CPUs
  `blocked_attention` (a fused C++ kernel, or XLA loops where it cannot be
  built), which never holds all the scores at once, and
  everything else (and everything within `xla_attention()`) XLA's fused
  `jax.nn.dot_product_attention`. All compute the same function.
  """
  if dropout_rate > 0.0 and not deterministic:
    return nn.dot_product_attention(
        query, key, value, dropout_rng=dropout_rng, dropout_rate=dropout_rate,
        broadcast_dropout=False, deterministic=False, dtype=dtype,
        precision=precision)
  if _on_cpu_path():
    return blocked_attention.dot_product_attention(query, key, value)
  if not _XLA_ATTENTION.value and _cudnn_supports(query):
    return jax.nn.dot_product_attention(query, key, value,
                                        implementation='cudnn')
  return jax.nn.dot_product_attention(query, key, value)


def self_attention(qkv: jnp.ndarray, bias: jnp.ndarray,
                   attention_fn=dot_product_attention, **kwargs) -> jnp.ndarray:
  """`attention_fn(q, k, v, **kwargs)` of (q, k, v) = qkv + bias, split on
  qkv's slot axis.

  With `dot_product_attention` and no attention dropout, CPUs run the fused
  kernel on qkv as it lies (`cpu_attention.self_attention`), which writes
  qkv's gradient as one array.

  Args:
    qkv: (batch, N, 3, heads, head_dim), the QKV projection before its bias.
    bias: (3, heads, head_dim).

  Returns:
    (batch, N, heads, head_dim).
  """
  dropout = kwargs.get('dropout_rate', 0.0) > 0.0 and not kwargs.get(
      'deterministic', True)
  if (attention_fn is dot_product_attention and not dropout
      and _on_cpu_path() and cpu_kernels.available()):
    return cpu_attention.self_attention(qkv, bias)
  biased = qkv + bias
  return attention_fn(*(biased[..., i, :, :] for i in range(3)), **kwargs)


def factorized_dot_product_attention(query, key, value, *, temporal_dims: int,
                                     dropout_rng=None, dropout_rate=0.0,
                                     deterministic=True, dtype=None,
                                     precision=None):
  """Model 4 (Fig. 6): half the heads attend in time, half in space.

  Tokens are laid out time-major, N = n_t * n_h * n_w. The first heads/2
  heads of each query attend over K_t, V_t: the n_t tokens at its own
  spatial position; the other heads over K_s, V_s: the n_h * n_w tokens of
  its own frame. The heads are then concatenated, Y = Concat(Y_t, Y_s), for
  the output projection W_O.

  The order is Scenic's, so that its Model 4 checkpoints compute here what
  they computed there: `factorized_dot_product_attention` in
  scenic/projects/vivit/model_utils.py splits the heads of its
  (batch, n_t, n_h * n_w, heads, head_dim) queries with `jnp.split` and
  attends with the i-th part over axis i + 1, time first. The paper writes
  Concat(Y_s, Y_t); the two orders differ by a permutation of the heads in
  W_Q, W_K, W_V and W_O, so only a trained checkpoint tells them apart.

  Args:
    query, key, value: (batch, N, heads, head_dim), heads even.
    temporal_dims: n_t.

  Returns:
    (batch, N, heads, head_dim).
  """
  b, n, heads, head_dim = query.shape
  t, half = temporal_dims, heads // 2
  rngs = (jax.random.split(dropout_rng) if dropout_rng is not None
          else (None, None))
  attend = lambda q, k, v, rng: dot_product_attention(
      q, k, v, dropout_rng=rng, dropout_rate=dropout_rate,
      deterministic=deterministic, dtype=dtype, precision=precision)

  def temporal(x):  # (b, N, h/2, dh) -> (b * n_h * n_w, n_t, h/2, dh)
    x = x[:, :, :half].reshape(b, t, n // t, half, head_dim)
    return x.transpose(0, 2, 1, 3, 4).reshape(b * (n // t), t, half, head_dim)

  def spatial(x):  # (b, N, h/2, dh) -> (b * n_t, n_h * n_w, h/2, dh)
    return x[:, :, half:].reshape(b * t, n // t, half, head_dim)

  y_t = attend(temporal(query), temporal(key), temporal(value), rngs[0])
  y_s = attend(spatial(query), spatial(key), spatial(value), rngs[1])
  y_t = y_t.reshape(b, n // t, t, half, head_dim).transpose(0, 2, 1, 3, 4)
  y_s = y_s.reshape(b, n, half, head_dim)
  return jnp.concatenate([y_t.reshape(b, n, half, head_dim), y_s], axis=2)
