"""ViViT-B/16x2 (paper Section 4.1): ViT-Base, tubelet 16 x 16 x 2, trained
with the paper's recipe (Appendix A.2, Table 7).

  python run.py --config=configs/vivit_b.py               # OrganMNIST3D, 64^3
  python run.py --config=configs/vivit_b.py:kinetics400   # the paper's input
  python run.py --config=configs/vivit_b.py:video --workdir=/tmp/vivit_b \
      --config.dataset_configs.data_dir=/path/to/kinetics400 \
      --config.dataset_configs.num_classes=400          # video files

Starting from ImageNet weights (Section 3.4, central-frame initialisation of
the tubelet embedding):

  python run.py --config=configs/vivit_b.py --workdir=/tmp/vivit_b \
      --config.init_from.checkpoint_path=/path/to/ViT-B_16.npz
"""

import ml_collections
from ml_collections import config_dict

from vivit_jax import config_builders
from vivit_jax.data import dataset_configs
from vivit_jax.data import video_transforms


def get_config(arg: str = 'organmnist3d') -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.experiment_name = f'vivit_b_16x2_{arg}'
  config.model_name = 'vivit'
  config.model_dtype_str = 'float32'

  # ViT-Base: L = 12, N_H = 12, d = 768, MLP 3072; Model 2 has L_t = 4.
  config.model = config_builders.vivit_model(
      hidden_size=768, num_layers=12, num_heads=12, mlp_dim=3072,
      patch_size=(16, 16, 2), temporal_num_layers=4)

  if arg == 'kinetics400':
    config.dataset_configs = dataset_configs.kinetics400_dataset()
  elif arg == 'organmnist3d':
    config.dataset_configs = dataset_configs.medmnist_dataset('organmnist3d',
                                                              size=64)
    config.augmentation = dataset_configs.augmentation('organmnist3d', 64)
  elif arg == 'video':
    # Video files (data_dir/{train,val,test}/CLASS/*, or layout='csv'):
    # 32 frames at stride 2, shorter side 256, 224 crops, 4 views (Sec. 4.1);
    # Table 7's K400 augmentation. Epic Kitchens / SSv2 add RandAugment
    # (2 layers, magnitude 15 / 20), label smoothing 0.2 / 0.3 and mixup
    # 0.1 / 0.3: set them in config.augmentation.
    config.dataset_configs = dataset_configs.video_dataset(
        num_classes=400, num_frames=32, stride=2, crop_size=224,
        min_resize=256, num_test_clips=4, num_test_crops=1)
    config.augmentation = video_transforms.augmentation_config()
  else:
    raise ValueError(f"Unknown config argument {arg!r}: use 'organmnist3d', "
                     "'kinetics400' or 'video'.")

  # The checkpoint to start from, e.g. a ViT-B/16 .npz; None: random init.
  config.init_from = config_builders.init_from(config_dict.placeholder(str))

  # Table 7: synchronous SGD, momentum 0.9, cosine schedule after 2.5 epochs
  # of linear warm-up, base rate 0.1, batch 64, 30 epochs (Kinetics), and
  # gradients clipped at global norm 1 as in Scenic's ViViT configs.
  config.update(config_builders.training(
      'sgd', base_learning_rate=0.1, batch_size=64, num_training_epochs=30,
      schedule='cosine', warmup_epochs=2.5, momentum=0.9, max_grad_norm=1.0))
  return config
