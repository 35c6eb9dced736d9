"""Longformer attention (Beltagy et al., 2020) for VTN's temporal encoder
(VTN Section 3.2): a sliding window over the frames plus global attention
for the [CLS] token, in memory linear in the number of frames.

Token 0 is [CLS]: it attends to every token and every token attends to it.
Frame token i (tokens 1..T) attends to the frames j with |i - j| <= w / 2
for a window of w, Longformer's `attention_window`. The band is computed in
blocks of w / 2 query rows, each against the three blocks of keys around it,
so at most 3 w / 2 + 1 scores per frame are ever held: never a T x T array.
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vivit_jax.models import embedding
from vivit_jax.models import encoder

POSITION_EMBEDDINGS = ('learned', 'sinusoidal', 'none')


def band_mask(num_tokens: int, window: int) -> np.ndarray:
  """The (N, N) mask of what each token attends to, [CLS] first: for tests
  and for reading; the attention itself never builds it."""
  positions = np.arange(num_tokens)
  mask = np.abs(positions[:, None] - positions[None, :]) <= window // 2
  mask[0, :] = mask[:, 0] = True
  return mask


def _blocks(num_frames: int, window: int) -> tuple[int, int]:
  """(block size, number of blocks) of the query rows of the band."""
  size = max(1, min(window // 2, num_frames))
  return size, -(-num_frames // size)


def _block_mask(num_frames: int, window: int) -> np.ndarray:
  """(blocks, size, 1 + 3 size): which [CLS] and band keys each frame of a
  block sees; band key s of block c is frame (c - 1) * size + s."""
  size, num_blocks = _blocks(num_frames, window)
  query = np.arange(num_blocks)[:, None, None] * size + np.arange(size)[
      None, :, None]
  key = (np.arange(num_blocks)[:, None, None] - 1) * size + np.arange(
      3 * size)[None, None, :]
  band = (np.abs(key - query) <= window // 2) & (key >= 0) & (key < num_frames)
  return np.concatenate([np.ones((num_blocks, size, 1), bool), band], axis=-1)


def _dropout(weights, rate, rng, deterministic):
  if deterministic or rate == 0.0:
    return weights
  keep = jax.random.bernoulli(rng, 1.0 - rate, weights.shape)
  return jnp.where(keep, weights / (1.0 - rate), 0.0)


def sliding_window_attention(query, key, value, *, window: int,
                             dropout_rng=None, dropout_rate=0.0,
                             deterministic=True, dtype=None, precision=None):
  """Longformer attention as a `MultiHeadDotProductAttention.attention_fn`.

  Args:
    query, key, value: (batch, 1 + T, heads, head_dim), [CLS] first.
    window: w; frames attend to the frames within w / 2 of them.

  Returns:
    (batch, 1 + T, heads, head_dim). Softmax in float32, as
    `attention.dot_product_attention`.
  """
  del dtype
  batch, n, heads, head_dim = query.shape
  frames = n - 1
  size, num_blocks = _blocks(frames, window)
  einsum = functools.partial(jnp.einsum, precision=precision)
  q = query.astype(jnp.float32) * head_dim**-0.5
  k, v = key.astype(jnp.float32), value.astype(jnp.float32)
  rngs = (jax.random.split(dropout_rng) if dropout_rng is not None
          else (None, None))

  # [CLS]'s row: global attention over all 1 + T tokens, (batch, heads, N).
  cls_weights = jax.nn.softmax(einsum('bhd,bnhd->bhn', q[:, 0], k), axis=-1)
  cls_weights = _dropout(cls_weights, dropout_rate, rngs[0], deterministic)
  cls_out = einsum('bhn,bnhd->bhd', cls_weights, v)[:, None]

  # Frames' rows: [CLS] and the band, a block of `size` rows at a time.
  def blocked(x, before, after):  # (b, T, h, d) -> (b, blocks', size, h, d)
    x = jnp.pad(x, ((0, 0), (before, after), (0, 0), (0, 0)))
    return x.reshape(batch, -1, size, heads, head_dim)

  padding = num_blocks * size - frames
  q_blocks = blocked(q[:, 1:], 0, padding)
  k_blocks, v_blocks = (blocked(x[:, 1:], size, size + padding)
                        for x in (k, v))

  def band(x):  # Blocks c - 1, c, c + 1 for each block c: (b, c, 3 size, h, d)
    return jnp.concatenate([x[:, :-2], x[:, 1:-1], x[:, 2:]], axis=2)

  logits = jnp.concatenate([
      einsum('bcqhd,bhd->bhcq', q_blocks, k[:, 0])[..., None],
      einsum('bcqhd,bckhd->bhcqk', q_blocks, band(k_blocks))], axis=-1)
  logits = jnp.where(_block_mask(frames, window), logits,
                     jnp.finfo(jnp.float32).min)
  weights = jax.nn.softmax(logits, axis=-1)  # (b, h, blocks, size, 1 + 3 size)
  weights = _dropout(weights, dropout_rate, rngs[1], deterministic)
  frames_out = (
      einsum('bhcq,bhd->bcqhd', weights[..., 0], v[:, 0]) +
      einsum('bhcqk,bckhd->bcqhd', weights[..., 1:], band(v_blocks)))
  frames_out = frames_out.reshape(batch, -1, heads, head_dim)[:, :frames]
  return jnp.concatenate([cls_out, frames_out], axis=1).astype(query.dtype)


class LongformerEncoder(nn.Module):
  """VTN's temporal encoder: frame positions, then pre-LN blocks of
  sliding-window attention (`encoder.EncoderBlock`, vision_transformer
  names `encoderblock_N/...`). Its final LayerNorm is the MLP head's.

  Attributes:
    window: w, Longformer's attention window (VTN: 32; PySlowFast: 18).
    position_embedding: 'learned' (a table of `max_frames` rows, row i added
      to frame i), 'sinusoidal' (fixed, DETR-like on time only) or 'none'
      (Table 3). [CLS] gets none: its learned token already marks it.
  """
  num_layers: int
  mlp_dim: int
  num_heads: int
  window: int
  position_embedding: str = 'learned'
  max_frames: int = 0
  dropout_rate: float = 0.0
  attention_dropout_rate: float = 0.0
  gelu_approximate: bool = True
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray, *, train: bool) -> jnp.ndarray:
    """(batch, 1 + T, d), [CLS] first -> (batch, 1 + T, d)."""
    _, n, d = x.shape
    if self.position_embedding == 'learned':
      table = self.param('pos_embedding', nn.initializers.normal(0.02),
                         (1, self.max_frames, d))
      positions = table[:, :n - 1]
    elif self.position_embedding == 'sinusoidal':
      positions = embedding.sinusoidal_embedding(n - 1, d)[None]
    else:
      positions = jnp.zeros((1, n - 1, d))
    x = x + jnp.pad(positions, ((0, 0), (1, 0), (0, 0))).astype(x.dtype)
    x = nn.Dropout(self.dropout_rate)(x, deterministic=not train)
    attention_fn = functools.partial(sliding_window_attention,
                                     window=self.window)
    for layer in range(self.num_layers):
      x = encoder.EncoderBlock(
          mlp_dim=self.mlp_dim, num_heads=self.num_heads,
          dropout_rate=self.dropout_rate,
          attention_dropout_rate=self.attention_dropout_rate,
          attention_fn=attention_fn, gelu_approximate=self.gelu_approximate,
          dtype=self.dtype, name=f'encoderblock_{layer}')(x, not train)
    return x
