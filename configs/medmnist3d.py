"""The recommended ViViT recipe for any MedMNIST 3D set at 28^3 (or 64^3).

  python run.py --config=configs/medmnist3d.py:adrenalmnist3d \
      --workdir=workdirs/adrenal
  python run.py --config=configs/medmnist3d.py:vesselmnist3d \
      --config.dataset_configs.size=64 --workdir=workdirs/vessel64

The recipe is the same for every set; only what the set's metadata dictates
changes: its class count and the flips that keep its labels. A hybrid ViViT
Model 1 (joint space-time attention): the 3D CNN's three blocks as its stem
(Conv3D 3^3 with 32, 64 and 128 filters, BatchNorm, ReLU, 2^3 max pooling
rounding down: 28^3 -> 3^3), then tubelets of 1^3 (2^3 at 64^3) of width 64,
4 heads, 2 layers, MLP 256, global average pooling: 3^3 or 4^3 tokens;
dropout 0.1 and stochastic depth 0.1 in the transformer. AdamW at 3e-4 with
weight decay 0.05, 2 epochs of warm-up then cosine decay, batch 32, 40
epochs; in training, random flips along each axis whose flip keeps the set's
labels (all three for every set but OrganMNIST3D, which has none); no other
augmentation, no label smoothing. One model, keeping the checkpoint with its
highest validation AUC, which reads the test split once
(`--config.ensemble_size=3` trains three from their own seeds and classifies
by the mean of their probabilities, at three times the training). Chosen by
5-fold cross-validation over the train and val volumes (README, "A ViViT
recipe for MedMNIST 3D", which also gives the rule).
"""

import ml_collections

from vivit_jax import config_builders
from vivit_jax.data import dataset_configs
from vivit_jax.data import medmnist


def get_config(dataset: str = 'adrenalmnist3d') -> ml_collections.ConfigDict:
  if dataset not in medmnist.DATASETS:
    raise ValueError(f'Unknown MedMNIST 3D set {dataset!r}: use one of '
                     f'{medmnist.DATASETS}.')
  config = ml_collections.ConfigDict()
  config.experiment_name = f'medmnist3d_{dataset}'
  config.model_name = 'vivit'
  config.dataset_configs = dataset_configs.medmnist_dataset(dataset)
  # The size is a command-line choice: what depends on it follows it.
  size = config.dataset_configs.get_ref('size')
  config.dataset_configs.num_frames = size
  config.dataset_configs.crop_size = size
  tubelet = size // 28  # 1 at 28^3, 2 at 64^3, after the stem: 3^3, 4^3.
  config.model = config_builders.vivit_model(
      hidden_size=64, num_layers=2, num_heads=4, mlp_dim=256,
      patch_size=(tubelet, tubelet, tubelet), classifier='gap')
  config.model.stem_features = (32, 64, 128)
  config.model.stem_norm = 'batch'
  config.model.dropout_rate = 0.1
  config.model.stochastic_droplayer_rate = 0.1
  config.augmentation = dataset_configs.augmentation(dataset, 28)
  config.augmentation.update(max_shift=0, intensity_jitter=0.0)
  config.update(config_builders.training(
      'adamw', base_learning_rate=3e-4, batch_size=32, num_training_epochs=40,
      warmup_epochs=2.0, weight_decay=0.05))
  config.eval_batch_size = 64
  config.checkpoint_metric = 'auc'
  return config
