"""MedMNIST 3D volumes as one-channel clips, from file to devices.

A volume (D, H, W) is a clip whose frames are its D slices: batches hold
`inputs` (batch, T = D, H, W, 1) float32 in [0, 1], channels-last like the
models. Whole splits live in host memory; training batches are a pure function
of (seed, epoch, step), prepared ahead in background threads.

  DataError                        one-line, actionable message; run.py exits.
  DATASETS                         the six MedMNIST 3D names.
  dataset_info(name)               medmnist's INFO entry.
  load_splits(dataset_configs)     {'train'|'val'|'test': (volumes, labels)}.
  default_flip_axes(name)          axes a flip cannot change the label along.
  augmentation_config(name, size)  `config.augmentation` with safe defaults.
  augment(rng, volumes, config, rows)   shift, flips, intensity jitter.
  smooth_labels, mixup             Eqs. 11, 12 (from data/augment.py).
  train_batches(...)               one shuffled, augmented epoch.
  eval_batches(...)                a whole split in order, padded and masked.
  shard_for_host(batch)            this process's rows of a global batch.
  prefetch_to_devices(batches)     (local devices, batch / devices, ...) arrays.

Which volume axis is left-right: the first, 'depth'. AdrenalMNIST3D holds the
left and right glands of each patient, so its mean volume is mirror-symmetric
along the left-right axis only; its correlation with its own flip is 0.93
along axis 0 and 0.51 / 0.53 along axes 1 / 2, at both sizes.
"""

import collections
import concurrent.futures
import contextlib
import functools
import hashlib
import io
import itertools
import os
import urllib.request
from typing import Callable, Iterable, Iterator, Optional

from absl import logging
import jax
import ml_collections
import numpy as np

from vivit_jax.data.augment import generator as _generator
from vivit_jax.data.augment import mixup
from vivit_jax.data.augment import smooth_labels

DATASETS = ('organmnist3d', 'nodulemnist3d', 'adrenalmnist3d',
            'fracturemnist3d', 'vesselmnist3d', 'synapsemnist3d')
SIZES = (28, 64)
SPLITS = ('train', 'val', 'test')
FLIP_AXES = ('depth', 'height', 'width')  # Axes 1, 2, 3 of (B, D, H, W, 1).
DEFAULT_DATA_DIR = '~/.medmnist'  # medmnist's own default root.
DOWNLOAD_TIMEOUT_S = 60
# Set (to anything but '') to never download: for machines without network,
# where a download would only fail after a DNS or connection timeout.
OFFLINE_ENV = 'VIVIT_JAX_OFFLINE'

# OrganMNIST3D has left and right kidneys, femurs and lungs. A reflection
# along any axis turns a right organ into the mirror image of a left one, so
# none is allowed; the other sets' labels do not depend on side or pose.
_LABEL_CHANGING_FLIPS = {'organmnist3d': FLIP_AXES}


class DataError(Exception):
  """A data file is missing, corrupt or does not fit the config.

  The message is one line that names the file and the fix.
  """


@functools.cache
def _medmnist_info() -> dict:
  try:
    # medmnist's __init__ prints a note when torch is missing; INFO needs none.
    with contextlib.redirect_stdout(io.StringIO()):
      from medmnist import info  # pylint: disable=g-import-not-at-top
  except ImportError as error:
    raise DataError('MedMNIST metadata needs the medmnist package: '
                    'pip install --no-deps medmnist==3.0.2') from error
  return info.INFO


def _check_name(name: str) -> str:
  flag = name.lower()
  if flag not in DATASETS:
    raise DataError(f'Unknown MedMNIST 3D set {name!r}: use one of '
                    f'{", ".join(DATASETS)}.')
  return flag


def dataset_info(name: str) -> dict:
  """medmnist's INFO entry of a 3D set: task, label, n_channels, n_samples,
  url / MD5 (28^3) and url_64 / MD5_64 (64^3). `name` is case-insensitive."""
  return dict(_medmnist_info()[_check_name(name)])


def _source(name: str, size: int) -> tuple[str, str, str]:
  """(file name, URL, MD5) of a set at a size, as medmnist names them."""
  if size not in SIZES:
    raise DataError(f'MedMNIST 3D comes in sizes {SIZES}, not {size}: fix '
                    'config.dataset_configs.size.')
  flag = _check_name(name)
  suffix = '' if size == 28 else f'_{size}'
  info = dataset_info(flag)
  return f'{flag}{suffix}.npz', info[f'url{suffix}'], info[f'MD5{suffix}']


