"""Multi-head self-attention with one QKV matmul and heads-first attention.

`MultiHeadSelfAttention` computes what `flax.linen.MultiHeadDotProductAttention`
computes for self-attention, with the same parameters: `query`, `key`,
`value` (kernel (d, heads, head_dim), bias (heads, head_dim)) and `out`
(kernel (heads, head_dim, d), bias (d,)), initialised with the same values.
At call time the three input kernels are concatenated into one (d, 3, heads,
head_dim) kernel, so one matmul projects the tokens straight into the
heads-first layout (3, batch * heads, N, head_dim) that the attention kernel
reads; the output projection contracts heads and head_dim of that layout.
Three matmuls of width d and the transposes into and out of heads-first
layout (a copy of Q, K, V and the output, forward and backward) become one
matmul of width 3d.

The heads-first path is taken on CPUs for plain softmax attention
(`attention.dot_product_attention`) without attention dropout; otherwise the
module calls its `attention_fn` with (batch, N, heads, head_dim) arrays, as
Flax's module does, dropout keys included.
"""

import functools
from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vivit_jax.models import attention
from vivit_jax.models import blocked_attention


class _Projection(nn.Module):
  """`kernel` (*in_shape, *out_shape) and `bias` (out_shape), created as
  `flax.linen.DenseGeneral` creates them (initialisers applied to the
  flattened (prod(in), prod(out)) shape), returned unapplied."""
  in_shape: tuple[int, ...]
  out_shape: tuple[int, ...]
  kernel_init: Callable
  bias_init: Callable = nn.initializers.zeros_init()

  @nn.compact
  def __call__(self):
    fan = (int(np.prod(self.in_shape)), int(np.prod(self.out_shape)))

    def kernel_init(rng, shape, dtype=jnp.float32):
      return jnp.reshape(self.kernel_init(rng, fan, dtype), shape)

    def bias_init(rng, shape, dtype=jnp.float32):
      return jnp.reshape(self.bias_init(rng, (fan[1],), dtype), shape)

    kernel = self.param('kernel', kernel_init,
                        tuple(self.in_shape) + tuple(self.out_shape),
                        jnp.float32)
    bias = self.param('bias', bias_init, tuple(self.out_shape), jnp.float32)
    return kernel, bias


def _heads_first_path(attention_fn, dropout_active: bool) -> bool:
  return (attention_fn is attention.dot_product_attention
          and not dropout_active and jax.default_backend() == 'cpu'
          # pylint: disable-next=protected-access
          and not attention._XLA_ATTENTION.value)


class MultiHeadSelfAttention(nn.Module):
  """Self-attention, `nn.MultiHeadDotProductAttention`'s function and
  parameters (qkv_features = out_features = d, biases, no QK norm).

  Attributes:
    num_heads: heads; d must be a multiple.
    dropout_rate: attention dropout on the weights, drawn by `attention_fn`
      with the module's 'dropout' key as Flax's module draws it.
    attention_fn: as Flax's: (batch, N, heads, head_dim) arrays in and out.
    kernel_init, bias_init: the projections' initialisers.
  """
  num_heads: int
  dtype: jnp.dtype = jnp.float32
  dropout_rate: float = 0.0
  attention_fn: Callable = attention.dot_product_attention
  kernel_init: Callable = nn.initializers.xavier_uniform()
  bias_init: Callable = nn.initializers.zeros_init()

  @nn.compact
  def __call__(self, x: jnp.ndarray, deterministic: bool = True
              ) -> jnp.ndarray:
    """(..., N, d) -> (..., N, d)."""
    d = x.shape[-1]
    heads = self.num_heads
    if d % heads:
      raise ValueError(f'Width {d} is not a multiple of {heads} heads.')
    head_dim = d // heads
    project = functools.partial(_Projection, kernel_init=self.kernel_init,
                                bias_init=self.bias_init)
    (wq, bq), (wk, bk), (wv, bv) = (
        project((d,), (heads, head_dim), name=name)()
        for name in ('query', 'key', 'value'))
    wo, bo = project((heads, head_dim), (d,), name='out')()
    cast = lambda *arrays: [a.astype(self.dtype) for a in arrays]
    x, wq, bq, wk, bk, wv, bv, wo, bo = cast(x, wq, bq, wk, bk, wv, bv, wo, bo)

    dropout_active = self.dropout_rate > 0.0 and not deterministic
    if not _heads_first_path(self.attention_fn, dropout_active):
      q, k, v = (jnp.einsum('...nd,dhk->...nhk', x, w) + b
                 for w, b in ((wq, bq), (wk, bk), (wv, bv)))
      kwargs = dict(dtype=self.dtype)  # Flax passes these; see its module.
      if self.dropout_rate > 0.0:
        kwargs.update(dropout_rate=self.dropout_rate,
                      deterministic=deterministic,
                      dropout_rng=(self.make_rng('dropout') if dropout_active
                                   else None))
      y = self.attention_fn(q, k, v, **kwargs)
      return jnp.einsum('...nhk,hkd->...nd', y, wo) + bo

    batch_shape, n = x.shape[:-2], x.shape[-2]
    x = x.reshape(-1, n, d)
    b = x.shape[0]
    kernel = jnp.stack([wq, wk, wv], axis=1)  # (d, 3, heads, head_dim)
    bias = jnp.stack([bq, bk, bv])  # (3, heads, head_dim)
    qkv = (jnp.einsum('bnd,dshk->sbhnk', x, kernel)
           + bias[:, None, :, None, :])
    q, k, v = (a.reshape(b * heads, n, head_dim) for a in qkv)
    y = blocked_attention.heads_first_attention(q, k, v)
    y = jnp.einsum('bhnk,hkd->bnd', y.reshape(b, heads, n, head_dim), wo) + bo
    return y.reshape(*batch_shape, n, d)
