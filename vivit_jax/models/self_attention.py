"""Multi-head self-attention with one QKV matmul.

`MultiHeadSelfAttention` computes what `flax.linen.MultiHeadDotProductAttention`
computes for self-attention, with the same parameters: `query`, `key`,
`value` (kernel (d, heads, head_dim), bias (heads, head_dim)) and `out`
(kernel (heads, head_dim, d), bias (d,)), initialised with the same values.
At call time the three input kernels are concatenated into one (d, 3, heads,
head_dim) kernel, so one matmul of width 3d projects the tokens instead of
three of width d (`cpu_dense.dense`, whose kernel gradient comes from the
CPU kernel where models use the kernels). Its `attention_fn` gets (batch,
N, heads, head_dim) arrays, as Flax's module gives it, dropout keys
included; the default one's CPU kernel takes the projection as it lies
instead (`attention.self_attention`).
"""

import functools
from typing import Callable

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from vivit_jax.models import attention
from vivit_jax.models import cpu_dense


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

    # Matmuls over (rows, d), as in encoder.MlpBlock.
    tokens = x.shape[:-1]
    rows = x.reshape(-1, d)
    kernel = jnp.stack([wq, wk, wv], axis=1)  # (d, 3, heads, head_dim)
    bias = jnp.stack([bq, bk, bv])  # (3, heads, head_dim)
    qkv = cpu_dense.dense(rows, kernel.reshape(d, 3 * d)).reshape(
        *tokens, 3, heads, head_dim)
    kwargs = dict(dtype=self.dtype)  # Flax passes these; see its module.
    if self.dropout_rate > 0.0:
      kwargs.update(dropout_rate=self.dropout_rate,
                    deterministic=deterministic,
                    dropout_rng=(None if deterministic
                                 else self.make_rng('dropout')))
    y = attention.self_attention(qkv, bias, self.attention_fn, **kwargs)
    return cpu_dense.dense(y.reshape(-1, d), wo.reshape(d, d),
                           bo).reshape(*tokens, d)
