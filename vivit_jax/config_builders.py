"""Building blocks of experiment configs, and every default in one place.

Configs are `ml_collections.ConfigDict`s in Scenic's layout:

  config = ml_collections.ConfigDict()
  config.model = config_builders.vivit_model(hidden_size=64, num_layers=4,
                                             num_heads=4, mlp_dim=256,
                                             patch_size=(7, 7, 4))
  config.dataset_configs = dataset_configs.medmnist_dataset('adrenalmnist3d')
  config.augmentation = dataset_configs.augmentation('adrenalmnist3d', 28)
  config.update(config_builders.training('adamw', 1e-3, batch_size=32,
                                         num_training_epochs=20))

(`dataset_configs` is `vivit_jax.data.dataset_configs`: the data set's
fields, and its augmentation's defaults.)

A field a config leaves out takes its value from `DEFAULTS` (and the model's
from `MODEL_DEFAULTS`), applied by `with_defaults` when the config is checked.
"""

import copy
from typing import Optional, Sequence

import ml_collections
from ml_collections import config_dict

from vivit_jax import data
from vivit_jax.data import dataset_configs


OPTIMIZER_DEFAULTS = {
    'sgd': {'momentum': 0.9, 'weight_decay': 0.0},
    'adamw': {'beta1': 0.9, 'beta2': 0.999, 'epsilon': 1e-8,
              'weight_decay': 0.0},
}

# The model fields a config may leave out, for each model family.
MODEL_DEFAULTS = {
    'vivit': {
        'patches': {'size': (16, 16, 2)},
        'representation_size': None,
        'classifier': 'token',
        'positional_embedding': 'learned_1d',
        'gelu_approximate': True,  # tanh GELU, as ViT and Scenic.
        'dropout_rate': 0.0,
        'attention_dropout_rate': 0.0,
        'stochastic_droplayer_rate': 0.0,
        # Recompute each encoder block in the backward pass: memory for
        # compute.
        'remat': False,
        'attention_config': {'type': 'spacetime',
                             'attention_order': 'space_time'},
        # Filters of a convolutional stem's levels before the tubelets
        # (`models/stem.py`); () for none, as Scenic's ViViT.
        'stem_features': (),
        # The stem's 'layer' (LayerNorm, GELU) or 'batch' (BatchNorm, ReLU:
        # the 3D CNN's blocks) normalisation.
        'stem_norm': 'layer',
        'temporal_encoding_config': {'method': '3d_conv',
                                     'n_sampled_frames': 0},
        # num_heads and mlp_dim None: the spatial encoder's.
        'temporal_transformer': {'num_layers': 4, 'num_heads': None,
                                 'mlp_dim': None},
    },
    'cnn3d': {'features': (32, 64, 128)},
}
MODEL_DEFAULTS['vit'] = MODEL_DEFAULTS['vivit']
_TRAINING_DEFAULTS = {
    'representation_size': None, 'gelu_approximate': True,
    'dropout_rate': 0.0, 'attention_dropout_rate': 0.0}
MODEL_DEFAULTS['vtn'] = {
    **_TRAINING_DEFAULTS, 'classifier': 'token',
    'stochastic_droplayer_rate': 0.0, 'remat': False,
    # True: the backbone only extracts features (VTN Table 5); needs
    # optimizer_configs.weight_decay = 0.
    'freeze_backbone': False,
    # num_heads and mlp_dim None: the backbone's.
    'temporal_transformer': {'num_layers': 3, 'num_heads': None,
                             'mlp_dim': None, 'attention_window': 32,
                             # Or 'sinusoidal', 'none' (Table 3).
                             'position_embedding': 'learned',
                             'attention_dropout_rate': 0.1},  # Sec. 4.1.
    'head': {'dropout_rate': 0.0},
}
MODEL_DEFAULTS['vidtr'] = {
    **_TRAINING_DEFAULTS,
    'temporal_pooling': {'method': 'topk_std', 'layers': (), 'frames': ()},
}


def _merge(defaults: dict, values: dict) -> dict:
  """`values` over `defaults`, recursively; keys of either are kept."""
  merged = copy.deepcopy(defaults)
  for key, value in values.items():
    if isinstance(value, dict) and isinstance(merged.get(key), dict):
      merged[key] = _merge(merged[key], value)
    else:
      merged[key] = value
  return merged


