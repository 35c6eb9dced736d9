"""Building blocks shared by the experiment configs."""

from typing import Optional, Sequence

import ml_collections
from ml_collections import config_dict


def vivit_model(hidden_size: int, num_layers: int, num_heads: int,
                mlp_dim: int, patch_size: Sequence[int],
                attention_type: str = 'spacetime', classifier: str = 'token',
                temporal_num_layers: int = 4) -> ml_collections.ConfigDict:
  """`config.model` of a ViViT, in Scenic's layout.

  Args:
    patch_size: tubelet (h, w, t), Scenic's `patches.size`.
    temporal_num_layers: L_t, the depth of Model 2's temporal encoder.
  """
  model = ml_collections.ConfigDict()
  model.hidden_size = hidden_size
  model.num_layers = num_layers
  model.num_heads = num_heads
  model.mlp_dim = mlp_dim
  model.patches = ml_collections.ConfigDict({'size': tuple(patch_size)})
  model.representation_size = None
  model.classifier = classifier
  model.positional_embedding = 'learned_1d'
  model.gelu_approximate = True  # tanh GELU, as ViT and Scenic.
  model.dropout_rate = 0.0
  model.attention_dropout_rate = 0.0
  model.stochastic_droplayer_rate = 0.0
  # Recompute each encoder block in the backward pass: memory for compute.
  model.remat = False
  model.attention_config = ml_collections.ConfigDict({
      'type': attention_type,
      'attention_order': 'space_time',
  })
  model.temporal_encoding_config = ml_collections.ConfigDict({
      'method': '3d_conv',
      'n_sampled_frames': 0,
  })
  model.temporal_transformer = ml_collections.ConfigDict({
      'num_layers': temporal_num_layers,
      'num_heads': num_heads,
      'mlp_dim': mlp_dim,
  })
  return model


def vtn_model(hidden_size: int, num_layers: int, num_heads: int,
              mlp_dim: int, patch_size: Sequence[int], *,
              temporal_num_layers: int, attention_window: int,
              max_frames: int, head_mlp_dim: int
              ) -> ml_collections.ConfigDict:
  """`config.model` of a VTN (`vivit_jax/models/vtn.py`): a ViT backbone of
  the given size, a Longformer as wide as it, and the MLP head.

  Args:
    patch_size: the backbone's (h, w).
    temporal_num_layers: Longformer layers (the paper: 1 or 3).
    attention_window: Longformer's window w (the paper: 32).
    max_frames: rows of the learned frame-position table.
    head_mlp_dim: the MLP head's hidden width.
  """
  model = ml_collections.ConfigDict()
  model.hidden_size = hidden_size
  model.num_layers = num_layers
  model.num_heads = num_heads
  model.mlp_dim = mlp_dim
  model.patches = ml_collections.ConfigDict({'size': tuple(patch_size)})
  model.representation_size = None
  model.classifier = 'token'  # The frame feature is the [CLS] output.
  model.gelu_approximate = True
  model.dropout_rate = 0.0
  model.attention_dropout_rate = 0.0
  model.stochastic_droplayer_rate = 0.0
  model.remat = False
  # True: the backbone only extracts features (VTN Table 5); needs
  # optimizer_configs.weight_decay = 0.
  model.freeze_backbone = False
  model.temporal_transformer = ml_collections.ConfigDict({
      'num_layers': temporal_num_layers,
      'num_heads': num_heads,
      'mlp_dim': mlp_dim,
      'attention_window': attention_window,
      'position_embedding': 'learned',  # Or 'sinusoidal', 'none' (Table 3).
      'max_frames': max_frames,
      'attention_dropout_rate': 0.1,  # Section 4.1.
  })
  model.head = ml_collections.ConfigDict({'mlp_dim': head_mlp_dim,
                                          'dropout_rate': 0.0})
  return model


def vidtr_model(hidden_size: int, num_layers: int, num_heads: int,
                mlp_dim: int, patch_size: Sequence[int], *,
                pooling: str = 'topk_std',
                pool_layers: Sequence[int] = (),
                pool_frames: Sequence[int] = ()
                ) -> ml_collections.ConfigDict:
  """`config.model` of a VidTr or C-VidTr (`vivit_jax/models/vidtr.py`).

  Args:
    patch_size: (s, s), the square patches of every frame.
    pooling: C-VidTr's down-sampling: 'topk_std', 'avg' or 'conv'.
    pool_layers, pool_frames: the layers that down-sample time and the
      frames tau each keeps; empty for VidTr.
  """
  model = ml_collections.ConfigDict()
  model.hidden_size = hidden_size
  model.num_layers = num_layers
  model.num_heads = num_heads
  model.mlp_dim = mlp_dim
  model.patches = ml_collections.ConfigDict({'size': tuple(patch_size)})
  model.representation_size = None
  model.gelu_approximate = True
  model.dropout_rate = 0.0
  model.attention_dropout_rate = 0.0
  model.temporal_pooling = ml_collections.ConfigDict({
      'method': pooling,
      'layers': tuple(pool_layers),
      'frames': tuple(pool_frames),
  })
  return model


