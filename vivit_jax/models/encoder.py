"""Transformer encoders: the pre-LN block of Eqs. 2-3, Model 3's block of
Eqs. 4-6, and the stack of L blocks with stochastic depth (Appendix Eq. 10).

Parameter names follow the vision_transformer checkpoints and Scenic:
`encoderblock_N/{LayerNorm_0, MultiHeadDotProductAttention_1, LayerNorm_2,
MlpBlock_3}`, `posembed_input/pos_embedding`, `encoder_norm`.
"""

import functools
from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from vivit_jax.models import attention
from vivit_jax.models import cpu_dense
from vivit_jax.models import cpu_gelu
from vivit_jax.models import cpu_layer_norm
from vivit_jax.models import embedding
from vivit_jax.models import self_attention

ATTENTION_TYPES = ('spacetime', 'factorized_encoder',
                   'factorized_self_attention_block',
                   'factorized_dot_product_attention')
ATTENTION_ORDERS = ('space_time', 'time_space')
POSITIONAL_EMBEDDINGS = ('learned_1d', 'sinusoidal_1d', 'none')


def droplayer_rate(layer: int, num_layers: int, rate: float) -> float:
  """Eq. 10: p_drop(l) = l / L * p_drop, for layers l = 1, ..., L."""
  return layer / num_layers * rate


class StochasticDepth(nn.Module):
  """Drops a residual branch for whole examples with probability `rate`.

  Kept branches are scaled by 1 / (1 - rate), so the expected output equals
  the evaluation output, where the branch is always kept.
  """
  rate: float

  @nn.compact
  def __call__(self, branch: jnp.ndarray, deterministic: bool) -> jnp.ndarray:
    if deterministic or self.rate == 0.0:
      return branch
    keep = 1.0 - self.rate
    shape = (branch.shape[0],) + (1,) * (branch.ndim - 1)
    mask = jax.random.bernoulli(self.make_rng('dropout'), keep, shape)
    return branch * mask.astype(branch.dtype) / keep


class MlpBlock(nn.Module):
  """Dense(mlp_dim) -> GELU -> dropout -> Dense(d) -> dropout.

  Attributes:
    gelu_approximate: the tanh approximation of GELU, as in the original ViT
      and Scenic (and the paper's FLOP counts); False gives the exact (erf)
      GELU of DeiT and PyTorch.
  """
  mlp_dim: int
  dropout_rate: float = 0.0
  gelu_approximate: bool = True
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray, deterministic: bool) -> jnp.ndarray:
    """(..., d) -> (..., d)."""
    initializers = dict(kernel_init=nn.initializers.xavier_uniform(),
                        bias_init=nn.initializers.normal(stddev=1e-6))
    # The matmuls see (rows, features): XLA:CPU transposes the activations of
    # a matmul over several batch axes to take its kernel's gradient.
    rows = lambda y: y.reshape(-1, y.shape[-1])
    unrows = lambda y: y.reshape(*x.shape[:-1], y.shape[-1])
    y = unrows(cpu_gelu.DenseGelu(
        self.mlp_dim, approximate=self.gelu_approximate, dtype=self.dtype,
        name='Dense_0', **initializers)(rows(x)))
    y = nn.Dropout(self.dropout_rate)(y, deterministic)
    y = unrows(cpu_dense.Dense(x.shape[-1], dtype=self.dtype, name='Dense_1',
                               **initializers)(rows(y)))
    return nn.Dropout(self.dropout_rate)(y, deterministic)


def _self_attention(num_heads, dtype, dropout_rate, attention_fn, name):
  """`nn.MultiHeadDotProductAttention`'s function and parameters, with one
  QKV matmul (see `self_attention`)."""
  return self_attention.MultiHeadSelfAttention(
      num_heads=num_heads, dtype=dtype, dropout_rate=dropout_rate,
      attention_fn=attention_fn, kernel_init=nn.initializers.xavier_uniform(),
      name=name)


class EncoderBlock(nn.Module):
  """Pre-LN transformer block, Eqs. 2-3.

  y = MSA(LN(z)) + z;  z' = MLP(LN(y)) + y. With `attention_fn` set to
  `attention.factorized_dot_product_attention` this is Model 4's block.
  """
  mlp_dim: int
  num_heads: int
  dropout_rate: float = 0.0
  attention_dropout_rate: float = 0.0
  droplayer_p: float = 0.0
  attention_fn: Callable = attention.dot_product_attention
  gelu_approximate: bool = True
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, z: jnp.ndarray, deterministic: bool) -> jnp.ndarray:
    """(batch, N, d) -> (batch, N, d)."""
    # z and y pass through their LayerNorms, whose kernels then add the
    # residual connections' gradients.
    z, x = cpu_layer_norm.LayerNorm(dtype=self.dtype, name='LayerNorm_0')(
        z, pass_input=True)
    x = _self_attention(self.num_heads, self.dtype,
                        self.attention_dropout_rate, self.attention_fn,
                        'MultiHeadDotProductAttention_1')(
                            x, deterministic=deterministic)
    x = nn.Dropout(self.dropout_rate)(x, deterministic)
    y = StochasticDepth(self.droplayer_p)(x, deterministic) + z
    y, x = cpu_layer_norm.LayerNorm(dtype=self.dtype, name='LayerNorm_2')(
        y, pass_input=True)
    x = MlpBlock(self.mlp_dim, self.dropout_rate, self.gelu_approximate, self.dtype,
                 name='MlpBlock_3')(x, deterministic)
    return StochasticDepth(self.droplayer_p)(x, deterministic) + y


