"""A small ViViT (Model 1) on your own volumes or clips: an npz in
MedMNIST's format, `{train,val,test}_images` of shape (N, D, H, W) or
(N, D, H, W, C), uint8 or floats in [0, 1], and `{train,val,test}_labels`
of shape (N,) or (N, 1), integers from 0.

  python run.py --config=configs/own_data.py:/path/to/volumes.npz \
      --workdir=workdirs/mine

The class count and the shapes are read from the file; class names are
numbers unless you give them (`--config.dataset_configs.class_names=
"('normal','tumour')"`). Flips are off: add the axes along which a flip
keeps your labels (`--config.augmentation.flip_axes="('height','width')"`).
The tubelet is the largest of 7, 4, 2 and 1 voxels that divides each axis;
the batch is 32 volumes, or fewer for fewer than 32 training volumes.
"""

import os

import ml_collections
import numpy as np

from vivit_jax import config_builders
from vivit_jax.data import dataset_configs


def _tubelet_side(size: int) -> int:
  return next(side for side in (7, 4, 2, 1) if size % side == 0)


def get_config(path: str = '') -> ml_collections.ConfigDict:
  if not os.path.isfile(path):
    raise ValueError(f'{path!r} is not a file: give your npz as '
                     '--config=configs/own_data.py:/path/to/volumes.npz.')
  with np.load(path) as npz:
    images = npz['train_images']
    labels = np.concatenate([npz[f'{split}_labels'].reshape(-1)
                             for split in ('train', 'val', 'test')])
  # 32, or the largest power of two of at most the training examples.
  batch_size = min(32, 2 ** int(np.log2(len(images))))
  _, depth, height, width = images.shape[:4]
  if height != width:
    raise ValueError(f'{path}: volumes are {height} x {width}; the models '
                     'take square slices: crop or pad them.')
  channels = images.shape[4] if images.ndim == 5 else 1

  config = ml_collections.ConfigDict()
  config.experiment_name = f'own_data_{os.path.basename(path)}'
  config.model_name = 'vivit'
  config.model = config_builders.vivit_model(
      hidden_size=64, num_layers=4, num_heads=4, mlp_dim=256,
      patch_size=(_tubelet_side(height), _tubelet_side(width),
                  _tubelet_side(depth)))
  config.dataset_configs = dataset_configs.arrays_dataset(
      path, num_classes=int(labels.max()) + 1, num_frames=depth,
      crop_size=height, num_channels=channels)
  config.augmentation = dataset_configs.augmentation('arrays', height)
  config.update(config_builders.training(
      'adamw', base_learning_rate=1e-3, batch_size=batch_size,
      num_training_epochs=20,
      warmup_epochs=1.0, weight_decay=1e-4))
  config.checkpoint_metric = 'loss'
  return config