def medmnist_dataset(name: str, size: int, num_classes: int,
                     data_dir: Optional[str] = None
                     ) -> ml_collections.ConfigDict:
  """`config.dataset_configs` of a MedMNIST 3D set: depth is time, 1 channel."""
  return ml_collections.ConfigDict({
      'dataset_name': name,
      'size': size,
      'data_dir': config_dict.FieldReference(data_dir, field_type=str),
      'num_classes': num_classes,
      'num_frames': size,
      'crop_size': size,
      'num_channels': 1,
  })


def kinetics400_dataset() -> ml_collections.ConfigDict:
  """The paper's Kinetics-400 input: 32 RGB frames of 224 x 224, 400 classes."""
  return ml_collections.ConfigDict({
      'dataset_name': 'kinetics400',
      'num_classes': 400,
      'num_frames': 32,
      'crop_size': 224,
      'num_channels': 3,
  })


def init_from(checkpoint_path: str, *, checkpoint_format: str = 'auto',
              kernel_init_method: str = 'central_frame',
              restore_positional_embedding: bool = True,
              positional_embed_size_change: str = 'resize_tile',
              init_temporal_transformer: bool = False,
              restore_output_projection: bool = True
              ) -> ml_collections.ConfigDict:
  """`config.init_from`: the pretrained checkpoint the model starts from
  (paper Section 3.4), in Scenic's layout; see `vivit_jax/pretrained.py`.

  DeiT and Hugging Face ViTs use the exact GELU: set
  `config.model.gelu_approximate = False` to compute what they computed (the
  load report says so when the checkpoint records its activation).

  Args:
    checkpoint_path: a ViT .npz file (vision_transformer or big_vision), a
      Hugging Face ViT/DeiT/ViViT folder, or the workdir of a vivit-jax run.
    checkpoint_format: 'auto' (from the path), 'vit_npz', 'huggingface' or
      'orbax'.
    kernel_init_method: how a 2D patch kernel becomes the tubelet kernel:
      'central_frame' (Eq. 9), 'average_frame' (Eq. 8, filter inflation) or
      'random' (the model's initialisation).
    restore_positional_embedding: load the positional embedding, repeated
      over time; False keeps the model's.
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

  Merge them with `config.update(common.training(...))`.

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
  if optimizer == 'sgd':
    config.optimizer_configs = ml_collections.ConfigDict({
        'momentum': momentum, 'weight_decay': weight_decay})
  else:
    config.optimizer_configs = ml_collections.ConfigDict({
        'beta1': 0.9, 'beta2': 0.999, 'epsilon': 1e-8,
        'weight_decay': weight_decay})
  config.lr_configs = ml_collections.ConfigDict({
      'learning_rate_schedule': schedule,
      'base_learning_rate': base_learning_rate,
      'warmup_epochs': warmup_epochs,
      # A warm-up in steps instead of epochs: set this, and warmup_epochs 0.
      'warmup_steps': config_dict.placeholder(int),
  })
  config.max_grad_norm = config_dict.placeholder(float)
  config.max_grad_norm = max_grad_norm
  config.batch_size = batch_size
  config.eval_batch_size = batch_size
  config.num_training_epochs = num_training_epochs
  # Overrides num_training_epochs when set.
  config.num_training_steps = config_dict.placeholder(int)
  config.rng_seed = 0

  config.log_summary_steps = 10
  # Validate (and checkpoint with the validation metrics) every this many
  # steps; None: at the end of each epoch. Training also validates at its end.
  config.log_eval_steps = config_dict.placeholder(int)
  # Extra checkpoints every this many steps; None: only at validation steps.
  config.checkpoint_steps = config_dict.placeholder(int)
  # Keeps the last this many checkpoints, and the best by checkpoint_metric.
  config.max_checkpoints_to_keep = 2
  config.checkpoint_metric = 'auc'  # Validation 'acc', 'auc' or 'loss'.
  return config
