"""ViViT-1 of the term project (its Table II): the best of its Table I grid on
OrganMNIST3D (28^3, 11 organs), 304,907 parameters.

Width 64, 8 heads, 6 layers, MLP 4 x 64 = 256, tubelet 4 x 4 x 4 (343
tokens), global average pooling and a sinusoidal position code (its Keras
reference [4] counts no position parameters); AdamW at a constant 1e-3,
batch 16, 60 epochs, no augmentation.

  python run.py --config=configs/termproject_vivit1.py --mode=summary
  python run.py --config=configs/termproject_vivit1.py --workdir=/tmp/vivit1
"""

import ml_collections

from configs import common
from vivit_jax import data


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.experiment_name = 'termproject_vivit1_organmnist3d'
  config.model_name = 'vivit'
  config.model_dtype_str = 'float32'
  config.model = common.vivit_model(
      hidden_size=64, num_layers=6, num_heads=8, mlp_dim=256,
      patch_size=(4, 4, 4), classifier='gap')
  config.model.positional_embedding = 'sinusoidal_1d'
  # The term project names no dropout (its Section IV.A suggests it only as
  # future work), so none: config.model.attention_dropout_rate stays 0.

  config.dataset_configs = common.medmnist_dataset('organmnist3d', size=28,
                                                   num_classes=11)
  config.augmentation = data.augmentation_config('organmnist3d', 28)
  config.augmentation.max_shift = 0  # The paper does not augment.
  config.augmentation.intensity_jitter = 0.0

  # The paper found no schedule better than a constant rate (Section III.D).
  # It does not give AdamW's weight decay: PyTorch's default, 0.01.
  config.update(common.training(
      'adamw', base_learning_rate=1e-3, batch_size=16, num_training_epochs=60,
      schedule='constant', weight_decay=0.01))
  config.checkpoint_metric = 'acc'  # The paper reports top-1 accuracy.
  return config