def _md5(path: str) -> str:
  digest = hashlib.md5()
  with open(path, 'rb') as f:
    for chunk in iter(lambda: f.read(1 << 20), b''):
      digest.update(chunk)
  return digest.hexdigest()


def _one_line(error: Exception) -> str:
  return ' '.join(str(error).split())


def _download(url: str, path: str, md5: str) -> None:
  """Downloads `url` to `path` if its MD5 is `md5`; raises OSError otherwise."""
  if os.environ.get(OFFLINE_ENV):
    raise OSError(f'{OFFLINE_ENV} is set')
  os.makedirs(os.path.dirname(path), exist_ok=True)
  partial = path + '.part'
  logging.info('Downloading %s to %s', url, path)
  try:
    with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response:
      with open(partial, 'wb') as f:
        while chunk := response.read(1 << 20):
          f.write(chunk)
    actual = _md5(partial)
    if actual != md5:
      raise OSError(f'the download has md5 {actual}')
    os.replace(partial, path)
  finally:
    if os.path.exists(partial):
      os.remove(partial)


def _find_or_download(name: str, size: int, data_dir: str) -> str:
  """The path of a set's verified npz in `data_dir`, downloaded if absent."""
  file_name, url, md5 = _source(name, size)
  path = os.path.join(data_dir, file_name)
  if not os.path.exists(path):
    try:
      _download(url, path, md5)
    except OSError as error:  # urllib's URLError and timeouts included.
      raise DataError(
          f'{file_name} (md5 {md5}) not found in {data_dir} and not '
          f'downloaded ({_one_line(error)}): download {url} into {data_dir}, '
          'or set --config.dataset_configs.data_dir to the folder that has it.'
      ) from error
  actual = _md5(path)
  if actual != md5:
    raise DataError(f'{path} is corrupt: md5 {actual}, expected {md5}; '
                    f'replace it with a fresh download of {url}')
  return path


def _check_shapes(dataset_configs: ml_collections.ConfigDict, file_name: str,
                  volume_shape: tuple[int, ...], num_classes: int) -> None:
  depth, height, _ = volume_shape
  expected = {'num_frames': depth, 'crop_size': height,
              'num_classes': num_classes, 'num_channels': 1}
  for field, value in expected.items():
    if dataset_configs.get(field) != value:
      raise DataError(
          f'{file_name} holds {"x".join(map(str, volume_shape))} volumes of '
          f'{num_classes} classes, one channel, but config.dataset_configs.'
          f'{field} is {dataset_configs.get(field)}: set it to {value}.')


