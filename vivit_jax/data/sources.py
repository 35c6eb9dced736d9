"""Data sources: what the training loop and the evaluator read.

A source holds a data set's splits and turns them into global batches:

  source.num_classes, source.class_names, source.task
  source.num_examples(split)    examples (volumes, videos) in a split
  source.train_batch(step)      the global training batch of `step`, a pure
                                function of (config.rng_seed, step)
  source.eval_batches(split)    every view of every example of a split
  source.skipped                unreadable examples, by file (videos)

This module holds `ArraySource`, whole splits of volumes in host memory (a
MedMNIST 3D set or your own arrays in MedMNIST's npz format), and
`read_npz`. `vivit_jax.data.create_source` picks the source of a config.
"""

import collections
import os
from typing import Iterator, Optional, Sequence

import ml_collections
import numpy as np

from vivit_jax.data import augment

SPLITS = ('train', 'val', 'test')


class DataError(Exception):
  """A data file is missing, corrupt or does not fit the config.

  The message is one line that names the file and the fix.
  """


def generator(seed: int, *stream: int) -> np.random.Generator:
  """An independent generator for each (seed, *stream)."""
  return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=stream))


def read_npz(path: str, dataset_configs: ml_collections.ConfigDict
             ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
  """Reads a MedMNIST-format npz: `{split}_images`, `{split}_labels`.

  Images are (N, D, H, W) or (N, D, H, W, C), uint8 in [0, 255] or floats in
  [0, 1]; labels (N,) or (N, 1) integers in [0, num_classes). The shapes are
  checked against `num_frames` (D), `crop_size` (H = W), `num_channels` and
  `num_classes` of `dataset_configs`.

  Returns:
    {'train', 'val', 'test'} -> (volumes (N, D, H, W, C) float32 in [0, 1],
    labels (N,) int32).
  Raises:
    DataError: the file is missing, unreadable or does not fit the config.
  """
  name = os.path.basename(path)
  try:
    with np.load(path) as npz:
      missing = [f'{split}_{kind}' for split in SPLITS
                 for kind in ('images', 'labels') if f'{split}_{kind}' not in npz]
      if missing:
        raise DataError(f'{path} has no {", ".join(missing)}: give an npz with '
                        "the keys {train,val,test}_{images,labels}.")
      splits = {split: (npz[f'{split}_images'], npz[f'{split}_labels'])
                for split in SPLITS}
  except (OSError, ValueError) as error:
    raise DataError(f'{path} cannot be read as an npz ({error}): fix '
                    'config.dataset_configs.') from error
  volumes = {}
  for split, (images, labels) in splits.items():
    if images.ndim == 4:
      images = images[..., None]
    if images.ndim != 5:
      raise DataError(f'{name}: {split}_images has shape {images.shape}, not '
                      '(N, D, H, W) or (N, D, H, W, C).')
    scale = 255 if images.dtype == np.uint8 else 1
    volumes[split] = (np.divide(images, scale, dtype=np.float32),
                      labels.reshape(-1).astype(np.int32))
  _check_shapes(dataset_configs, name, volumes)
  return volumes


def _check_shapes(dataset_configs: ml_collections.ConfigDict, name: str,
                  splits: dict[str, tuple[np.ndarray, np.ndarray]]) -> None:
  depth, height, width, channels = splits['train'][0].shape[1:]
  expected = {'num_frames': depth, 'crop_size': height,
              'num_channels': channels}
  for field, value in expected.items():
    if dataset_configs.get(field) != value:
      raise DataError(
          f'{name} holds {depth}x{height}x{width} volumes of {channels} '
          f'channel(s), but config.dataset_configs.{field} is '
          f'{dataset_configs.get(field)}: set it to {value}.')
  for split, (volumes, labels) in splits.items():
    if volumes.shape[1:] != (depth, height, width, channels):
      raise DataError(f'{name}: {split} volumes are {volumes.shape[1:]}, '
                      f'train volumes {(depth, height, width, channels)}.')
    if len(volumes) != len(labels):
      raise DataError(f'{name}: {len(volumes)} {split} volumes but '
                      f'{len(labels)} labels.')
    if len(labels) and not 0 <= labels.min() <= labels.max() < (
        dataset_configs.num_classes):
      raise DataError(
          f'{name}: {split} labels run from {labels.min()} to '
          f'{labels.max()}, outside [0, {dataset_configs.num_classes}): set '
          'config.dataset_configs.num_classes.')


class ArraySource:
  """Splits of volumes in host memory as batches of clips.

  A volume (D, H, W, C) is a clip whose D slices are its frames.
  """

  def __init__(self, splits: dict[str, tuple[np.ndarray, np.ndarray]], *,
               config: ml_collections.ConfigDict, class_names: Sequence[str],
               task: str):
    """
    Args:
      splits: see `read_npz`.
      config: uses `batch_size`, `eval_batch_size`, `rng_seed` and
        `augmentation`.
      class_names: one per class, in label order.
      task: 'binary-class' or 'multi-class' (MedMNIST's evaluator's names).
    """
    self._splits = splits
    self._config = config
    self.class_names = list(class_names)
    self.num_classes = len(self.class_names)
    self.task = task
    self.skipped = collections.Counter()
    self._class_weights = augment.balanced_class_weights(
        splits['train'][1], self.num_classes)

  def num_examples(self, split: str) -> int:
    return len(self._splits[split][1])

  def train_batch(self, step: int) -> dict:
    """The shuffled, augmented, mixed global batch of `step`.

    Epoch e = step // steps_per_epoch visits a permutation drawn from
    (seed, e); the last incomplete batch of an epoch is dropped. The batch
    depends on (seed, step) only, so a resumed run sees what an
    uninterrupted one would have.

    Returns:
      {'inputs': (B, D, H, W, C) float32, 'targets': (B, K) float32
      (smoothed, class-weighted, mixed), 'labels': (B,) int32}.
    """
    volumes, labels = self._splits['train']
    config, batch_size = self._config, self._config.batch_size
    epoch, index = divmod(step, len(labels) // batch_size)
    order = generator(config.rng_seed, epoch).permutation(len(labels))
    rows = order[index * batch_size:(index + 1) * batch_size]
    rng = generator(config.rng_seed, epoch, index)
    augmentation = config.augmentation
    inputs = augment.augment(rng, volumes, augmentation, rows)
    targets = augment.smooth_labels(
        np.eye(self.num_classes, dtype=np.float32)[labels[rows]],
        augmentation.label_smoothing)
    if config.get('balance_classes'):
      targets *= self._class_weights
    if augmentation.mixup_alpha > 0:
      inputs, targets = augment.mixup(rng, inputs, targets,
                                      augmentation.mixup_alpha)
    return {'inputs': inputs, 'targets': targets, 'labels': labels[rows]}

  def eval_batches(self, split: str, batch_size: Optional[int] = None
                   ) -> Iterator[dict]:
    """A whole split in order, once per view (`augment.eval_views`: the
    volumes as they are, and flipped where `augmentation.eval_flips`); each
    view's last batch padded with zeros to `batch_size` (default
    `config.eval_batch_size`).

    Yields:
      {'inputs': (B, D, H, W, C) float32, 'labels': (B,) int32,
      'mask': (B,) float32, 1 for examples and 0 for padding,
      'index': (B,) int32, the example each view is of}.
    """
    volumes, labels = self._splits[split]
    for axes in augment.eval_views(self._config.augmentation):
      yield from padded_batches(
          {'inputs': np.flip(volumes, axes), 'labels': labels,
           'index': np.arange(len(labels), dtype=np.int32)},
          batch_size or self._config.eval_batch_size)


def padded_batches(arrays: dict[str, np.ndarray], batch_size: int
                   ) -> Iterator[dict]:
  """Batches of the rows of `arrays` in order, with a 'mask' (1 for rows, 0
  for padding); the last batch padded with zeros to `batch_size`."""
  size = len(next(iter(arrays.values())))
  for start in range(0, size, batch_size):
    batch = {key: value[start:start + batch_size]
             for key, value in arrays.items()}
    rows = len(batch['inputs'])
    batch['mask'] = np.ones(rows, np.float32)
    yield {key: np.pad(value, [(0, batch_size - rows)] +
                       [(0, 0)] * (value.ndim - 1))
           for key, value in batch.items()}
