"""The config, checked once, before anything compiles, into a `Spec`.

  spec = check_config(config, mode='train')

`Spec` holds the completed config (every field at its value or default, see
`config_builders.with_defaults`) and every number derived from it that the
rest of the package reads: the input shape, the token grid, the class names,
the split sizes, steps per epoch, total and warm-up steps. A config that
cannot work raises `ConfigError`, one line naming the field, the problem and
the fix.
"""

import dataclasses
import os
from typing import Optional

import jax
import ml_collections

from vivit_jax import config_builders
from vivit_jax import data
from vivit_jax.models import encoder
from vivit_jax.models import stem
from vivit_jax.models import vidtr
from vivit_jax.models import vit
from vivit_jax.models import vivit
from vivit_jax.models import vtn

MODEL_NAMES = ('vivit', 'vit', 'cnn3d', 'vtn', 'vidtr')
MODES = ('model', 'train', 'eval')
OPTIMIZERS = ('sgd', 'adamw')
SCHEDULES = ('cosine', 'constant')
CHECKPOINT_METRICS = {'acc': 'max', 'auc': 'max', 'loss': 'min'}
CHECKPOINT_FORMATS = ('auto', 'vit_npz', 'huggingface', 'orbax', 'scenic')


class ConfigError(ValueError):
  """A config field that cannot work; the message names it and the fix."""


def config_error(field: str, problem: str, fix: str):
  """Raises ConfigError naming `config.field`, the problem and the fix."""
  raise ConfigError(f'config.{field}: {problem}. {fix}')


@dataclasses.dataclass(frozen=True)
class Spec:
  """A checked config and the numbers derived from it.

  Attributes:
    config: the completed config, locked.
    model_name: 'vivit', 'vit', 'cnn3d', 'vtn' or 'vidtr'.
    input_shape: one example, (T, H, W, C) ((H, W, C) for 'vit').
    token_grid: (n_t, n_h, n_w) tokens of a video transformer (VTN and
      VidTr: every frame's patches), (n_h, n_w) of a ViT, () for the CNN;
      class tokens not counted.
    num_tokens: the product of `token_grid` (0 for the CNN).
    num_classes, class_names: the classes in label order.
    split_sizes: {'train', 'val', 'test'} -> examples (of the fold's run with
      cross_validation); None in 'model' mode.
    steps_per_epoch, total_steps, warmup_steps: the schedule ('train' mode).
    eval_every_steps, checkpoint_every_steps: validation and extra
      checkpoints ('train' mode).
    init_checkpoint: the checkpoint `config.init_from` names (its path as
      given), None where the model starts from its initialisation.
    notes: what the check noticed but did not refuse, to be logged.
  """
  config: ml_collections.ConfigDict
  model_name: str
  input_shape: tuple[int, ...]
  token_grid: tuple[int, ...]
  num_tokens: int
  num_classes: int
  class_names: tuple[str, ...]
  split_sizes: Optional[dict[str, int]] = None
  steps_per_epoch: Optional[int] = None
  total_steps: Optional[int] = None
  warmup_steps: Optional[int] = None
  eval_every_steps: Optional[int] = None
  checkpoint_every_steps: Optional[int] = None
  init_checkpoint: Optional[str] = None
  notes: tuple[str, ...] = ()