def _resolve_sequences(value):
  """`value` with the field references inside its tuples and lists (which
  `copy_and_resolve_references` leaves) replaced by their values, so that
  e.g. a tubelet size can follow `dataset_configs.size`."""
  if isinstance(value, dict):
    return {key: _resolve_sequences(item) for key, item in value.items()}
  if isinstance(value, (tuple, list)):
    return type(value)(_resolve_sequences(item) for item in value)
  if isinstance(value, config_dict.FieldReference):
    return value.get()
  return value


_VIVIT = MODEL_DEFAULTS['vivit']
_VIDTR_POOLING = MODEL_DEFAULTS['vidtr']['temporal_pooling']


def vivit_model(hidden_size: int, num_layers: int, num_heads: int,
                mlp_dim: int, patch_size: Sequence[int],
                attention_type: str = _VIVIT['attention_config']['type'],
                classifier: str = _VIVIT['classifier'],
                temporal_num_layers: int = _VIVIT['temporal_transformer'][
                    'num_layers']) -> ml_collections.ConfigDict:
  """`config.model` of a ViViT, in Scenic's layout; the fields not given
  here at their `MODEL_DEFAULTS`.

  Args:
    patch_size: tubelet (h, w, t), Scenic's `patches.size`.
    temporal_num_layers: L_t, the depth of Model 2's temporal encoder, whose
      heads and MLP are the spatial encoder's.
  """
  return ml_collections.ConfigDict(_merge(_VIVIT, {
      'hidden_size': hidden_size, 'num_layers': num_layers,
      'num_heads': num_heads, 'mlp_dim': mlp_dim,
      'patches': {'size': tuple(patch_size)}, 'classifier': classifier,
      'attention_config': {'type': attention_type},
      'temporal_transformer': {'num_layers': temporal_num_layers,
                               'num_heads': num_heads, 'mlp_dim': mlp_dim},
  }))


def vtn_model(hidden_size: int, num_layers: int, num_heads: int,
              mlp_dim: int, patch_size: Sequence[int], *,
              temporal_num_layers: int, attention_window: int,
              max_frames: int, head_mlp_dim: int
              ) -> ml_collections.ConfigDict:
  """`config.model` of a VTN (`vivit_jax.models.vtn`): a ViT backbone of
  the given size, a Longformer as wide as it, and the MLP head; the fields
  not given here at their `MODEL_DEFAULTS`.

  Args:
    patch_size: the backbone's (h, w).
    temporal_num_layers: Longformer layers (the paper: 1 or 3).
    attention_window: Longformer's window w (the paper: 32).
    max_frames: rows of the learned frame-position table.
    head_mlp_dim: the MLP head's hidden width.
  """
  return ml_collections.ConfigDict(_merge(MODEL_DEFAULTS['vtn'], {
      'hidden_size': hidden_size, 'num_layers': num_layers,
      'num_heads': num_heads, 'mlp_dim': mlp_dim,
      'patches': {'size': tuple(patch_size)},
      'temporal_transformer': {
          'num_layers': temporal_num_layers, 'num_heads': num_heads,
          'mlp_dim': mlp_dim, 'attention_window': attention_window,
          'max_frames': max_frames},
      'head': {'mlp_dim': head_mlp_dim},
  }))


def vidtr_model(hidden_size: int, num_layers: int, num_heads: int,
                mlp_dim: int, patch_size: Sequence[int], *,
                pooling: str = _VIDTR_POOLING['method'],
                pool_layers: Sequence[int] = _VIDTR_POOLING['layers'],
                pool_frames: Sequence[int] = _VIDTR_POOLING['frames']
                ) -> ml_collections.ConfigDict:
  """`config.model` of a VidTr or C-VidTr (`vivit_jax.models.vidtr`); the
  fields not given here at their `MODEL_DEFAULTS`.

  Args:
    patch_size: (s, s), the square patches of every frame.
    pooling: C-VidTr's down-sampling: 'topk_std', 'avg' or 'conv'.
    pool_layers, pool_frames: the layers that down-sample time and the
      frames tau each keeps; empty for VidTr.
  """
  return ml_collections.ConfigDict(_merge(MODEL_DEFAULTS['vidtr'], {
      'hidden_size': hidden_size, 'num_layers': num_layers,
      'num_heads': num_heads, 'mlp_dim': mlp_dim,
      'patches': {'size': tuple(patch_size)},
      'temporal_pooling': {'method': pooling, 'layers': tuple(pool_layers),
                           'frames': tuple(pool_frames)},
  }))


