"""A tiny ViViT (Model 1) trained for a few steps on AdrenalMNIST3D (28^3):
the end-to-end check of CI, under a minute on a CPU.

  python run.py --config=configs/tiny.py --workdir=/tmp/tiny
"""

import ml_collections

from vivit_jax import config_builders
from vivit_jax.data import dataset_configs


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.experiment_name = 'tiny_adrenalmnist3d'
  config.model_name = 'vivit'
  config.model_dtype_str = 'float32'
  config.model = config_builders.vivit_model(
      hidden_size=16, num_layers=1, num_heads=2, mlp_dim=32,
      patch_size=(7, 7, 7))
  config.dataset_configs = dataset_configs.medmnist_dataset('adrenalmnist3d')
  config.augmentation = dataset_configs.augmentation('adrenalmnist3d', 28)

  config.update(config_builders.training('adamw', base_learning_rate=1e-3,
                                         batch_size=8, num_training_epochs=1))
  config.eval_batch_size = 64
  config.num_training_steps = 6
  config.log_summary_steps = 1
  config.log_eval_steps = 3
  return config
