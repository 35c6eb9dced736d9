"""The ViViT models (paper Section 3.3), the ViT image model they start from,
and the term project's 3D CNN baseline; `create_model` builds one from a
config after checking it.

Inputs are channels-last: clips (batch, T, H, W, C), images (batch, H, W, C).
All models return logits (batch, num_classes) and take `train` to switch
dropout, stochastic depth and batch statistics.
"""

from typing import Optional, Sequence

import flax.linen as nn
import jax.numpy as jnp
import ml_collections

from vivit_jax import embedding
from vivit_jax import encoder

CLASSIFIERS = ('token', 'gap')
TEMPORAL_ENCODINGS = ('3d_conv', 'temporal_sampling')
MODEL_NAMES = ('vivit', 'vit', 'cnn3d')


def _prepend_class_token(module: nn.Module, x: jnp.ndarray,
                         name: str) -> jnp.ndarray:
  """(batch, N, d) -> (batch, 1 + N, d), z_cls of Eq. 1 first."""
  cls = module.param(name, nn.initializers.zeros, (1, 1, x.shape[-1]))
  cls = jnp.broadcast_to(cls.astype(x.dtype), (x.shape[0], 1, x.shape[-1]))
  return jnp.concatenate([cls, x], axis=1)


def _pool(x: jnp.ndarray, classifier: str) -> jnp.ndarray:
  """(batch, N, d) -> (batch, d): the class token, or the mean of tokens."""
  return x[:, 0] if classifier == 'token' else jnp.mean(x, axis=1)


def _classify(x: jnp.ndarray, num_classes: int,
              representation_size: Optional[int], head_name: str,
              dtype: jnp.dtype) -> jnp.ndarray:
  """Optional pre-logits layer (Dense + tanh), then a zero-initialised head."""
  if representation_size is not None:
    x = jnp.tanh(nn.Dense(representation_size, dtype=dtype,
                          name='pre_logits')(x))
  x = nn.Dense(num_classes, kernel_init=nn.initializers.zeros, dtype=dtype,
               name=head_name)(x)
  return x.astype(jnp.float32)


