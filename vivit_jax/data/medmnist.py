"""MedMNIST 3D files: metadata, local lookup, download with checksum.

A volume (D, H, W) is a clip whose frames are its D slices. Files are looked
up in `dataset_configs.data_dir`, else in medmnist's own root (~/.medmnist),
else, for AdrenalMNIST3D at 28^3, in the copy shipped with the package; a
missing file is downloaded and checked against medmnist's MD5.

Which volume axis is left-right: the first, 'depth'. AdrenalMNIST3D holds the
left and right glands of each patient, so its mean volume is mirror-symmetric
along the left-right axis only; its correlation with its own flip is 0.93
along axis 0 and 0.51 / 0.53 along axes 1 / 2, at both sizes.
"""

import contextlib
import functools
import hashlib
import io
import logging
import os
import urllib.request

import ml_collections
import numpy as np

from vivit_jax.data.augment import FLIP_AXES
from vivit_jax.data.sources import DataError
from vivit_jax.data.sources import read_npz

DATASETS = ('organmnist3d', 'nodulemnist3d', 'adrenalmnist3d',
            'fracturemnist3d', 'vesselmnist3d', 'synapsemnist3d')
SIZES = (28, 64)
DEFAULT_DATA_DIR = '~/.medmnist'  # medmnist's own default root.
BUNDLED_DIR = os.path.join(os.path.dirname(__file__), 'bundled')
DOWNLOAD_TIMEOUT_S = 60
# Set (to anything but '') to never download: for machines without network,
# where a download would only fail after a DNS or connection timeout.
OFFLINE_ENV = 'VIVIT_JAX_OFFLINE'

# OrganMNIST3D has left and right kidneys, femurs and lungs. A reflection
# along any axis turns a right organ into the mirror image of a left one, so
# none is allowed; the other sets' labels do not depend on side or pose.
_LABEL_CHANGING_FLIPS = {'organmnist3d': FLIP_AXES}

logger = logging.getLogger(__name__)


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
  """Downloads `url` to `path` if its MD5 is `md5`; raises OSError otherwise,
  leaving no file and no folder it created behind."""
  if os.environ.get(OFFLINE_ENV):
    raise OSError(f'{OFFLINE_ENV} is set')
  folder = os.path.dirname(path)
  created = not os.path.isdir(folder)
  os.makedirs(folder, exist_ok=True)
  partial = path + '.part'
  logger.info('Downloading %s to %s', url, path)
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
    if created and not os.listdir(folder):
      os.rmdir(folder)


def find_file(dataset_configs: ml_collections.ConfigDict) -> str:
  """The path of a set's verified npz, downloaded if no copy is found.

  Looks in `data_dir` when it is set, else in ~/.medmnist and then among the
  files shipped with the package; downloads into the first of those folders.

  Raises:
    DataError: no copy, no download, or a copy with the wrong MD5.
  """
  file_name, url, md5 = _source(dataset_configs.dataset_name,
                                dataset_configs.size)
  data_dir = os.path.expanduser(dataset_configs.get('data_dir') or
                                DEFAULT_DATA_DIR)
  folders = [data_dir] if dataset_configs.get('data_dir') else [
      data_dir, BUNDLED_DIR]
  found = [os.path.join(folder, file_name) for folder in folders
           if os.path.exists(os.path.join(folder, file_name))]
  path = found[0] if found else os.path.join(data_dir, file_name)
  if not found:
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


def default_flip_axes(name: str) -> tuple[str, ...]:
  """The axes among FLIP_AXES along which a flip keeps every label of `name`."""
  forbidden = _LABEL_CHANGING_FLIPS.get(_check_name(name), ())
  return tuple(axis for axis in FLIP_AXES if axis not in forbidden)


def class_names(name: str) -> list[str]:
  """The label names of a set, in label order."""
  labels = dataset_info(name)['label']
  return [labels[str(i)] for i in range(len(labels))]


def task(name: str) -> str:
  """'binary-class' or 'multi-class', as medmnist's evaluator takes it."""
  return dataset_info(name)['task']


def load_splits(dataset_configs: ml_collections.ConfigDict
                ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
  """A MedMNIST 3D set in memory (see `find_file` and `sources.read_npz`):
  {'train', 'val', 'test'} -> (volumes (N, D, H, W, 1) float32 in [0, 1],
  labels (N,) int32).

  Raises:
    DataError: the file is missing and cannot be downloaded, is corrupt, or
      does not fit `dataset_configs`.
  """
  return read_npz(find_file(dataset_configs), dataset_configs)
