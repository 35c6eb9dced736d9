"""VidTr, the Video Transformer with separable attention (Zhang et al.,
ICCV 2021, Section 3.2), and C-VidTr's temporal down-sampling.

Clips are channels-last (batch, T, H, W, C). Each frame is cut into s x s
patches (S = HW / s^2 tokens); the token grid is (T + 1) x (S + 1): column 0
holds a spatial class token per frame, row 0 a temporal class token per
location, and the (0, 0) token is classified. Every block is
MSA_s(MSA_t(.)) (Eq. 1) with pre-LN and a GELU MLP: temporal attention over
the T + 1 tokens of each location (Eqs. 2-5), then spatial attention over
the S + 1 tokens of each frame (Eqs. 6-8).

C-VidTr down-samples time inside the temporal attention of given layers
(Eq. 3's pool), keeping the class-token row: 'topk_std' keeps the K rows
of the temporal affinity matrix with the largest standard deviation (Eqs.
9-11), 'avg' averages groups of frames, 'conv' is a learned strided
depthwise convolution over time (Table 5d). Pooling a row of Attn_t before
multiplying by v (Eq. 3) equals pooling the attention's output rows, so
the output and its residual are pooled together.
"""

import functools
from typing import Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from vivit_jax.models import attention
from vivit_jax.models import cpu_layer_norm
from vivit_jax.models import embedding
from vivit_jax.models import encoder
from vivit_jax.models.vit import classify
from vivit_jax import spec

POOLINGS = ('topk_std', 'avg', 'conv')


def topk_std_rows(weights: jnp.ndarray, k: int) -> jnp.ndarray:
  """Eqs. 9-11: the rows of the temporal affinity matrix to keep.

  Args:
    weights: Attn_t, (batch, heads, 1 + T, 1 + T), row 0 the class token's.
    k: K frames to keep.

  Returns:
    (batch, 1 + k) row indices: 0, then the k rows of 1..T whose standard
    deviation (over the row, averaged over heads) is largest, in temporal
    order.
  """
  std = jnp.std(weights[:, :, 1:], axis=-1).mean(axis=1)
  top = jnp.sort(jax.lax.top_k(std, k)[1], axis=-1) + 1
  return jnp.concatenate([jnp.zeros_like(top[:, :1]), top], axis=-1)


def average_pooling_matrix(frames: int, frames_out: int) -> np.ndarray:
  """(frames_out, frames): row i averages frames floor(i T / tau) to
  ceil((i + 1) T / tau) - 1, PyTorch's adaptive average pooling."""
  matrix = np.zeros((frames_out, frames), np.float32)
  for i in range(frames_out):
    start, stop = (i * frames) // frames_out, -(-(i + 1) * frames // frames_out)
    matrix[i, start:stop] = 1.0 / (stop - start)
  return matrix


class TemporalConvPool(nn.Module):
  """A depthwise 1D convolution over time, T -> tau frames: stride
  floor(T / tau), kernel T - (tau - 1) stride, initialised to averaging."""
  frames_out: int

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    """(batch, T, d) -> (batch, tau, d)."""
    frames, width = x.shape[1:]
    stride = frames // self.frames_out
    size = frames - (self.frames_out - 1) * stride
    kernel = self.param('kernel', nn.initializers.constant(1.0 / size),
                        (size, 1, width))
    bias = self.param('bias', nn.initializers.zeros, (width,))
    y = jax.lax.conv_general_dilated(
        x, kernel.astype(x.dtype), (stride,), 'VALID',
        dimension_numbers=('NWC', 'WIO', 'NWC'), feature_group_count=width)
    return y + bias.astype(x.dtype)


