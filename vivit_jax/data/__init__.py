"""Data: a config's data set as a source of batches (`sources`), MedMNIST 3D
files (`medmnist`), augmentation (`augment`), cross-validation folds
(`folds`) and the input pipeline to the devices (`pipeline`).

Kinds of `config.dataset_configs.dataset_name`:
  - a MedMNIST 3D set ('adrenalmnist3d', 'organmnist3d', ...), at `size` 28
    or 64, found in `data_dir` or downloaded;
  - 'arrays': your own volumes in MedMNIST's npz format at `path`, with
    `num_classes` and optional `class_names`;
  - 'video': video files in class folders or listed in CSV files under
    `data_dir` (`video_source`).
"""

import os
from typing import Optional

import ml_collections
import numpy as np

from vivit_jax.data import folds
from vivit_jax.data import medmnist
from vivit_jax.data.sources import ArraySource
from vivit_jax.data.sources import DataError
from vivit_jax.data.sources import read_npz
from vivit_jax.data.sources import SPLITS
from vivit_jax.data import video_lists
from vivit_jax.data.video_source import prediction_views
from vivit_jax.data.video_source import VideoSource

ARRAYS = 'arrays'


def kind(dataset_configs: ml_collections.ConfigDict) -> str:
  """'medmnist', 'arrays', 'video' or 'synthetic' (no data: summary and
  bench)."""
  name = dataset_configs.get('dataset_name')
  if name in (ARRAYS, 'video'):
    return name
  if name in medmnist.DATASETS:
    return 'medmnist'
  return 'synthetic'


def class_names(dataset_configs: ml_collections.ConfigDict) -> list[str]:
  """The names of the classes in label order (numbers when not given, or
  for videos when `data_dir` is not set)."""
  if kind(dataset_configs) == 'medmnist':
    return medmnist.class_names(dataset_configs.dataset_name)
  if kind(dataset_configs) == 'video' and dataset_configs.get('data_dir'):
    return video_lists.read_lists(dataset_configs)[0]
  names = dataset_configs.get('class_names')
  return list(names) if names else [
      str(i) for i in range(dataset_configs.num_classes)]


def _npz_path(dataset_configs: ml_collections.ConfigDict) -> str:
  """The npz of a 'medmnist' or 'arrays' set (found, checked or downloaded).

  Raises:
    DataError: see `medmnist.find_file`; the path is not a file.
  """
  if kind(dataset_configs) == 'medmnist':
    return medmnist.find_file(dataset_configs)
  path = os.path.expanduser(dataset_configs.path or '')
  if not os.path.isfile(path):
    raise DataError(f'config.dataset_configs.path {path!r} is not a file: '
                    'give the path of your npz.')
  return path


def split_sizes(dataset_configs: ml_collections.ConfigDict,
                cross_validation: Optional[ml_collections.ConfigDict] = None
                ) -> dict[str, int]:
  """{'train', 'val', 'test'} -> number of examples, without reading the
  examples (MedMNIST's metadata; the labels of an npz); with
  `cross_validation.num_folds`, those of its run `cross_validation.fold`.

  Raises:
    DataError: the data set is unknown or its file cannot be read.
  """
  if kind(dataset_configs) == 'video':  # Files listed, not yet probed.
    return {split: len(videos) for split, videos in
            video_lists.read_lists(dataset_configs)[1].items()}
  if kind(dataset_configs) not in ('medmnist', ARRAYS):
    raise DataError(
        f'Unknown data set {dataset_configs.get("dataset_name")!r}: use a '
        f'MedMNIST 3D set ({", ".join(medmnist.DATASETS)}), {ARRAYS!r} with '
        "dataset_configs.path, or 'video' with dataset_configs.data_dir.")
  num_folds = cross_validation.num_folds if cross_validation else 0
  if kind(dataset_configs) == 'medmnist' and not num_folds:
    return dict(medmnist.dataset_info(dataset_configs.dataset_name)[
        'n_samples'])
  path = _npz_path(dataset_configs)
  try:
    with np.load(path) as npz:
      labels = {split: npz[f'{split}_labels'].reshape(-1) for split in SPLITS}
  except (OSError, ValueError, KeyError) as error:
    raise DataError(f'{path} cannot be read as a MedMNIST-format npz '
                    f'({error}).') from error
  if num_folds:
    return folds.split_sizes(labels['train'], labels['val'], num_folds,
                             cross_validation.fold)
  return {split: len(labels[split]) for split in SPLITS}


def create_source(config: ml_collections.ConfigDict):
  """The source of `config.dataset_configs` (see `sources`), data loaded;
  with `config.cross_validation.num_folds`, the splits of its run `fold`.

  Raises:
    DataError: see `split_sizes`; a file that does not fit the config.
  """
  dataset_configs = config.dataset_configs
  if kind(dataset_configs) == 'video':
    return VideoSource(config)
  split_sizes(dataset_configs)  # Raises for an unknown set or a bad path.
  if kind(dataset_configs) == 'medmnist':
    splits = medmnist.load_splits(dataset_configs)
    task = medmnist.task(dataset_configs.dataset_name)
  else:
    splits = read_npz(_npz_path(dataset_configs), dataset_configs)
    task = 'binary-class' if dataset_configs.num_classes == 2 else (
        'multi-class')
  cross_validation = config.cross_validation
  if cross_validation.num_folds:
    splits = folds.split(splits, cross_validation.num_folds,
                         cross_validation.fold)
  return ArraySource(splits, config=config,
                     class_names=class_names(dataset_configs), task=task)
