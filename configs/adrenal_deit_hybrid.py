"""DeiT-Tiny's encoder after the recipe's convolutional stem, on
AdrenalMNIST3D (28^3): the issue's "start from the DeiT-Tiny weights"
ingredient in the recipe, compared with it by cross-validation (README, "A
ViViT recipe for MedMNIST 3D").

  python run.py --config=configs/adrenal_deit_hybrid.py:pretrained \
      --config.dataset_configs.data_dir=../shared/data --workdir=/tmp/hybrid

One model of configs/medmnist3d.py (its stem of the 3D CNN's three blocks,
1^3 tubelets over the 3^3 features, optimiser, schedule and regularisation;
`ensemble_size` 1) whose transformer is DeiT-Tiny's: 12 layers, 3 heads,
width 192, MLP 768, exact GELU; 5.6M parameters, 27 tokens.

  pretrained: the 12 layers, the final norm and the positional embedding
    (resized from 14 x 14 to 3 x 3, repeated over the 3 slices) from
    DeiT-Tiny's ImageNet weights (`configs/adrenal_deit.py` says where they
    are); the stem and the tubelet embedding, which read the stem's 128
    features rather than pixels, start from their random initialisation, as
    the hybrid ViTs of Dosovitskiy et al. (Section 3.1).
  scratch: the same model from random weights, the control.
"""

import os

import ml_collections

import vivit_jax
from vivit_jax import config_builders

INITIALISATIONS = ('pretrained', 'scratch')
_HERE = os.path.dirname(os.path.abspath(__file__))


def get_config(initialisation: str = 'pretrained'
               ) -> ml_collections.ConfigDict:
  if initialisation not in INITIALISATIONS:
    raise ValueError(f'Unknown initialisation {initialisation!r}: use one of '
                     f'{INITIALISATIONS}.')
  config = vivit_jax.load_config(
      os.path.join(_HERE, 'medmnist3d.py:adrenalmnist3d'))
  config.experiment_name = f'adrenal_deit_hybrid_{initialisation}'
  config.ensemble_size = 1
  config.model.update(hidden_size=192, num_layers=12, num_heads=3,
                      mlp_dim=768, gelu_approximate=False)
  if initialisation == 'pretrained':
    deit_tiny = vivit_jax.load_config(os.path.join(_HERE, 'adrenal_deit.py'))
    config.init_from = config_builders.init_from(
        deit_tiny.init_from.checkpoint_path, kernel_init_method='random')
  return config
