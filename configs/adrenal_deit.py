"""The paper's Table 1 (Section 3.4) on AdrenalMNIST3D (28^3): ViViT Model 1
with DeiT-Tiny's encoder, initialised from its ImageNet weights with the
tubelet kernel from the central frame (Eq. 9), averaged over frames (Eq. 8,
filter inflation) or random.

  python run.py --config=configs/adrenal_deit.py:central_frame \
      --workdir=/tmp/adrenal_deit_central_frame

DeiT-Tiny: 12 layers, 3 heads, width 192, MLP 768, exact GELU. Tubelets of
14 x 14 x 4 voxels (2 x 2 x 7 = 28 tokens, so that a 12-layer encoder trains
in minutes on a CPU): loading sums the RGB kernel over its channels, resizes
it from 16 x 16 to 14 x 14 and the 14 x 14 positional embedding to 2 x 2,
then repeats it over the 7 time steps.
"""

import os

import ml_collections

from vivit_jax import config_builders
from vivit_jax.data import dataset_configs


# The DeiT-Tiny weights beside this repository (../shared/weights), found
# from this file wherever the command runs; override with
# --config.init_from.checkpoint_path.
DEIT_TINY = os.path.join(
    os.path.dirname(os.path.abspath(__file__)), os.pardir, os.pardir,
    'shared', 'weights', 'deit_tiny_patch16_224', 'deit_tiny_patch16_224.npz')


def get_config(kernel_init_method: str = 'central_frame'
               ) -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.experiment_name = f'adrenal_deit_{kernel_init_method}'
  config.model_name = 'vivit'
  config.model_dtype_str = 'float32'
  config.model = config_builders.vivit_model(
      hidden_size=192, num_layers=12, num_heads=3, mlp_dim=768,
      patch_size=(14, 14, 4))
  config.model.gelu_approximate = False
  config.dataset_configs = dataset_configs.medmnist_dataset('adrenalmnist3d')
  config.augmentation = dataset_configs.augmentation('adrenalmnist3d', 28)
  config.init_from = config_builders.init_from(DEIT_TINY,
                                      kernel_init_method=kernel_init_method)
  config.update(config_builders.training(
      'adamw', base_learning_rate=3e-4, batch_size=32, num_training_epochs=10,
      warmup_epochs=1.0, weight_decay=1e-4))
  config.eval_batch_size = 64
  return config
