"""The term project's models on OrganMNIST3D (28^3, 11 organs), its Table II:

  vivit1  ViViT-1, the best of its Table I grid: width 64, 8 heads, 6
          layers, MLP 256, tubelet 4 x 4 x 4 (343 tokens), global average
          pooling and a sinusoidal position code (its Keras reference counts
          no position parameters); 304,907 parameters.
  vivit2  ViViT-1 wider and deeper: width 256, MLP 1024, 8 layers, AdamW at
          1e-4; 6,338,059 parameters.
  cnn3d   its 3D CNN (Section III.E): three Conv3D-BatchNorm-ReLU-MaxPool
          blocks of 32, 64 and 128 filters; AdamW at 1e-4 with weight decay
          1e-5; 279,435 parameters.

All train with AdamW at a constant rate, batch 16, 60 epochs, without
augmentation, as the paper does.

  python run.py --config=configs/termproject.py:vivit1 --mode=summary
  python run.py --config=configs/termproject.py:vivit1 --workdir=/tmp/vivit1
"""

import ml_collections

from vivit_jax import config_builders
from vivit_jax.data import dataset_configs

ARGS = ('vivit1', 'vivit2', 'cnn3d')


def get_config(arg: str = 'vivit1') -> ml_collections.ConfigDict:
  if arg not in ARGS:
    raise ValueError(f'Unknown config argument {arg!r}: use one of {ARGS}.')
  config = ml_collections.ConfigDict()
  config.experiment_name = f'termproject_{arg}_organmnist3d'
  config.model_dtype_str = 'float32'
  if arg == 'cnn3d':
    config.model_name = 'cnn3d'
    config.model = ml_collections.ConfigDict()
  else:
    width, layers = (64, 6) if arg == 'vivit1' else (256, 8)
    config.model_name = 'vivit'
    config.model = config_builders.vivit_model(
        hidden_size=width, num_layers=layers, num_heads=8, mlp_dim=4 * width,
        patch_size=(4, 4, 4), classifier='gap')
    config.model.positional_embedding = 'sinusoidal_1d'
    # The term project names no dropout (its Section IV.A suggests it only as
    # future work), so none: config.model.attention_dropout_rate stays 0.

  config.dataset_configs = dataset_configs.medmnist_dataset('organmnist3d')
  config.augmentation = dataset_configs.augmentation('organmnist3d', 28)
  config.augmentation.max_shift = 0  # The paper does not augment.
  config.augmentation.intensity_jitter = 0.0

  # The paper found no schedule better than a constant rate (Section III.D).
  # It does not give AdamW's weight decay for the ViViTs: PyTorch's default,
  # 0.01.
  config.update(config_builders.training(
      'adamw', base_learning_rate=1e-3 if arg == 'vivit1' else 1e-4,
      batch_size=16, num_training_epochs=60, schedule='constant',
      weight_decay=1e-5 if arg == 'cnn3d' else 0.01))
  config.checkpoint_metric = 'acc'  # The paper reports top-1 accuracy.
  return config
