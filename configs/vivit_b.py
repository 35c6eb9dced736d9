"""ViViT-B/16x2 (paper Section 4.1): ViT-Base, tubelet 16 x 16 x 2.

  python run.py --config=configs/vivit_b.py               # OrganMNIST3D, 64^3
  python run.py --config=configs/vivit_b.py:kinetics400   # the paper's input
"""

import ml_collections

from configs import common


def get_config(arg: str = 'organmnist3d') -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.experiment_name = f'vivit_b_16x2_{arg}'
  config.model_name = 'vivit'
  config.model_dtype_str = 'float32'

  # ViT-Base: L = 12, N_H = 12, d = 768, MLP 3072; Model 2 has L_t = 4.
  config.model = common.vivit_model(
      hidden_size=768, num_layers=12, num_heads=12, mlp_dim=3072,
      patch_size=(16, 16, 2), temporal_num_layers=4)

  if arg == 'kinetics400':
    config.dataset_configs = common.kinetics400_dataset()
  elif arg == 'organmnist3d':
    config.dataset_configs = common.medmnist_dataset('organmnist3d', size=64,
                                                     num_classes=11)
  else:
    raise ValueError(f"Unknown config argument {arg!r}: use 'organmnist3d' or "
                     "'kinetics400'.")
  return config
