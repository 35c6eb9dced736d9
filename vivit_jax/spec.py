"""Checking a config before anything compiles."""

import ml_collections

from vivit_jax.models import encoder
from vivit_jax.models import vidtr
from vivit_jax.models import vit
from vivit_jax.models import vivit
from vivit_jax.models import vtn

MODEL_NAMES = ('vivit', 'vit', 'cnn3d', 'vtn', 'vidtr')


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
  if name in ('vtn', 'vidtr'):  # Each model module checks its own fields.
    {'vtn': vtn, 'vidtr': vidtr}[name].check_config(config)
    return
  attention_type = model.attention_config.type if name == 'vivit' else 'spacetime'
  if attention_type not in encoder.ATTENTION_TYPES:
    config_error('model.attention_config.type',
          f'unknown attention type {attention_type!r}',
          f'Use one of {encoder.ATTENTION_TYPES}.')
  if model.classifier not in vit.CLASSIFIERS:
    config_error('model.classifier', f'unknown classifier {model.classifier!r}',
          f'Use one of {vit.CLASSIFIERS}.')
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
  if encoding not in vivit.TEMPORAL_ENCODINGS:
    config_error('model.temporal_encoding_config.method',
          f'unknown method {encoding!r}', f'Use one of {vivit.TEMPORAL_ENCODINGS}.')
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


