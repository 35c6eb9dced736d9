"""Data: a config's data set as a source of batches (`sources`), MedMNIST 3D
files (`medmnist`), augmentation (`augment`) and the input pipeline to the
devices (`pipeline`).

Kinds of `config.dataset_configs.dataset_name`:
  - a MedMNIST 3D set ('adrenalmnist3d', 'organmnist3d', ...), at `size` 28
    or 64, found in `data_dir` or downloaded;
  - 'arrays': your own volumes in MedMNIST's npz format at `path`, with
    `num_classes` and optional `class_names`;
  - 'video': video files in class folders or listed in CSV files under
    `data_dir` (`video_source`).
"""

import os

import ml_collections
import numpy as np

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


def split_sizes(dataset_configs: ml_collections.ConfigDict) -> dict[str, int]:
  """{'train', 'val', 'test'} -> number of examples, without reading the
  examples (MedMNIST's metadata; the labels of an npz).

  Raises:
    DataError: the data set is unknown or its file cannot be read.
  """
  if kind(dataset_configs) == 'medmnist':
    return dict(medmnist.dataset_info(dataset_configs.dataset_name)[
        'n_samples'])
  if kind(dataset_configs) == 'video':  # Files listed, not yet probed.
    return {split: len(videos) for split, videos in
            video_lists.read_lists(dataset_configs)[1].items()}
  if kind(dataset_configs) == 'arrays':
    path = os.path.expanduser(dataset_configs.path or '')
    if not os.path.isfile(path):
      raise DataError(f'config.dataset_configs.path {path!r} is not a file: '
                      'give the path of your npz.')
    try:
      with np.load(path) as npz:
        return {split: len(npz[f'{split}_labels']) for split in SPLITS}
    except (OSError, ValueError, KeyError) as error:
      raise DataError(f'{path} cannot be read as a MedMNIST-format npz '
                      f'({error}).') from error
  raise DataError(
      f'Unknown data set {dataset_configs.get("dataset_name")!r}: use a '
      f'MedMNIST 3D set ({", ".join(medmnist.DATASETS)}), {ARRAYS!r} with '
      "dataset_configs.path, or 'video' with dataset_configs.data_dir.")


def create_source(config: ml_collections.ConfigDict):
  """The source of `config.dataset_configs` (see `sources`), data loaded.

  Raises:
    DataError: see `split_sizes`; a file that does not fit the config.
  """
  dataset_configs = config.dataset_configs
  if kind(dataset_configs) == 'video':
    return VideoSource(config)
  if kind(dataset_configs) == 'medmnist':
    return ArraySource(medmnist.load_splits(dataset_configs), config=config,
                       class_names=class_names(dataset_configs),
                       task=medmnist.task(dataset_configs.dataset_name))
  split_sizes(dataset_configs)  # Raises for an unknown set or a bad path.
  return ArraySource(
      read_npz(os.path.expanduser(dataset_configs.path), dataset_configs),
      config=config, class_names=class_names(dataset_configs),
      task='binary-class' if dataset_configs.num_classes == 2 else
      'multi-class')