def check_config(config: ml_collections.ConfigDict, mode: str = 'train'
                 ) -> Spec:
  """Checks `config` for `mode` and derives its numbers; compiles nothing.

  Args:
    mode: 'model' (summary, bench, predict: the model and its input only),
      'train' (also the data, the optimiser, the schedule and checkpoints)
      or 'eval' (also the data).
  Raises:
    ConfigError: a field that cannot work.
    data.DataError: the data set is unknown or its file unreadable.
  """
  config, notes = config_builders.with_defaults(config)
  name = config.model_name
  if name not in MODEL_NAMES:
    config_error('model_name', f'unknown model {name!r}',
                 f'Use one of {MODEL_NAMES}.')
  if config.model_dtype_str not in ('float32', 'bfloat16'):
    config_error('model_dtype_str', f'unknown dtype {config.model_dtype_str!r}',
                 "Use 'float32' or 'bfloat16'.")
  dataset = config.dataset_configs
  for field in ('num_classes', 'num_frames', 'crop_size', 'num_channels'):
    if not isinstance(dataset.get(field), int) or dataset[field] <= 0:
      config_error(f'dataset_configs.{field}',
                   f'{dataset.get(field)!r} is not a positive integer',
                   'Set it to the shape of your data.')
  token_grid = _check_model(config)
  input_shape = (dataset.crop_size, dataset.crop_size, dataset.num_channels)
  if name != 'vit':
    input_shape = (dataset.num_frames,) + input_shape
  class_names = tuple(data.class_names(dataset))
  if data.kind(dataset) == 'medmnist' and len(class_names) != (
      dataset.num_classes):
    config_error('dataset_configs.num_classes', f'{dataset.dataset_name} has '
                 f'{len(class_names)} classes, not {dataset.num_classes}',
                 f'Set it to {len(class_names)}.')
  if len(class_names) != dataset.num_classes:
    config_error('dataset_configs.class_names', f'{len(class_names)} names for '
                 f'{dataset.num_classes} classes', 'Give one name per class.')
  fields = dict(config=config, model_name=name, input_shape=input_shape,
                token_grid=token_grid, num_tokens=_product(token_grid),
                num_classes=dataset.num_classes, class_names=class_names,
                init_checkpoint=_init_checkpoint(config))
  _check_batch_sizes(config)
  if not isinstance(config.ensemble_size, int) or config.ensemble_size < 1:
    config_error('ensemble_size', f'{config.ensemble_size!r} is not a '
                 'positive integer', 'Give the number of members, or 1 for '
                 'a single model.')
  if mode == 'model':
    config.lock()
    return Spec(**fields, notes=tuple(notes))
  if mode not in MODES:
    raise ValueError(f'Unknown mode {mode!r}: use one of {MODES}.')
  _check_init_from(config, fields['init_checkpoint'])
  _check_augmentation(config)
  _check_cross_validation(config)
  split_sizes = data.split_sizes(dataset, config.cross_validation)
  fields['split_sizes'] = split_sizes
  if mode == 'train':
    fields.update(_schedule(config, split_sizes['train'], notes))
    _check_masked_pretraining(config)
  config.lock()
  return Spec(**fields, notes=tuple(notes))


def _product(grid: tuple[int, ...]) -> int:
  total = 1
  for size in grid:
    total *= size
  return total if grid else 0


def _check_choice(field: str, value, choices) -> None:
  if value not in choices:
    config_error(field, f'unknown value {value!r}', f'Use one of {choices}.')


