"""ViViT, the Video Vision Transformer: Models 1-4 of Section 3.3, in
Scenic's parameter layout.

Clips are channels-last: (batch, T, H, W, C).
"""

from typing import Optional, Sequence

import flax.linen as nn
import jax.numpy as jnp

from vivit_jax.models import embedding
from vivit_jax.models import encoder
from vivit_jax.models.stem import ConvStem
from vivit_jax.models.vit import classify
from vivit_jax.models.vit import pool
from vivit_jax.models.vit import prepend_class_token

TEMPORAL_ENCODINGS = ('3d_conv', 'temporal_sampling')


class ViViT(nn.Module):
  """Video Vision Transformer: Models 1-4 of Section 3.3, Scenic's layout.

  Attributes:
    attention_type: 'spacetime' (Model 1), 'factorized_encoder' (Model 2),
      'factorized_self_attention_block' (Model 3) or
      'factorized_dot_product_attention' (Model 4).
    patch_size: tubelet (h, w, t).
    temporal_encoding: '3d_conv' (tubelet embedding) or 'temporal_sampling'
      (uniform frame sampling of `n_sampled_frames` frames).
    classifier: 'token' or 'gap'; Model 2 pools each frame and then the
      temporal encoder's output with it.
    temporal_num_layers, temporal_num_heads, temporal_mlp_dim: Model 2's
      temporal encoder (L_t = 0 is the average-pooling baseline).
    attention_order: Model 3's 'space_time' or 'time_space'.
    stem_features: filters of the convolutional stem's levels (`ConvStem`),
      each halving T, H and W (rounding down) before the tubelets; () for
      none (Scenic's ViViT).
    stem_norm: the stem's 'layer' (LayerNorm, GELU) or 'batch' (BatchNorm,
      ReLU) normalisation.
    axis_name: the `pmap` axis over which a BatchNorm stem averages its
      batch statistics.
    positional_embedding, remat: see `encoder.Encoder`.

  No attribute has a default: `create_model` sets each from the config,
  whose defaults live in `vivit_jax.config_builders`.
  """
  num_classes: int
  patch_size: Sequence[int]
  hidden_size: int
  num_layers: int
  num_heads: int
  mlp_dim: int
  attention_type: str
  temporal_encoding: str
  n_sampled_frames: int
  classifier: str
  representation_size: Optional[int]
  temporal_num_layers: int
  temporal_num_heads: int
  temporal_mlp_dim: int
  attention_order: str
  stem_features: Sequence[int]
  stem_norm: str
  axis_name: Optional[str]
  positional_embedding: str
  dropout_rate: float
  attention_dropout_rate: float
  stochastic_droplayer_rate: float
  gelu_approximate: bool
  remat: bool
  dtype: jnp.dtype

  def _encoder(self, name, **overrides):
    fields = dict(
        num_layers=self.num_layers, mlp_dim=self.mlp_dim,
        num_heads=self.num_heads, attention_type=self.attention_type,
        attention_order=self.attention_order,
        positional_embedding=self.positional_embedding,
        dropout_rate=self.dropout_rate,
        attention_dropout_rate=self.attention_dropout_rate,
        stochastic_droplayer_rate=self.stochastic_droplayer_rate,
        gelu_approximate=self.gelu_approximate, remat=self.remat,
        dtype=self.dtype, name=name)
    return encoder.Encoder(**{**fields, **overrides})

  @nn.compact
  def __call__(self, clip: jnp.ndarray, *, train: bool,
               token_mask: Optional[jnp.ndarray] = None) -> jnp.ndarray:
    """(batch, T, H, W, C) -> (batch, num_classes).

    `token_mask` (batch, t, h, w) bool, for masked pre-training
    (`vivit_jax.masked_modeling`; Models 1, 3 and 4): True replaces the
    token by the learned `mask_token` (d,) before the encoder. Models 1, 3
    and 4 sow the encoder's output, (batch, N, d) with N = t h w (+ 1 for a
    class token, first), as `intermediates/encoded`.
    """
    if self.stem_features:
      clip = ConvStem(self.stem_features, self.stem_norm, self.axis_name,
                      dtype=self.dtype, name='stem')(clip, train=train)
    if self.temporal_encoding == '3d_conv':
      tokens = embedding.TubeletEmbedding(
          self.hidden_size, self.patch_size, dtype=self.dtype,
          name='embedding')(clip)
    else:
      tokens = embedding.FrameSamplingEmbedding(
          self.hidden_size, self.patch_size, self.n_sampled_frames,
          dtype=self.dtype, name='embedding')(clip)
    b, t, h, w, d = tokens.shape
    if token_mask is not None:
      mask_token = self.param('mask_token', nn.initializers.normal(0.02),
                              (d,))
      tokens = jnp.where(token_mask[..., None],
                         mask_token.astype(tokens.dtype), tokens)

    if self.attention_type == 'factorized_encoder':
      x = tokens.reshape(b * t, h * w, d)
      if self.classifier == 'token':
        x = prepend_class_token(self, x, 'cls_SpatialTransformer')
      x = self._encoder('SpatialTransformer')(x, train=train)
      x = pool(x, self.classifier).reshape(b, t, d)
      if self.temporal_num_layers:
        if self.classifier == 'token':
          x = prepend_class_token(self, x, 'cls_TemporalTransformer')
        x = self._encoder(
            'TemporalTransformer', num_layers=self.temporal_num_layers,
            num_heads=self.temporal_num_heads, mlp_dim=self.temporal_mlp_dim,
            attention_type='spacetime')(x, train=train)
        x = pool(x, self.classifier)
      else:
        x = jnp.mean(x, axis=1)
    else:
      x = tokens.reshape(b, t * h * w, d)
      if self.classifier == 'token':
        x = prepend_class_token(self, x, 'cls')
      x = self._encoder('Transformer', temporal_dims=t)(x, train=train)
      self.sow('intermediates', 'encoded', x)
      x = pool(x, self.classifier)
    return classify(x, self.num_classes, self.representation_size,
                     'output_projection', self.dtype)