def init_from(checkpoint_path: str, *, checkpoint_format: str = 'auto',
              kernel_init_method: str = 'central_frame',
              restore_positional_embedding: bool = True,
              positional_embed_size_change: str = 'resize_tile',
              init_temporal_transformer: bool = False,
              restore_output_projection: bool = True
              ) -> ml_collections.ConfigDict:
  """`config.init_from`: the pretrained checkpoint the model starts from
  (paper Section 3.4), in Scenic's layout; see `vivit_jax.pretrained`.

  DeiT and Hugging Face ViTs use the exact GELU: set
  `config.model.gelu_approximate = False` to compute what they computed (the
  load report says so when the checkpoint records its activation).

  Args:
    checkpoint_path: a ViT .npz file (vision_transformer or big_vision), a
      Hugging Face ViT/DeiT/ViViT folder, the workdir of a vivit-jax run, or
      a Scenic ViT/ViViT checkpoint: a checkpoint_<step> file (Flax msgpack)
      or a folder of them, whose latest step is read. A ViViT checkpoint
      initialises a ViViT of its own kind (Model 1-4) parameter by
      parameter.
    checkpoint_format: 'auto' (from the path), 'vit_npz', 'huggingface',
      'orbax' or 'scenic' (which also reads files with other names).
    kernel_init_method: how a 2D patch kernel becomes the tubelet kernel:
      'central_frame' (Eq. 9), 'average_frame' (Eq. 8, filter inflation) or
      'random' (the model's initialisation).
    restore_positional_embedding: load the positional embedding: an
      image's is repeated over time, a video's with another number of time
      steps interpolated linearly over time, as Scenic does; False keeps the
      model's.
    positional_embed_size_change: when the spatial token grids differ,
      'resize_tile' resizes the embedding bilinearly before repeating it over
      time; 'tile' raises an error instead.
    init_temporal_transformer: Model 2: initialise the temporal encoder from
      the checkpoint's first layers (else it keeps its initialisation).
      Model 3: copy each layer's attention into the temporal attention (else
      its output projection is zeroed: Eq. 5 starts as a residual).
    restore_output_projection: load the output layer when the class counts
      match (it is never loaded when they differ).
  """
  return ml_collections.ConfigDict({
      'checkpoint_path': checkpoint_path,
      'checkpoint_format': checkpoint_format,
      'kernel_init_method': kernel_init_method,
      'restore_positional_embedding': restore_positional_embedding,
      'positional_embed_size_change': positional_embed_size_change,
      'init_temporal_transformer': init_temporal_transformer,
      'restore_output_projection': restore_output_projection,
  })


def training(optimizer: str, base_learning_rate: float, batch_size: int,
             num_training_epochs: int, *, schedule: str = 'cosine',
             warmup_epochs: float = 0.0, momentum: float = 0.9,
             weight_decay: float = 0.0,
             max_grad_norm: Optional[float] = None
             ) -> ml_collections.ConfigDict:
  """The training fields of a config, in Scenic's layout.

  Merge them with `config.update(config_builders.training(...))`.

  Args:
    optimizer: 'sgd' (with `momentum`) or 'adamw'.
    base_learning_rate: the peak learning rate, reached after warm-up.
    batch_size: the global batch, split over all devices of all hosts.
    num_training_epochs: passes over the training set.
    schedule: 'cosine' (decay to 0 at the last step) or 'constant', each
      after `warmup_epochs` of linear warm-up from 0.
    weight_decay: decoupled for AdamW; added to the gradient (L2) for SGD.
    max_grad_norm: clip gradients to this global norm; None does not clip.
  """
  config = ml_collections.ConfigDict()
  config.optimizer = optimizer
  config.optimizer_configs = ml_collections.ConfigDict(
      dict(OPTIMIZER_DEFAULTS[optimizer], weight_decay=weight_decay))
  if optimizer == 'sgd':
    config.optimizer_configs.momentum = momentum
  config.lr_configs = ml_collections.ConfigDict({
      'learning_rate_schedule': schedule,
      'base_learning_rate': base_learning_rate,
      'warmup_epochs': warmup_epochs,
      # A warm-up in steps instead of epochs: set this, and warmup_epochs 0.
      'warmup_steps': config_dict.placeholder(int),
  })
  config.max_grad_norm = config_dict.placeholder(float)
  config.max_grad_norm = max_grad_norm
  # Evaluates (and checkpoints) an exponential moving average of the
  # parameters with this decay per step (0: the parameters themselves);
  # the decay is min(ema_decay, (1 + step) / (10 + step)), so that the
  # average forgets its initial values within the first steps.
  config.ema_decay = 0.0
  # Sharpness-aware minimisation: the radius rho of its perturbation (the
  # paper: 0.05; 0: plain gradients). Each step then costs two passes.
  config.sam_rho = 0.0
  # Weights each class's term of the cross-entropy by N / (K n_k), n_k its
  # count among the N training examples (`augment.balanced_class_weights`),
  # by scaling the targets: for imbalanced sets.
  config.balance_classes = False
  # Masked volume modelling on the training volumes before training
  # (`vivit_jax.masked_modeling`; ViViT Models 1, 3 and 4): num_epochs 0
  # turns it off; the share of tokens masked, whether they are masked as
  # tubes through every t, and AdamW's peak rate and warm-up.
  config.masked_pretraining = ml_collections.ConfigDict({
      'num_epochs': 0, 'mask_ratio': 0.5, 'tube_masking': False,
      'base_learning_rate': 1e-3, 'warmup_epochs': 1.0})
  config.batch_size = batch_size
  config.eval_batch_size = batch_size
  config.num_training_epochs = num_training_epochs
  # Overrides num_training_epochs when set.
  config.num_training_steps = config_dict.placeholder(int)
  config.rng_seed = 0
  # Trains this many members, each from its own seed in WORKDIR/members/k,
  # and classifies by the mean of their probabilities (`vivit_jax.ensemble`);
  # 1: a single model.
  config.ensemble_size = 1

  config.log_summary_steps = 10
  # Validate (and checkpoint with the validation metrics) every this many
  # steps; None: at the end of each epoch. Training also validates at its end.
  config.log_eval_steps = config_dict.placeholder(int)
  # Extra checkpoints every this many steps; None: only at validation steps.
  config.checkpoint_steps = config_dict.placeholder(int)
  # Keeps the last this many checkpoints, and the best by checkpoint_metric.
  config.max_checkpoints_to_keep = 2
  config.checkpoint_metric = 'auc'  # Validation 'acc', 'auc' or 'loss'.
  # num_folds > 0: run `fold` of a K-fold cross-validation over the train
  # and val splits (`vivit_jax.data.folds`), for comparing configs on more
  # examples than the val split holds; the test split is not evaluated.
  config.cross_validation = ml_collections.ConfigDict(
      {'num_folds': 0, 'fold': 0})
  return config


