"""Building blocks shared by the experiment configs."""

from typing import Optional, Sequence

import ml_collections


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
  model.attention_config = ml_collections.ConfigDict({
      'type': attention_type,
      'attention_order': 'space_time',
  })
  model.temporal_encoding_config = ml_collections.ConfigDict({
      'method': '3d_conv',
      'kernel_init_method': 'central_frame_initializer',
      'n_sampled_frames': 0,
  })
  model.temporal_transformer = ml_collections.ConfigDict({
      'num_layers': temporal_num_layers,
      'num_heads': num_heads,
      'mlp_dim': mlp_dim,
  })
  return model


def medmnist_dataset(name: str, size: int, num_classes: int,
                     data_dir: Optional[str] = None
                     ) -> ml_collections.ConfigDict:
  """`config.dataset_configs` of a MedMNIST 3D set: depth is time, 1 channel."""
  return ml_collections.ConfigDict({
      'dataset_name': name,
      'size': size,
      'data_dir': data_dir,
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
