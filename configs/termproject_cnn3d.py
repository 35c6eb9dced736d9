"""The term project's 3D CNN (its Section III.E, Table II) on OrganMNIST3D:
three Conv3D-BatchNorm-ReLU-MaxPool blocks of 32, 64 and 128 filters, 279,435
parameters; AdamW at 1e-4 with weight decay 1e-5, trained as ViViT-1.

  python run.py --config=configs/termproject_cnn3d.py --workdir=/tmp/cnn3d
"""

import ml_collections

from configs import termproject_vivit1


def get_config() -> ml_collections.ConfigDict:
  config = termproject_vivit1.get_config()
  config.experiment_name = 'termproject_cnn3d_organmnist3d'
  config.model_name = 'cnn3d'
  config.model = ml_collections.ConfigDict()
  config.lr_configs.base_learning_rate = 1e-4
  config.optimizer_configs.weight_decay = 1e-5
  return config