class TemporalAttention(nn.Module):
  """Multi-head self-attention that also returns its affinity matrix, for
  topK_std. Parameters as `nn.MultiHeadDotProductAttention`'s: `query`,
  `key`, `value` (d, heads, d / heads) and `out` (heads, d / heads, d)."""
  num_heads: int
  dropout_rate: float = 0.0
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray, deterministic: bool
               ) -> tuple[jnp.ndarray, jnp.ndarray]:
    """(batch, N, d) -> (batch, N, d), Attn (batch, heads, N, N)."""
    width = x.shape[-1]
    dense = functools.partial(nn.DenseGeneral, dtype=self.dtype,
                              kernel_init=nn.initializers.xavier_uniform())
    q, k, v = (dense((self.num_heads, width // self.num_heads), name=name)(x)
               for name in ('query', 'key', 'value'))
    logits = jnp.einsum('bqhd,bkhd->bhqk', q, k).astype(jnp.float32)
    weights = jax.nn.softmax(logits * q.shape[-1]**-0.5, axis=-1)
    dropped = nn.Dropout(self.dropout_rate)(weights, deterministic)
    y = jnp.einsum('bhqk,bkhd->bqhd', dropped.astype(v.dtype), v)
    return dense(width, axis=(-2, -1), name='out')(y), weights


class SeparableBlock(nn.Module):
  """One VidTr layer, Eq. 1 with pre-LN: temporal MSA (pooled to tau frames
  if `frames_out`), spatial MSA, MLP, each with a residual. Names follow
  ViViT Model 3's: `{LayerNorm,MultiHeadDotProductAttention}_{time,space}`,
  `LayerNorm_mlp`, `MlpBlock` (and `TemporalPool` for 'conv').

  Attributes:
    frames_out: tau, the frames kept after this layer; 0 keeps them all.
    pooling: one of POOLINGS.
  """
  mlp_dim: int
  num_heads: int
  frames_out: int = 0
  pooling: str = 'topk_std'
  dropout_rate: float = 0.0
  attention_dropout_rate: float = 0.0
  gelu_approximate: bool = True
  dtype: jnp.dtype = jnp.float32

  def pool(self, z: jnp.ndarray, weights: jnp.ndarray) -> jnp.ndarray:
    """(batch', 1 + T, d) -> (batch', 1 + tau, d), row 0 kept."""
    if self.pooling == 'topk_std':
      rows = topk_std_rows(weights, self.frames_out)
      return jnp.take_along_axis(z, rows[..., None], axis=1)
    if self.pooling == 'avg':
      frames = jnp.einsum(
          'ft,btd->bfd', average_pooling_matrix(z.shape[1] - 1,
                                                self.frames_out), z[:, 1:])
    else:
      frames = TemporalConvPool(self.frames_out, name='TemporalPool')(z[:, 1:])
    return jnp.concatenate([z[:, :1], frames.astype(z.dtype)], axis=1)

  @nn.compact
  def __call__(self, x: jnp.ndarray, deterministic: bool) -> jnp.ndarray:
    """(batch, 1 + T, 1 + S, d) -> (batch, 1 + tau, 1 + S, d)."""
    b, _, s, d = x.shape
    z = x.transpose(0, 2, 1, 3).reshape(b * s, -1, d)  # Eq. 2: S^(:, i, .).
    y, weights = TemporalAttention(
        self.num_heads, self.attention_dropout_rate, self.dtype,
        name='MultiHeadDotProductAttention_time')(
            cpu_layer_norm.LayerNorm(dtype=self.dtype,
                                     name='LayerNorm_time')(z),
            deterministic)
    z = z + nn.Dropout(self.dropout_rate)(y, deterministic)
    if self.frames_out:
      z = self.pool(z, weights)
    t = z.shape[1]
    z = z.reshape(b, s, t, d).transpose(0, 2, 1, 3).reshape(b * t, s, d)
    y = cpu_layer_norm.LayerNorm(dtype=self.dtype,
                                 name='LayerNorm_space')(z)  # Eq. 6.
    y = nn.MultiHeadDotProductAttention(
        num_heads=self.num_heads, dtype=self.dtype, broadcast_dropout=False,
        dropout_rate=self.attention_dropout_rate,
        attention_fn=attention.dot_product_attention,
        kernel_init=nn.initializers.xavier_uniform(),
        name='MultiHeadDotProductAttention_space')(
            y, deterministic=deterministic)
    z = z + nn.Dropout(self.dropout_rate)(y, deterministic)
    y = cpu_layer_norm.LayerNorm(dtype=self.dtype, name='LayerNorm_mlp')(z)
    y = encoder.MlpBlock(self.mlp_dim, self.dropout_rate,
                         self.gelu_approximate, self.dtype,
                         name='MlpBlock')(y, deterministic)
    return (z + y).reshape(b, t, s, d)


class VidTr(nn.Module):
  """VidTr and C-VidTr. Parameters: `embedding` (a ViT's 2D patch
  embedding), `cls` (one learned class token, at every class-token
  position), `Transformer/posembed_input/pos_embedding` (1, T+1, S+1, d),
  `Transformer/encoderblock_N/...`, `Transformer/encoder_norm`,
  `output_projection`.

  Attributes:
    patch_size: (s, s).
    pooling: C-VidTr's down-sampling, one of POOLINGS.
    pool_layers, pool_frames: the layers that down-sample and the frames
      tau each keeps (Table 1: C-VidTr-S [1, 2, 4] -> [6, 4, 2]).
  """
  num_classes: int
  patch_size: Sequence[int]
  hidden_size: int
  num_layers: int
  num_heads: int
  mlp_dim: int
  pooling: str
  pool_layers: Sequence[int]
  pool_frames: Sequence[int]
  representation_size: Optional[int]
  dropout_rate: float
  attention_dropout_rate: float
  gelu_approximate: bool
  dtype: jnp.dtype

  @nn.compact
  def __call__(self, clip: jnp.ndarray, *, train: bool) -> jnp.ndarray:
    """(batch, T, H, W, C) -> (batch, num_classes)."""
    tokens = embedding.FrameSamplingEmbedding(
        self.hidden_size, self.patch_size, clip.shape[1], dtype=self.dtype,
        name='embedding')(clip)
    b, t, h, w, d = tokens.shape
    cls = self.param('cls', nn.initializers.zeros, (1, 1, d)).astype(
        tokens.dtype)
    x = jnp.concatenate([jnp.broadcast_to(cls[None], (b, t, 1, d)),
                         tokens.reshape(b, t, h * w, d)], axis=2)
    x = jnp.concatenate([jnp.broadcast_to(cls[None], (b, 1, 1 + h * w, d)),
                         x], axis=1)
    x = _SeparableEncoder(
        num_layers=self.num_layers, mlp_dim=self.mlp_dim,
        num_heads=self.num_heads, pooling=self.pooling,
        frames_out=dict(zip(self.pool_layers, self.pool_frames)),
        dropout_rate=self.dropout_rate,
        attention_dropout_rate=self.attention_dropout_rate,
        gelu_approximate=self.gelu_approximate, dtype=self.dtype,
        name='Transformer')(x, train=train)
    return classify(x[:, 0, 0], self.num_classes, self.representation_size,
                    'output_projection', self.dtype)


class _SeparableEncoder(nn.Module):
  """Positional embedding of the (T+1) x (S+1) grid, L separable blocks, a
  final LayerNorm. `frames_out`: {layer: tau}."""
  num_layers: int
  mlp_dim: int
  num_heads: int
  pooling: str
  frames_out: dict
  dropout_rate: float = 0.0
  attention_dropout_rate: float = 0.0
  gelu_approximate: bool = True
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray, *, train: bool) -> jnp.ndarray:
    """(batch, 1 + T, 1 + S, d) -> (batch, 1 + tau, 1 + S, d)."""
    x = embedding.AddPositionEmbs(name='posembed_input')(x)
    x = nn.Dropout(self.dropout_rate)(x, deterministic=not train)
    for layer in range(self.num_layers):
      x = SeparableBlock(
          mlp_dim=self.mlp_dim, num_heads=self.num_heads,
          frames_out=self.frames_out.get(layer, 0), pooling=self.pooling,
          dropout_rate=self.dropout_rate,
          attention_dropout_rate=self.attention_dropout_rate,
          gelu_approximate=self.gelu_approximate, dtype=self.dtype,
          name=f'encoderblock_{layer}')(x, not train)
    return cpu_layer_norm.LayerNorm(dtype=self.dtype, name='encoder_norm')(x)


def create(config: ml_collections.ConfigDict) -> VidTr:
  """The VidTr of a config (`config_builders.vidtr_model`)."""
  model, pooling = config.model, config.model.temporal_pooling
  return VidTr(
      num_classes=config.dataset_configs.num_classes,
      patch_size=tuple(model.patches.size[:2]),
      hidden_size=model.hidden_size, num_layers=model.num_layers,
      num_heads=model.num_heads, mlp_dim=model.mlp_dim,
      pooling=pooling.method, pool_layers=tuple(pooling.layers),
      pool_frames=tuple(pooling.frames),
      representation_size=model.representation_size,
      dropout_rate=model.dropout_rate,
      attention_dropout_rate=model.attention_dropout_rate,
      gelu_approximate=model.gelu_approximate,
      dtype=jnp.dtype(config.model_dtype_str))


def check_config(config: ml_collections.ConfigDict) -> None:
  """Raises ValueError naming the field if `config`'s VidTr cannot be
  built."""
  model, data = config.model, config.dataset_configs
  pooling = model.temporal_pooling
  if model.hidden_size % model.num_heads:
    spec.config_error('model.num_heads', f'{model.num_heads} heads do not '
                      f'divide hidden_size {model.hidden_size}',
                      'Choose a head count that divides the width.')
  fh, fw = model.patches.size[:2]
  if data.crop_size % fh or data.crop_size % fw:
    spec.config_error('model.patches.size', f'patch {fh}x{fw} does not '
                      f'divide dataset_configs.crop_size {data.crop_size}',
                      'Choose a patch size that divides the crop size.')
  if pooling.method not in POOLINGS:
    spec.config_error('model.temporal_pooling.method',
                      f'unknown method {pooling.method!r}',
                      f'Use one of {POOLINGS}.')
  layers, frames = tuple(pooling.layers), tuple(pooling.frames)
  if len(layers) != len(frames):
    spec.config_error('model.temporal_pooling.frames', f'{len(frames)} '
                      f'frame counts for {len(layers)} layers',
                      'Give one tau per down-sampling layer.')
  if list(layers) != sorted(set(layers)) or any(
      not 0 <= layer < model.num_layers for layer in layers):
    spec.config_error('model.temporal_pooling.layers', f'{layers} are not '
                      f'increasing layers of 0..{model.num_layers - 1}',
                      'List each down-sampling layer once, in order.')
  previous = data.num_frames
  for tau in frames:
    if not 0 < tau < previous:
      spec.config_error('model.temporal_pooling.frames',
                        f'{frames} do not decrease from '
                        f'dataset_configs.num_frames {data.num_frames}',
                        'Give each layer fewer frames than it receives.')
    previous = tau