class FactorizedSelfAttentionBlock(nn.Module):
  """Model 3's block, Eqs. 4-6: spatial MSA, temporal MSA, then MLP.

  Tokens (batch, n_t * n_h * n_w, d), time-major, are reshaped to
  z_s = (batch * n_t, n_h * n_w, d) for spatial attention and to
  z_t = (batch * n_h * n_w, n_t, d) for temporal attention. Names follow
  Scenic: `{LayerNorm,MultiHeadDotProductAttention}_{space,time}`,
  `LayerNorm_mlp`, `MlpBlock`.

  Attributes:
    temporal_dims: n_t.
    attention_order: 'space_time' (Eqs. 4-5 as written) or 'time_space'.
  """
  mlp_dim: int
  num_heads: int
  temporal_dims: int
  attention_order: str = 'space_time'
  dropout_rate: float = 0.0
  attention_dropout_rate: float = 0.0
  droplayer_p: float = 0.0
  gelu_approximate: bool = True
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, z: jnp.ndarray, deterministic: bool) -> jnp.ndarray:
    """(batch, N, d) -> (batch, N, d)."""
    b, n, d = z.shape
    t, hw = self.temporal_dims, n // self.temporal_dims

    def to_space(x):
      return x.reshape(b * t, hw, d)

    def from_space(x):
      return x.reshape(b, n, d)

    def to_time(x):
      return x.reshape(b, t, hw, d).transpose(0, 2, 1, 3).reshape(b * hw, t, d)

    def from_time(x):
      return x.reshape(b, hw, t, d).transpose(0, 2, 1, 3).reshape(b, n, d)

    def residual_attention(x, axis):
      """Eq. 4 (axis 'space') or Eq. 5 (axis 'time'), on (batch, N, d)."""
      to_axis, from_axis = {'space': (to_space, from_space),
                            'time': (to_time, from_time)}[axis]
      y = cpu_layer_norm.LayerNorm(dtype=self.dtype,
                                   name=f'LayerNorm_{axis}')(to_axis(x))
      y = _self_attention(self.num_heads, self.dtype,
                          self.attention_dropout_rate,
                          attention.dot_product_attention,
                          f'MultiHeadDotProductAttention_{axis}')(
                              y, deterministic=deterministic)
      y = nn.Dropout(self.dropout_rate)(y, deterministic)
      return StochasticDepth(self.droplayer_p)(from_axis(y), deterministic) + x

    y = z
    for axis in self.attention_order.split('_'):
      y = residual_attention(y, axis)
    x = cpu_layer_norm.LayerNorm(dtype=self.dtype, name='LayerNorm_mlp')(y)
    x = MlpBlock(self.mlp_dim, self.dropout_rate, self.gelu_approximate, self.dtype,
                 name='MlpBlock')(x, deterministic)
    return StochasticDepth(self.droplayer_p)(x, deterministic) + y


def _rematerialized(block: type[nn.Module]) -> type[nn.Module]:
  """`block` whose backward pass recomputes its activations from its input
  instead of keeping them. `deterministic` must be given by position."""
  return nn.remat(block, static_argnums=(2,))  # (self, z, deterministic).


class Encoder(nn.Module):
  """Positional embedding, L blocks and a final LayerNorm.

  Attributes:
    attention_type: one of ATTENTION_TYPES; 'spacetime' and
      'factorized_encoder' use full self-attention over the given tokens.
    temporal_dims: n_t, needed by the factorised attention types.
    positional_embedding: 'learned_1d' (Eq. 1's p), 'sinusoidal_1d' or 'none'.
    stochastic_droplayer_rate: p_drop of Eq. 10.
    remat: rematerialise each block (`nn.remat`): the backward pass keeps
      only the blocks' inputs, for long token sequences; same parameters and
      results, about a third more compute.
  """
  num_layers: int
  mlp_dim: int
  num_heads: int
  attention_type: str = 'spacetime'
  temporal_dims: int = 1
  attention_order: str = 'space_time'
  positional_embedding: str = 'learned_1d'
  dropout_rate: float = 0.0
  attention_dropout_rate: float = 0.0
  stochastic_droplayer_rate: float = 0.0
  gelu_approximate: bool = True
  remat: bool = False
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray, *, train: bool) -> jnp.ndarray:
    """(batch, N, d) -> (batch, N, d)."""
    if self.positional_embedding == 'learned_1d':
      x = embedding.AddPositionEmbs(name='posembed_input')(x)
    elif self.positional_embedding == 'sinusoidal_1d':
      x = x + embedding.sinusoidal_embedding(*x.shape[1:]).astype(x.dtype)
    x = nn.Dropout(self.dropout_rate)(x, deterministic=not train)

    checkpointed = _rematerialized if self.remat else lambda block: block
    if self.attention_type == 'factorized_self_attention_block':
      block = functools.partial(checkpointed(FactorizedSelfAttentionBlock),
                                temporal_dims=self.temporal_dims,
                                attention_order=self.attention_order)
    elif self.attention_type == 'factorized_dot_product_attention':
      block = functools.partial(
          checkpointed(EncoderBlock), attention_fn=functools.partial(
              attention.factorized_dot_product_attention,
              temporal_dims=self.temporal_dims))
    else:
      block = checkpointed(EncoderBlock)
    for layer in range(self.num_layers):
      x = block(
          mlp_dim=self.mlp_dim, num_heads=self.num_heads,
          dropout_rate=self.dropout_rate,
          attention_dropout_rate=self.attention_dropout_rate,
          droplayer_p=droplayer_rate(layer + 1, self.num_layers,
                                     self.stochastic_droplayer_rate),
          gelu_approximate=self.gelu_approximate, dtype=self.dtype,
          name=f'encoderblock_{layer}')(x, not train)
    return cpu_layer_norm.LayerNorm(dtype=self.dtype, name='encoder_norm')(x)