def _check_model(config: ml_collections.ConfigDict) -> tuple[int, ...]:
  """Checks `config.model`; returns the token grid."""
  model, dataset, name = config.model, config.dataset_configs, config.model_name
  if name == 'cnn3d':
    return ()
  if name in ('vtn', 'vidtr'):  # Each checks its own fields.
    {'vtn': vtn, 'vidtr': vidtr}[name].check_config(config)
    fh, fw = model.patches.size[:2]
    return (dataset.num_frames, dataset.crop_size // fh,
            dataset.crop_size // fw)
  attention_type = model.attention_config.type if name == 'vivit' else (
      'spacetime')
  _check_choice('model.attention_config.type', attention_type,
                encoder.ATTENTION_TYPES)
  _check_choice('model.classifier', model.classifier, vit.CLASSIFIERS)
  _check_choice('model.positional_embedding', model.positional_embedding,
                encoder.POSITIONAL_EMBEDDINGS)
  if model.hidden_size % model.num_heads:
    config_error('model.num_heads', f'{model.num_heads} heads do not divide '
                 f'hidden_size {model.hidden_size}',
                 'Choose a head count that divides the width.')
  size, frames = _check_stem(config)
  fh, fw = model.patches.size[:2]
  if size % fh or size % fw:
    config_error('model.patches.size', f'patch {fh}x{fw} does not divide '
                 f'the {size} x {size} input of the tubelets',
                 'Choose a patch size that divides the crop size (halved, '
                 'rounded down, per stem level).')
  spatial = (size // fh, size // fw)
  if name == 'vit':
    return spatial

  encoding = model.temporal_encoding_config
  _check_choice('model.temporal_encoding_config.method', encoding.method,
                vivit.TEMPORAL_ENCODINGS)
  if encoding.method == '3d_conv':
    if len(model.patches.size) != 3:
      config_error('model.patches.size', f'{tuple(model.patches.size)} is not '
                   'a tubelet (h, w, t)', 'Give three sizes.')
    ft = model.patches.size[2]
    if frames % ft:
      config_error('model.patches.size', f'tubelet depth t={ft} does not '
                   f'divide the {frames} frames of the tubelets\' input',
                   'Choose a tubelet depth that divides the number of frames '
                   '(halved, rounded down, per stem level).')
    temporal = frames // ft
  else:
    temporal = encoding.n_sampled_frames
    if not 0 < temporal <= frames:
      config_error('model.temporal_encoding_config.n_sampled_frames',
                   f'cannot sample {temporal} of {frames} frames',
                   'Choose 1 to num_frames frames (halved, rounded down, per '
                   'stem level).')

  no_class_token = {
      'factorized_self_attention_block': 'Model 3',
      'factorized_dot_product_attention': 'Model 4'}
  if attention_type in no_class_token and model.classifier == 'token':
    config_error('model.classifier', f'{no_class_token[attention_type]} '
                 f'({attention_type}) has no class token',
                 "Use classifier='gap'.")
  if attention_type == 'factorized_self_attention_block':
    _check_choice('model.attention_config.attention_order',
                  model.attention_config.attention_order,
                  encoder.ATTENTION_ORDERS)
  if attention_type == 'factorized_dot_product_attention' and (
      model.num_heads % 2):
    config_error('model.num_heads', 'Model 4 splits heads between space and '
                 f'time, but {model.num_heads} is odd',
                 'Use an even number of heads.')
  if attention_type == 'factorized_encoder':
    heads = model.temporal_transformer.num_heads
    if model.temporal_transformer.num_layers and model.hidden_size % heads:
      config_error('model.temporal_transformer.num_heads',
                   f'{heads} heads do not divide hidden_size '
                   f'{model.hidden_size}',
                   'Choose a head count that divides the width.')
  return (temporal,) + spatial


def _check_stem(config: ml_collections.ConfigDict) -> tuple[int, int]:
  """Checks `model.stem_features`; returns the (size, frames) after it."""
  model, dataset = config.model, config.dataset_configs
  levels = len(model.stem_features)
  if levels and config.model_name == 'vit':
    config_error('model.stem_features', 'the ViT has no convolutional stem',
                 'Leave it empty, or use a ViViT.')
  _check_choice('model.stem_norm', model.stem_norm, stem.NORMS)
  # Each level's pooling halves the sizes, rounding down as the 3D CNN's.
  size, frames = dataset.crop_size >> levels, dataset.num_frames >> levels
  if not (size and frames):
    config_error('model.stem_features', f'{levels} stem levels halve the '
                 f'input {levels} times, rounding down, which leaves nothing '
                 f'of crop_size {dataset.crop_size} x num_frames '
                 f'{dataset.num_frames}', 'Use fewer stem levels.')
  return size, frames


def _check_batch_sizes(config: ml_collections.ConfigDict) -> None:
  num_devices = jax.device_count()
  for field in ('batch_size', 'eval_batch_size'):
    if config[field] <= 0 or config[field] % num_devices:
      config_error(field, f'{config[field]} examples do not split evenly over '
                   f'the {num_devices} devices',
                   f'Use a positive multiple of {num_devices}.')


def _init_checkpoint(config: ml_collections.ConfigDict) -> Optional[str]:
  init_from = config.get('init_from')
  return (init_from.get('checkpoint_path') or None) if init_from else None


def _check_init_from(config: ml_collections.ConfigDict,
                     checkpoint: Optional[str]) -> None:
  """The pretrained checkpoint (`_init_checkpoint`'s) exists, before any
  data is read."""
  if not checkpoint:
    return
  _check_choice('init_from.checkpoint_format',
                config.init_from.get('checkpoint_format', 'auto'),
                CHECKPOINT_FORMATS)
  path = os.path.expanduser(checkpoint)
  if not os.path.exists(path):
    config_error('init_from.checkpoint_path', f'{path} does not exist',
                 'Give the path of a ViT .npz, a Hugging Face folder, a '
                 'vivit-jax workdir or a Scenic checkpoint.')


def _check_augmentation(config: ml_collections.ConfigDict) -> None:
  dataset = config.dataset_configs
  if data.kind(dataset) == 'video':  # Checked by `data.VideoSource`.
    return
  flips = config.augmentation.flip_axes
  allowed = (data.medmnist.default_flip_axes(dataset.dataset_name)
             if data.kind(dataset) == 'medmnist' else data.augment.FLIP_AXES)
  for axis in flips:
    if axis not in allowed:
      problem = (f'a flip along which can change the label of '
                 f'{dataset.dataset_name}' if axis in data.augment.FLIP_AXES
                 else f'not one of {data.augment.FLIP_AXES}')
      config_error('augmentation.flip_axes', f'has {axis!r}, {problem}',
                   f'Use a subset of {allowed}.')
  if config.augmentation.get('eval_flips') and not flips:
    config_error('augmentation.eval_flips', 'is set but flip_axes is empty',
                 f'Set augmentation.flip_axes to a subset of {allowed}.')
  if not 0 < config.augmentation.crop_min_scale <= 1:
    config_error('augmentation.crop_min_scale',
                 f'{config.augmentation.crop_min_scale} is not in (0, 1]',
                 'Give the smallest crop side as a share of the volume\'s, '
                 'e.g. 0.8, or 1 for no crops.')
  plane = tuple(config.augmentation.rotation_plane)
  sizes = dict(zip(data.augment.FLIP_AXES, (
      dataset.num_frames, dataset.crop_size, dataset.crop_size)))
  if plane and (len(plane) != 2 or len(set(plane)) != 2 or
                not set(plane) <= set(sizes)):
    config_error('augmentation.rotation_plane', f'{plane} is not two '
                 f'different axes of {data.augment.FLIP_AXES}',
                 "Give e.g. ('height', 'width'), or () for no rotations.")
  if plane and sizes[plane[0]] != sizes[plane[1]]:
    config_error('augmentation.rotation_plane', f'turns {plane[0]} '
                 f'({sizes[plane[0]]} voxels) into {plane[1]} '
                 f'({sizes[plane[1]]})', "Use ('height', 'width'), whose sizes "
                 'are equal.')


def _check_cross_validation(config: ml_collections.ConfigDict) -> None:
  num_folds = config.cross_validation.num_folds
  fold = config.cross_validation.fold
  if not num_folds:
    return
  if data.kind(config.dataset_configs) == 'video':
    config_error('cross_validation.num_folds', 'cross-validation deals '
                 'volumes held in memory into folds, not video files',
                 'Set it to 0 for videos.')
  if num_folds < 3:
    config_error('cross_validation.num_folds', f'{num_folds} folds leave no '
                 'fold to train on (one is held out, one validates)',
                 'Use 3 or more folds, or 0 for the set\'s own splits.')
  if not 0 <= fold < num_folds:
    config_error('cross_validation.fold', f'{fold} is not in [0, {num_folds})',
                 f'Give a fold from 0 to {num_folds - 1}.')


def _check_masked_pretraining(config: ml_collections.ConfigDict) -> None:
  options = config.masked_pretraining
  if options.num_epochs < 0:
    config_error('masked_pretraining.num_epochs', f'{options.num_epochs} is '
                 'negative', 'Give the epochs of pre-training, or 0 for none.')
  if not options.num_epochs:
    return
  model = config.model
  if config.model_name != 'vivit' or (
      model.attention_config.type == 'factorized_encoder') or (
          model.temporal_encoding_config.method != '3d_conv'):
    config_error('masked_pretraining.num_epochs', 'masked pre-training needs '
                 'a ViViT Model 1, 3 or 4 with tubelet embedding',
                 'Set it to 0, or use such a model.')
  if not 0 < options.mask_ratio < 1:
    config_error('masked_pretraining.mask_ratio', f'{options.mask_ratio} is '
                 'not in (0, 1)', 'Give the share of tokens to mask, e.g. 0.5.')
  if options.base_learning_rate <= 0:
    config_error('masked_pretraining.base_learning_rate',
                 f'{options.base_learning_rate} is not positive',
                 'Give a positive learning rate.')


def _schedule(config: ml_collections.ConfigDict, num_train: int,
              notes: list[str]) -> dict:
  """Checks the optimiser and schedule fields; returns the step counts."""
  _check_choice('optimizer', config.optimizer, OPTIMIZERS)
  lr_configs = config.lr_configs
  _check_choice('lr_configs.learning_rate_schedule',
                lr_configs.learning_rate_schedule, SCHEDULES)
  if lr_configs.base_learning_rate <= 0:
    config_error('lr_configs.base_learning_rate',
                 f'{lr_configs.base_learning_rate} is not positive',
                 'Give a positive learning rate.')
  if lr_configs.get('warmup_steps') is not None and lr_configs.get(
      'warmup_epochs'):
    config_error('lr_configs.warmup_steps', 'warm-up is given both in steps '
                 'and in epochs', 'Set one of warmup_steps and warmup_epochs, '
                 'and the other to None or 0.')
  if config.max_grad_norm is not None and config.max_grad_norm <= 0:
    config_error('max_grad_norm', f'{config.max_grad_norm} is not positive',
                 'Give a positive norm, or None to not clip.')
  if not 0 <= config.ema_decay < 1:
    config_error('ema_decay', f'{config.ema_decay} is not in [0, 1)',
                 'Give a decay such as 0.99, or 0 to evaluate the parameters '
                 'themselves.')
  if config.sam_rho < 0:
    config_error('sam_rho', f'{config.sam_rho} is negative',
                 'Give a radius such as 0.05, or 0 for plain gradients.')
  for field in ('num_training_epochs', 'num_training_steps',
                'log_summary_steps', 'log_eval_steps', 'checkpoint_steps',
                'max_checkpoints_to_keep'):
    if config.get(field) is not None and config[field] <= 0:
      config_error(field, f'{config[field]} is not positive',
                   'Give a positive number.')
  _check_choice('checkpoint_metric', config.checkpoint_metric,
                tuple(CHECKPOINT_METRICS))
  if config.batch_size > num_train:
    config_error('batch_size', f'{config.batch_size} is larger than the '
                 f'{num_train} training examples', 'Use a smaller batch.')
  steps_per_epoch = num_train // config.batch_size
  total_steps = (config.num_training_steps or
                 config.num_training_epochs * steps_per_epoch)
  if lr_configs.get('warmup_steps') is not None:
    warmup = lr_configs.warmup_steps
  else:
    warmup = round(lr_configs.warmup_epochs * steps_per_epoch)
  if warmup >= total_steps:
    notes.append(f'The warm-up ({warmup} steps) would not end before training '
                 f'does ({total_steps} steps): shortened to {total_steps // 2}'
                 ' steps, half the run.')
    warmup = total_steps // 2
  return {'steps_per_epoch': steps_per_epoch, 'total_steps': total_steps,
          'warmup_steps': warmup,
          'eval_every_steps': config.log_eval_steps or steps_per_epoch,
          'checkpoint_every_steps': config.checkpoint_steps or total_steps}