class ViT(nn.Module):
  """Vision Transformer for images (Section 3.1), vision_transformer layout.

  Attributes:
    patch_size: (h, w).
    classifier: 'token' (z_cls^L) or 'gap' (mean of z^L).
  """
  num_classes: int
  patch_size: Sequence[int]
  hidden_size: int
  num_layers: int
  num_heads: int
  mlp_dim: int
  classifier: str = 'token'
  representation_size: Optional[int] = None
  dropout_rate: float = 0.0
  attention_dropout_rate: float = 0.0
  stochastic_droplayer_rate: float = 0.0
  gelu_approximate: bool = True
  remat: bool = False
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, images: jnp.ndarray, *, train: bool) -> jnp.ndarray:
    """(batch, H, W, C) -> (batch, num_classes)."""
    fh, fw = self.patch_size[:2]
    x = nn.Conv(self.hidden_size, (fh, fw), strides=(fh, fw), padding='VALID',
                dtype=self.dtype, name='embedding')(images)
    x = x.reshape(x.shape[0], -1, self.hidden_size)
    if self.classifier == 'token':
      x = _prepend_class_token(self, x, 'cls')
    x = encoder.Encoder(
        num_layers=self.num_layers, mlp_dim=self.mlp_dim,
        num_heads=self.num_heads, dropout_rate=self.dropout_rate,
        attention_dropout_rate=self.attention_dropout_rate,
        stochastic_droplayer_rate=self.stochastic_droplayer_rate,
        gelu_approximate=self.gelu_approximate, remat=self.remat,
        dtype=self.dtype, name='Transformer')(x, train=train)
    return _classify(_pool(x, self.classifier), self.num_classes,
                     self.representation_size, 'head', self.dtype)


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
    positional_embedding, remat: see `encoder.Encoder`.
  """
  num_classes: int
  patch_size: Sequence[int]
  hidden_size: int
  num_layers: int
  num_heads: int
  mlp_dim: int
  attention_type: str = 'spacetime'
  temporal_encoding: str = '3d_conv'
  n_sampled_frames: int = 0
  classifier: str = 'token'
  representation_size: Optional[int] = None
  temporal_num_layers: int = 4
  temporal_num_heads: int = 12
  temporal_mlp_dim: int = 3072
  attention_order: str = 'space_time'
  positional_embedding: str = 'learned_1d'
  dropout_rate: float = 0.0
  attention_dropout_rate: float = 0.0
  stochastic_droplayer_rate: float = 0.0
  gelu_approximate: bool = True
  remat: bool = False
  dtype: jnp.dtype = jnp.float32

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
  def __call__(self, clip: jnp.ndarray, *, train: bool) -> jnp.ndarray:
    """(batch, T, H, W, C) -> (batch, num_classes)."""
    if self.temporal_encoding == '3d_conv':
      tokens = embedding.TubeletEmbedding(
          self.hidden_size, self.patch_size, dtype=self.dtype,
          name='embedding')(clip)
    else:
      tokens = embedding.FrameSamplingEmbedding(
          self.hidden_size, self.patch_size, self.n_sampled_frames,
          dtype=self.dtype, name='embedding')(clip)
    b, t, h, w, d = tokens.shape

    if self.attention_type == 'factorized_encoder':
      x = tokens.reshape(b * t, h * w, d)
      if self.classifier == 'token':
        x = _prepend_class_token(self, x, 'cls_SpatialTransformer')
      x = self._encoder('SpatialTransformer')(x, train=train)
      x = _pool(x, self.classifier).reshape(b, t, d)
      if self.temporal_num_layers:
        if self.classifier == 'token':
          x = _prepend_class_token(self, x, 'cls_TemporalTransformer')
        x = self._encoder(
            'TemporalTransformer', num_layers=self.temporal_num_layers,
            num_heads=self.temporal_num_heads, mlp_dim=self.temporal_mlp_dim,
            attention_type='spacetime')(x, train=train)
        x = _pool(x, self.classifier)
      else:
        x = jnp.mean(x, axis=1)
    else:
      x = tokens.reshape(b, t * h * w, d)
      if self.classifier == 'token':
        x = _prepend_class_token(self, x, 'cls')
      x = self._encoder('Transformer', temporal_dims=t)(x, train=train)
      x = _pool(x, self.classifier)
    return _classify(x, self.num_classes, self.representation_size,
                     'output_projection', self.dtype)


class CNN3D(nn.Module):
  """The term project's 3D CNN (its Section III.E).

  Three blocks of Conv3D(k=3, stride 1, padding 1) -> BatchNorm -> ReLU ->
  MaxPool(2), with 32, 64 and 128 filters, global average pooling and a
  linear classifier: 279,435 parameters for 11 classes.

  Attributes:
    axis_name: the `pmap` axis over which batch statistics are averaged.
  """
  num_classes: int
  features: Sequence[int] = (32, 64, 128)
  axis_name: Optional[str] = None
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, clip: jnp.ndarray, *, train: bool) -> jnp.ndarray:
    """(batch, D, H, W, C) -> (batch, num_classes)."""
    x = clip
    for features in self.features:
      x = nn.Conv(features, (3, 3, 3), padding=1, dtype=self.dtype)(x)
      x = nn.BatchNorm(use_running_average=not train, momentum=0.9,
                       epsilon=1e-5, axis_name=self.axis_name,
                       dtype=self.dtype)(x)
      x = nn.max_pool(nn.relu(x), (2, 2, 2), strides=(2, 2, 2))
    x = jnp.mean(x, axis=(1, 2, 3))
    return nn.Dense(self.num_classes, dtype=self.dtype, name='head')(x).astype(
        jnp.float32)


def config_error(field: str, problem: str, fix: str):
  """Raises ValueError naming `config.field`, the problem and the fix."""
  raise ValueError(f'config.{field}: {problem}. {fix}')


def validate_config(config: ml_collections.ConfigDict) -> None:
  """Raises ValueError naming the config field if the model cannot be built."""
  model, data = config.model, config.dataset_configs
  name = config.get('model_name', 'vivit')
  if name not in MODEL_NAMES:
    config_error('model_name', f'unknown model {name!r}', f'Use one of {MODEL_NAMES}.')
  if config.get('model_dtype_str', 'float32') not in ('float32', 'bfloat16'):
    config_error('model_dtype_str', f'unknown dtype {config.model_dtype_str!r}',
          "Use 'float32' or 'bfloat16'.")
  if name == 'cnn3d':
    return
  attention_type = model.attention_config.type if name == 'vivit' else 'spacetime'
  if attention_type not in encoder.ATTENTION_TYPES:
    config_error('model.attention_config.type',
          f'unknown attention type {attention_type!r}',
          f'Use one of {encoder.ATTENTION_TYPES}.')
  if model.classifier not in CLASSIFIERS:
    config_error('model.classifier', f'unknown classifier {model.classifier!r}',
          f'Use one of {CLASSIFIERS}.')
  if model.hidden_size % model.num_heads:
    config_error('model.num_heads', f'{model.num_heads} heads do not divide '
          f'hidden_size {model.hidden_size}',
          'Choose a head count that divides the width.')
  if model.get('positional_embedding', 'learned_1d') not in (
      encoder.POSITIONAL_EMBEDDINGS):
    config_error('model.positional_embedding',
          f'unknown embedding {model.positional_embedding!r}',
          f'Use one of {encoder.POSITIONAL_EMBEDDINGS}.')
  fh, fw = model.patches.size[:2]
  if data.crop_size % fh or data.crop_size % fw:
    config_error('model.patches.size', f'patch {fh}x{fw} does not divide '
          f'dataset_configs.crop_size {data.crop_size}',
          'Choose a patch size that divides the crop size.')
  if name == 'vit':
    return

  encoding = model.temporal_encoding_config.method
  if encoding not in TEMPORAL_ENCODINGS:
    config_error('model.temporal_encoding_config.method',
          f'unknown method {encoding!r}', f'Use one of {TEMPORAL_ENCODINGS}.')
  if encoding == '3d_conv':
    if len(model.patches.size) != 3:
      config_error('model.patches.size', f'{tuple(model.patches.size)} is not a '
            'tubelet (h, w, t)', 'Give three sizes.')
    ft = model.patches.size[2]
    if data.num_frames % ft:
      config_error('model.patches.size', f'tubelet depth t={ft} does not divide '
            f'dataset_configs.num_frames {data.num_frames}',
            'Choose a tubelet depth that divides the number of frames.')
  elif not 0 < model.temporal_encoding_config.n_sampled_frames <= (
      data.num_frames):
    config_error('model.temporal_encoding_config.n_sampled_frames',
          f'cannot sample {model.temporal_encoding_config.n_sampled_frames} '
          f'of {data.num_frames} frames', 'Choose 1 to num_frames frames.')

  if attention_type == 'factorized_self_attention_block':
    if model.classifier == 'token':
      config_error('model.classifier', 'Model 3 (factorized_self_attention_block) '
            'has no class token', "Use classifier='gap'.")
    if model.attention_config.attention_order not in encoder.ATTENTION_ORDERS:
      config_error('model.attention_config.attention_order',
            f'unknown order {model.attention_config.attention_order!r}',
            f'Use one of {encoder.ATTENTION_ORDERS}.')
  if attention_type == 'factorized_dot_product_attention':
    if model.num_heads % 2:
      config_error('model.num_heads', f'Model 4 splits heads between space and time, '
            f'but {model.num_heads} is odd', 'Use an even number of heads.')
    if model.classifier == 'token':
      config_error('model.classifier', 'Model 4 (factorized_dot_product_attention) '
            'has no class token', "Use classifier='gap'.")
  if attention_type == 'factorized_encoder':
    temporal = model.temporal_transformer
    if temporal.num_layers and model.hidden_size % temporal.num_heads:
      config_error('model.temporal_transformer.num_heads',
            f'{temporal.num_heads} heads do not divide hidden_size '
            f'{model.hidden_size}', 'Choose a head count that divides the width.')


def input_shape(config: ml_collections.ConfigDict) -> tuple[int, ...]:
  """The shape of one example: (T, H, W, C), or (H, W, C) for 'vit'."""
  data = config.dataset_configs
  frame = (data.crop_size, data.crop_size, data.num_channels)
  return frame if config.get('model_name', 'vivit') == 'vit' else (
      data.num_frames,) + frame


def create_model(config: ml_collections.ConfigDict,
                 axis_name: Optional[str] = None) -> nn.Module:
  """Checks `config` (see `validate_config`) and builds its model.

  Args:
    config: an experiment config, e.g. `configs/vivit_b.py`'s.
    axis_name: `pmap` axis for the 3D CNN's batch statistics.
  """
  validate_config(config)
  model, name = config.model, config.get('model_name', 'vivit')
  num_classes = config.dataset_configs.num_classes
  dtype = jnp.dtype(config.get('model_dtype_str', 'float32'))
  if name == 'cnn3d':
    return CNN3D(num_classes, axis_name=axis_name, dtype=dtype)
  common = dict(
      num_classes=num_classes, hidden_size=model.hidden_size,
      num_layers=model.num_layers, num_heads=model.num_heads,
      mlp_dim=model.mlp_dim, classifier=model.classifier,
      representation_size=model.get('representation_size'),
      dropout_rate=model.get('dropout_rate', 0.0),
      attention_dropout_rate=model.get('attention_dropout_rate', 0.0),
      stochastic_droplayer_rate=model.get('stochastic_droplayer_rate', 0.0),
      gelu_approximate=model.get('gelu_approximate', True),
      remat=model.get('remat', False),
      dtype=dtype)
  if name == 'vit':
    return ViT(patch_size=tuple(model.patches.size[:2]), **common)
  temporal = model.get('temporal_transformer', ml_collections.ConfigDict())
  return ViViT(
      patch_size=tuple(model.patches.size),
      attention_type=model.attention_config.type,
      attention_order=model.attention_config.get('attention_order',
                                                 'space_time'),
      temporal_encoding=model.temporal_encoding_config.method,
      n_sampled_frames=model.temporal_encoding_config.get(
          'n_sampled_frames', 0),
      temporal_num_layers=temporal.get('num_layers', 4),
      temporal_num_heads=temporal.get('num_heads', model.num_heads),
      temporal_mlp_dim=temporal.get('mlp_dim', model.mlp_dim),
      positional_embedding=model.get('positional_embedding', 'learned_1d'),
      **common)