def load_splits(dataset_configs: ml_collections.ConfigDict
                ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
  """Reads a MedMNIST 3D set into memory, downloading it when absent.

  Uses `dataset_name`, `size`, `data_dir` (None: ~/.medmnist) and checks
  `num_frames`, `crop_size`, `num_classes` and `num_channels` against the file.

  Returns:
    {'train', 'val', 'test'} -> (volumes (N, D, H, W, 1) float32 in [0, 1],
    labels (N,) int32).
  Raises:
    DataError: the file is missing and cannot be downloaded, is corrupt, or
      does not fit the config.
  """
  data_dir = os.path.expanduser(dataset_configs.data_dir or DEFAULT_DATA_DIR)
  name, size = dataset_configs.dataset_name, dataset_configs.size
  path = _find_or_download(name, size, data_dir)
  with np.load(path) as npz:
    splits = {split: (npz[f'{split}_images'], npz[f'{split}_labels'])
              for split in SPLITS}
  _check_shapes(dataset_configs, os.path.basename(path),
                splits['train'][0].shape[1:], len(dataset_info(name)['label']))
  return {split: (np.divide(images[..., None], 255, dtype=np.float32),
                  labels.reshape(-1).astype(np.int32))
          for split, (images, labels) in splits.items()}


def default_flip_axes(name: str) -> tuple[str, ...]:
  """The axes among FLIP_AXES along which a flip keeps every label of `name`."""
  forbidden = _LABEL_CHANGING_FLIPS.get(_check_name(name), ())
  return tuple(axis for axis in FLIP_AXES if axis not in forbidden)


def augmentation_config(name: str, size: int) -> ml_collections.ConfigDict:
  """`config.augmentation` for a MedMNIST 3D set, label-preserving.

  Fields: max_shift (voxels, per axis), intensity_jitter (brightness offset
  and contrast factor amplitude), flip_axes, mixup_alpha (0: no mixup; the
  paper uses 0.1 to 0.3, Table 7), label_smoothing (lambda of Eq. 11).
  """
  return ml_collections.ConfigDict({
      'max_shift': size // 8,  # As CIFAR's random crop: 4 pixels of 32.
      'intensity_jitter': 0.1,
      'flip_axes': default_flip_axes(name),
      'mixup_alpha': 0.0,
      'label_smoothing': 0.0,
  })


def _check_flip_axes(name: str, flip_axes: tuple[str, ...]) -> None:
  allowed = default_flip_axes(name)
  for axis in flip_axes:
    if axis not in allowed:
      problem = (f'a flip along which can change the label of {name}'
                 if axis in FLIP_AXES else f'not one of {FLIP_AXES}')
      raise ValueError(f'config.augmentation.flip_axes has {axis!r}, '
                       f'{problem}: use a subset of {allowed}.')


def _coordinates(rng: np.random.Generator, batch: int, size: int,
                 max_shift: int, flip: bool) -> np.ndarray:
  """(batch, size) source coordinates along one axis: a random shift with the
  edge replicated, then, if `flip`, a reflection with probability 1/2."""
  shift = rng.integers(-max_shift, max_shift + 1, (batch, 1))
  coordinates = np.clip(np.arange(size) + shift, 0, size - 1)
  if flip:
    coordinates = np.where(rng.random((batch, 1)) < 0.5,
                           size - 1 - coordinates, coordinates)
  return coordinates


def augment(rng: np.random.Generator, volumes: np.ndarray,
            config: ml_collections.ConfigDict,
            rows: Optional[np.ndarray] = None) -> np.ndarray:
  """Label-preserving augmentation, drawn independently for each volume.

  Shifts each axis by up to `config.augmentation.max_shift` voxels (edges
  replicated), flips each axis of `flip_axes` with probability 1/2, then
  scales the contrast around the volume's mean by U(1 - j, 1 + j) and adds
  U(-j, j), j = `intensity_jitter`, clipping to [0, 1].

  Args:
    rng: the only source of randomness.
    volumes: (N, D, H, W, 1) in [0, 1].
    config: uses `augmentation` and `dataset_configs.dataset_name`.
    rows: (B,) the volumes to augment, in batch order; None: all N.
  Returns:
    (B, D, H, W, 1) float32 in [0, 1].
  """
  augmentation = config.augmentation
  _check_flip_axes(config.dataset_configs.dataset_name,
                   augmentation.flip_axes)
  if volumes.shape[-1] != 1:
    raise ValueError(f'Volumes have one channel, not {volumes.shape[-1]}.')
  rows = np.arange(len(volumes)) if rows is None else rows
  batch, spatial = len(rows), volumes.shape[1:4]
  coordinates = [
      _coordinates(rng, batch, size, augmentation.max_shift,
                   axis in augmentation.flip_axes)
      for axis, size in zip(FLIP_AXES, spatial)]
  jitter = augmentation.intensity_jitter
  contrast = rng.uniform(1 - jitter, 1 + jitter, batch).astype(np.float32)
  brightness = rng.uniform(-jitter, jitter, batch).astype(np.float32)

  out = np.empty((batch, *spatial, 1), np.float32)
  # One volume at a time: `take` copies whole planes and rows, twice as fast
  # as one fancy index over the batch, and the volume stays in cache.
  for i, row in enumerate(rows):
    volume = volumes[row, ..., 0]
    for axis, axis_coordinates in enumerate(coordinates):
      volume = volume.take(axis_coordinates[i], axis=axis)
    offset = volume.mean() * (1 - contrast[i]) + brightness[i]
    volume *= contrast[i]
    volume += offset
    np.clip(volume, 0, 1, out=out[i, ..., 0])
  return out


def _prepared_ahead(make: Callable[[int], dict], steps: Iterable[int],
                    size: int) -> Iterator[dict]:
  """Yields make(step) for each step, in order, while `size` threads make the
  next `size` batches. Errors reach the consumer."""
  steps = iter(steps)
  with concurrent.futures.ThreadPoolExecutor(size) as pool:
    pending = collections.deque(
        pool.submit(make, step) for step in itertools.islice(steps, size))
    while pending:
      batch = pending.popleft().result()
      pending.extend(
          pool.submit(make, step) for step in itertools.islice(steps, 1))
      yield batch


def train_batches(volumes: np.ndarray, labels: np.ndarray, *, batch_size: int,
                  seed: int, epoch: int, config: ml_collections.ConfigDict,
                  num_classes: int, skip: int = 0, prefetch: int = 2
                  ) -> Iterator[dict]:
  """One epoch of shuffled, augmented, mixed batches; the remainder dropped.

  Batch `step` depends on (seed, epoch, step) only, so `skip=k` resumes an
  epoch at step k with the batches an uninterrupted run would have seen, and
  the threads that prepare batches cannot change them.

  Args:
    volumes: (N, D, H, W, 1) float32; labels: (N,) int.
    batch_size: the global batch size (see `shard_for_host`).
    config: uses `augmentation` (see `augmentation_config`) and
      `dataset_configs.dataset_name`.
    prefetch: batches prepared ahead, each in its own thread.
  Yields:
    {'inputs': (B, D, H, W, 1) float32, 'targets': (B, K) float32 (smoothed,
    mixed), 'labels': (B,) int32 (as read)}, len(labels) // B - skip of them.
  """
  if not 0 < batch_size <= len(labels):
    raise ValueError(f'batch_size {batch_size} must be in [1, {len(labels)}], '
                     'the number of training examples.')
  if skip < 0:
    raise ValueError(f'skip must count batches already seen, not {skip}.')
  order = _generator(seed, epoch).permutation(len(labels))
  labels = labels.astype(np.int32)
  augmentation = config.augmentation

  def make(step: int) -> dict:
    rng = _generator(seed, epoch, step)
    rows = order[step * batch_size:(step + 1) * batch_size]
    inputs = augment(rng, volumes, config, rows)
    targets = smooth_labels(np.eye(num_classes, dtype=np.float32)[labels[rows]],
                            augmentation.label_smoothing)
    if augmentation.mixup_alpha > 0:
      inputs, targets = mixup(rng, inputs, targets, augmentation.mixup_alpha)
    return {'inputs': inputs, 'targets': targets, 'labels': labels[rows]}

  return _prepared_ahead(make, range(skip, len(labels) // batch_size),
                         prefetch)


def eval_batches(volumes: np.ndarray, labels: np.ndarray, *, batch_size: int
                 ) -> Iterator[dict]:
  """A whole split in order; the last batch padded with zeros to `batch_size`.

  Yields:
    {'inputs': (B, D, H, W, 1) float32, 'labels': (B,) int32,
    'mask': (B,) float32, 1 for examples and 0 for padding}.
  """
  for start in range(0, len(labels), batch_size):
    batch = {'inputs': volumes[start:start + batch_size],
             'labels': labels[start:start + batch_size].astype(np.int32)}
    batch['mask'] = np.ones(len(batch['labels']), np.float32)
    padding = batch_size - len(batch['labels'])
    yield {key: np.pad(value, [(0, padding)] + [(0, 0)] * (value.ndim - 1))
           for key, value in batch.items()}


def shard_for_host(batch: dict) -> dict:
  """The rows of a global batch that this JAX process feeds its devices.

  Every process holds the whole split and builds the same global batches;
  process i takes the i-th of `jax.process_count()` equal slices.
  """
  count, index = jax.process_count(), jax.process_index()

  def local(x: np.ndarray) -> np.ndarray:
    if x.shape[0] % count:
      raise ValueError(f'A global batch of {x.shape[0]} does not split over '
                       f'{count} processes: make the batch size a multiple.')
    rows = x.shape[0] // count
    return x[index * rows:(index + 1) * rows]

  return jax.tree.map(local, batch)


def prefetch_to_devices(batches: Iterator[dict], size: int = 2
                        ) -> Iterator[dict]:
  """Puts each host batch on the local devices, `size` batches ahead.

  Arrays (B, ...) become (local devices, B / local devices, ...) `jax.Array`s
  sharded along their first axis, the layout `jax.pmap` takes.
  """
  devices = jax.local_devices()
  sharding = jax.sharding.NamedSharding(
      jax.sharding.Mesh(np.array(devices), ('devices',)),
      jax.sharding.PartitionSpec('devices'))

  def put(x: np.ndarray) -> jax.Array:
    if x.shape[0] % len(devices):
      raise ValueError(f'A host batch of {x.shape[0]} does not split over '
                       f'{len(devices)} local devices: make the batch size a '
                       'multiple of the number of devices.')
    return jax.device_put(x.reshape(len(devices), -1, *x.shape[1:]), sharding)

  batches = iter(batches)
  on_devices = collections.deque(
      jax.tree.map(put, batch) for batch in itertools.islice(batches, size))
  while on_devices:
    yield on_devices.popleft()
    on_devices.extend(
        jax.tree.map(put, batch) for batch in itertools.islice(batches, 1))