# Every top-level field a config may leave out. The training fields are
# `training`'s defaults for AdamW at 1e-3, batch 32, 10 epochs.
DEFAULTS = {
    'experiment_name': None,
    'model_name': 'vivit',
    'model_dtype_str': 'float32',
    'model': {},
    'dataset_configs': {},
    'init_from': None,
    **training('adamw', base_learning_rate=1e-3, batch_size=32,
               num_training_epochs=10).to_dict(),
}

def with_defaults(config: ml_collections.ConfigDict
                  ) -> tuple[ml_collections.ConfigDict, list[str]]:
  """`config` with every field it leaves out at its default.

  Returns:
    The completed config (a new one), and notes on fields of `config` that
    its choices leave unused (e.g. AdamW's betas with `optimizer='sgd'`).
  """
  values = _resolve_sequences(config.copy_and_resolve_references().to_dict())
  full = _merge(DEFAULTS, values)
  notes = []
  name = full['model_name']
  full['model'] = _merge(MODEL_DEFAULTS.get(name, {}), full['model'])
  temporal = full['model'].get('temporal_transformer')
  if temporal:
    for field in ('num_heads', 'mlp_dim'):
      if temporal[field] is None:
        temporal[field] = full['model'].get(field)
  optimizer_defaults = OPTIMIZER_DEFAULTS.get(full['optimizer'])
  if optimizer_defaults is not None:
    given = values.get('optimizer_configs', {})
    unused = sorted(set(given) - set(optimizer_defaults))
    if unused:
      notes.append(f'config.optimizer_configs.{{{", ".join(unused)}}} are not '
                   f'used by optimizer {full["optimizer"]!r}.')
    full['optimizer_configs'] = {
        key: given.get(key, default)
        for key, default in optimizer_defaults.items()}
  if full.get('eval_batch_size') is None:
    full['eval_batch_size'] = full['batch_size']
  dataset = full['dataset_configs']
  kind = data.kind(ml_collections.ConfigDict(dataset))
  if 'crop_size' in dataset and kind != 'video' and (
      kind in ('medmnist', data.ARRAYS) or 'augmentation' not in full):
    # With the fields a config leaves out (or that came after its workdir).
    full['augmentation'] = _merge(dataset_configs.augmentation(
        dataset.get('dataset_name', ''),
        dataset.get('size', dataset['crop_size'])).to_dict(),
                                  full.get('augmentation', {}))
  return ml_collections.ConfigDict(full), notes
