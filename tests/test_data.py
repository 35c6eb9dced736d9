"""Tests of vivit_jax.data: loading, augmentation, batching, sharding."""

import hashlib
import importlib.util
import io
import itertools
import os
import shutil
import textwrap
import threading
import urllib.error
import urllib.request

import ml_collections
import numpy as np
import pytest

import vivit_jax
from tests.conftest import REPO, SHARED, run_on_host_devices
from vivit_jax import data
from vivit_jax import spec as spec_lib
from vivit_jax.data import augment
from vivit_jax.data import dataset_configs
from vivit_jax.data import medmnist
from vivit_jax.data import pipeline
from vivit_jax.data import sources

DATA_DIR = SHARED / 'data'
ADRENAL_MD5 = 'bbd3c5a5576322bc4cdfea780653b1ce'
ADRENAL_URL = ('https://zenodo.org/records/10519652/files/adrenalmnist3d.npz'
               '?download=1')

needs_medmnist = pytest.mark.skipif(
    importlib.util.find_spec('medmnist') is None,
    reason='MedMNIST metadata needs medmnist: '
           'pip install --no-deps medmnist==3.0.2')
needs_adrenal = pytest.mark.skipif(
    not (DATA_DIR / 'adrenalmnist3d.npz').exists(),
    reason=f'needs the real AdrenalMNIST3D files in {DATA_DIR}')


def adrenal_configs(data_dir, size=28):
  return dataset_configs.medmnist_dataset('adrenalmnist3d', size,
                                          data_dir=str(data_dir))


def augmentation_only(name='adrenalmnist3d', **fields):
  augmentation = dataset_configs.augmentation(name, size=8)
  augmentation.update(fields)
  return augmentation


@pytest.fixture
def no_network(monkeypatch):
  def unreachable(url, timeout):
    raise urllib.error.URLError('network disabled in tests')
  monkeypatch.setattr(urllib.request, 'urlopen', unreachable)


@needs_medmnist
@needs_adrenal
def test_load_splits_reads_real_adrenal():
  splits = medmnist.load_splits(adrenal_configs(DATA_DIR))
  sizes = {split: len(labels) for split, (_, labels) in splits.items()}
  assert sizes == {'train': 1188, 'val': 98, 'test': 298}
  for volumes, labels in splits.values():
    assert volumes.shape == (len(labels), 28, 28, 28, 1)
    assert volumes.dtype == np.float32 and labels.dtype == np.int32
    assert volumes.min() == 0 and volumes.max() == 1
    assert set(np.unique(labels)) == {0, 1}


@needs_medmnist
@needs_adrenal
def test_load_splits_names_the_field_that_does_not_fit():
  configs = adrenal_configs(DATA_DIR, size=64)
  configs.num_frames = 32
  with pytest.raises(data.DataError, match=r'adrenalmnist3d_64\.npz .*'
                     r'num_frames is 32: set it to 64'):
    medmnist.load_splits(configs)


@needs_medmnist
@needs_adrenal
def test_corrupt_file_names_file_and_md5s(tmp_path):
  corrupt = tmp_path / 'adrenalmnist3d.npz'
  shutil.copy(DATA_DIR / 'adrenalmnist3d.npz', corrupt)
  corrupt.chmod(0o644)
  content = bytearray(corrupt.read_bytes())
  content[len(content) // 2] ^= 0xFF
  corrupt.write_bytes(content)
  actual = hashlib.md5(content).hexdigest()
  with pytest.raises(data.DataError) as error:
    medmnist.load_splits(adrenal_configs(tmp_path))
  message = str(error.value)
  assert '\n' not in message
  for part in (str(corrupt), actual, ADRENAL_MD5, ADRENAL_URL):
    assert part in message


@needs_medmnist
def test_missing_file_without_network_is_one_line(tmp_path, no_network):
  config = vivit_jax.load_config(str(REPO / 'configs/vivit_b.py'))
  config.dataset_configs.data_dir = str(tmp_path)
  with pytest.raises(data.DataError) as error:
    medmnist.load_splits(config.dataset_configs)
  message = str(error.value)
  assert '\n' not in message
  for part in ('organmnist3d_64.npz', '58a2205adf14a9d0a189cb06dc78bf10',
               'https://zenodo.org/records/10519652/files/organmnist3d_64.npz',
               str(tmp_path), 'network disabled in tests'):
    assert part in message
  assert not os.listdir(tmp_path)


@needs_medmnist
def test_offline_variable_stops_downloads(tmp_path, monkeypatch):
  def fail(url, timeout):
    raise AssertionError(f'downloaded {url}')
  monkeypatch.setattr(urllib.request, 'urlopen', fail)
  monkeypatch.setenv(medmnist.OFFLINE_ENV, '1')
  with pytest.raises(data.DataError) as error:
    medmnist.load_splits(adrenal_configs(tmp_path))
  assert f'({medmnist.OFFLINE_ENV} is set)' in str(error.value)


@needs_medmnist
@needs_adrenal
def test_download_is_checked_and_kept(tmp_path, monkeypatch):
  served = (DATA_DIR / 'adrenalmnist3d.npz').read_bytes()
  monkeypatch.setattr(urllib.request, 'urlopen',
                      lambda url, timeout: io.BytesIO(served))
  splits = medmnist.load_splits(adrenal_configs(tmp_path))
  assert len(splits['train'][1]) == 1188
  assert (tmp_path / 'adrenalmnist3d.npz').read_bytes() == served


@needs_medmnist
def test_bad_download_is_not_kept(tmp_path, monkeypatch):
  monkeypatch.setattr(urllib.request, 'urlopen',
                      lambda url, timeout: io.BytesIO(b'<html>'))
  with pytest.raises(data.DataError, match='download has md5'):
    medmnist.load_splits(adrenal_configs(tmp_path))
  assert not os.listdir(tmp_path)


@needs_medmnist
def test_dataset_info_by_any_case_and_unknown_names():
  info = medmnist.dataset_info('OrganMNIST3D')
  assert info['task'] == 'multi-class' and len(info['label']) == 11
  with pytest.raises(data.DataError, match='organmnist3d, nodulemnist3d, '
                     'adrenalmnist3d, fracturemnist3d, vesselmnist3d, '
                     'synapsemnist3d'):
    medmnist.dataset_info('pathmnist')


def test_no_flips_for_organmnist3d():
  assert medmnist.default_flip_axes('organmnist3d') == ()
  assert medmnist.default_flip_axes('adrenalmnist3d') == augment.FLIP_AXES
  config = vivit_jax.load_config(str(REPO / 'configs/termproject.py'))
  config.augmentation.flip_axes = ('depth',)
  with pytest.raises(spec_lib.ConfigError, match="'depth', a flip along "
                     'which can change the label of organmnist3d'):
    spec_lib.check_config(config)


def test_augment_keeps_shape_dtype_and_range():
  volumes = np.random.default_rng(0).random((16, 8, 6, 10, 1), np.float32)
  config = augmentation_only(max_shift=2, intensity_jitter=0.5)
  out = augment.augment(np.random.default_rng(1), volumes, config)
  assert out.shape == volumes.shape and out.dtype == np.float32
  assert out.min() >= 0 and out.max() <= 1
  assert not np.allclose(out, volumes)


@pytest.mark.parametrize('axis', augment.FLIP_AXES)
def test_augment_flips_only_the_allowed_axis(axis):
  volume = np.arange(5 * 6 * 7, dtype=np.float32).reshape(1, 5, 6, 7, 1)
  volumes = np.repeat(volume / volume.max(), 32, axis=0)
  config = augmentation_only(max_shift=0, intensity_jitter=0.0,
                             flip_axes=(axis,))
  out = augment.augment(np.random.default_rng(0), volumes, config)
  flipped = np.flip(volumes[0], augment.FLIP_AXES.index(axis))
  is_flipped = [np.array_equal(o, flipped) for o in out]
  is_kept = [np.array_equal(o, volumes[0]) for o in out]
  assert all(f != k for f, k in zip(is_flipped, is_kept))
  assert 0 < sum(is_flipped) < len(out)


def test_augment_shifts_by_at_most_max_shift():
  volumes = np.zeros((32, 9, 9, 9, 1), np.float32)
  volumes[:, 4, 4, 4] = 1
  config = augmentation_only(max_shift=2, intensity_jitter=0.0, flip_axes=())
  out = augment.augment(np.random.default_rng(0), volumes, config)
  peaks = np.argwhere(out[..., 0] == 1)
  assert len(peaks) == len(out)
  shifts = peaks[:, 1:] - 4
  assert np.abs(shifts).max() == 2 and np.any(shifts != 0, axis=1).mean() > .5


def test_resized_crops_stretch_every_axis_by_one_scale():
  # Trilinear resampling keeps a linear function linear: inside the volume
  # each output step along an axis is the input's step times the crop's
  # side share s, one s per volume for all three axes, in [0.6, 1].
  size, slopes = 12, np.array([0.02, 0.025, 0.03])
  grid = np.stack(np.meshgrid(*[np.arange(size)] * 3, indexing='ij'), -1)
  volume = (0.05 + grid @ slopes).astype(np.float32)[..., None]
  volumes = np.repeat(volume[None], 64, axis=0)
  config = augmentation_only(max_shift=0, intensity_jitter=0.0, flip_axes=(),
                             crop_min_scale=0.6)
  out = augment.augment(np.random.default_rng(0), volumes, config)[..., 0]
  inside = out[:, 1:-1, 1:-1, 1:-1]
  scales = []
  for axis in range(3):
    steps = np.diff(inside, axis=axis + 1) / slopes[axis]
    per_volume = steps.reshape(len(out), -1)
    assert np.abs(per_volume - per_volume[:, :1]).max() < 2e-4
    scales.append(per_volume[:, 0])
  np.testing.assert_allclose(scales[0], scales[1], atol=2e-4)
  np.testing.assert_allclose(scales[0], scales[2], atol=2e-4)
  assert scales[0].min() >= 0.6 - 1e-4 and scales[0].max() <= 1 + 1e-4
  assert np.ptp(scales[0]) > 0.2
  untouched = augment.augment(np.random.default_rng(0), volumes,
                              augmentation_only(max_shift=0, flip_axes=(),
                                                intensity_jitter=0.0))
  np.testing.assert_array_equal(untouched, volumes)


def test_resampling_is_scipys_linear_interpolation():
  scipy_ndimage = pytest.importorskip('scipy.ndimage')
  volume = np.random.default_rng(0).random((5, 6, 7)).astype(np.float32)
  coordinates = np.array([0.0, 0.25, 1.5, 2.0, 4.75, 6.0])
  for axis in range(3):
    along = coordinates[coordinates <= volume.shape[axis] - 1]
    grid = np.meshgrid(*[along if a == axis else np.arange(n)
                         for a, n in enumerate(volume.shape)], indexing='ij')
    expected = scipy_ndimage.map_coordinates(volume, grid, order=1)
    np.testing.assert_allclose(augment._resample(volume, axis, along),
                               expected, rtol=1e-6, atol=1e-6)


def test_rotations_turn_the_plane_by_multiples_of_90_degrees():
  volume = np.random.default_rng(0).random((1, 4, 6, 6, 1), np.float32)
  volumes = np.repeat(volume, 32, axis=0)
  config = augmentation_only(max_shift=0, intensity_jitter=0.0, flip_axes=(),
                             rotation_plane=('height', 'width'))
  out = augment.augment(np.random.default_rng(0), volumes, config)
  turns = [[k for k in range(4) if np.array_equal(
      o, np.rot90(volume[0], k, axes=(1, 2)))] for o in out]
  assert all(len(k) == 1 for k in turns)
  assert sorted({k[0] for k in turns}) == [0, 1, 2, 3]


@pytest.mark.parametrize('fields, message', [
    ({'crop_min_scale': 0.0}, r'crop_min_scale: 0.0 is not in \(0, 1\]'),
    ({'rotation_plane': ('height',)}, 'is not two different axes'),
    ({'rotation_plane': ('depth', 'width')},
     r'turns depth \(8 voxels\) into width \(28\)'),
])
def test_bad_crop_or_rotation_is_one_line(fields, message):
  config = vivit_jax.load_config(str(REPO / 'configs/medmnist3d.py'))
  del config.dataset_configs['num_frames']  # Not the size's reference.
  config.dataset_configs.num_frames = 8
  config.augmentation.update(fields)
  with pytest.raises(spec_lib.ConfigError, match=message):
    spec_lib.check_config(config)


def test_augmentation_fields_a_config_leaves_out_take_their_defaults():
  config = vivit_jax.load_config(str(REPO / 'configs/medmnist3d.py'))
  del config.augmentation['crop_min_scale']
  del config.augmentation['rotation_plane']
  checked = spec_lib.check_config(config, mode='model').config
  assert checked.augmentation.crop_min_scale == 1.0
  assert tuple(checked.augmentation.rotation_plane) == ()
  assert checked.augmentation.max_shift == config.augmentation.max_shift


def test_smooth_labels_is_eq_11():
  one_hot = np.eye(4, dtype=np.float32)[[0, 3]]
  smoothed = augment.smooth_labels(one_hot, 0.2)
  np.testing.assert_allclose(smoothed, [[0.85, 0.05, 0.05, 0.05],
                                        [0.05, 0.05, 0.05, 0.85]], rtol=1e-6)


def test_mixup_is_eq_12():
  batch = 16
  volumes = np.arange(batch, dtype=np.float32).reshape(batch, 1, 1, 1, 1)
  one_hot = np.eye(batch, dtype=np.float32)
  mixed, targets = augment.mixup(np.random.default_rng(0), volumes, one_hot,
                              alpha=0.4)
  # Row i is lam y_i + (1 - lam) y_j: one lam, partners j a permutation.
  lam = np.diag(targets).min()
  partners = (targets - lam * one_hot) / (1 - lam)
  assert 0 < lam < 1
  np.testing.assert_allclose(partners, np.round(partners), atol=1e-5)
  np.testing.assert_allclose(partners.sum(axis=0), 1, atol=1e-5)
  np.testing.assert_allclose(partners.sum(axis=1), 1, atol=1e-5)
  # x~ = lam x_i + (1 - lam) x_j, with the weights of y~.
  np.testing.assert_allclose(mixed.ravel(), targets @ volumes.ravel(),
                             rtol=1e-5)


def test_balanced_class_weights_equalise_the_classes():
  labels = np.array([0, 0, 0, 0, 0, 0, 1, 1, 3], np.int32)
  weights = augment.balanced_class_weights(labels, num_classes=4)
  # N / (K n_k) with N = 9, K = 4; class 2 has no example.
  np.testing.assert_allclose(weights, [9 / 24, 9 / 8, 0, 9 / 4], rtol=1e-6)
  per_class = np.bincount(labels, weights=weights[labels], minlength=4)
  np.testing.assert_allclose(per_class, [2.25, 2.25, 0, 2.25], rtol=1e-6)
  # The mean weight is the share of classes present: 1 when all are.
  np.testing.assert_allclose(weights[labels].mean(), 3 / 4, rtol=1e-6)


def test_balance_classes_scales_the_targets_by_the_class_weights():
  volumes = np.zeros((12, 2, 2, 2, 1), np.float32)
  labels = np.array([0] * 9 + [1] * 3, np.int32)
  config = ml_collections.ConfigDict({
      'batch_size': 12, 'eval_batch_size': 4, 'rng_seed': 0,
      'balance_classes': True,
      'augmentation': augmentation_only(max_shift=0, label_smoothing=0.2)})
  source = sources.ArraySource(
      {split: (volumes, labels) for split in sources.SPLITS}, config=config,
      class_names=['a', 'b'], task='binary-class')
  batch = source.train_batch(0)
  # Weights 12 / (2 * 9) and 12 / (2 * 3); smoothing 0.2 over 2 classes.
  smoothed = np.where(np.eye(2)[batch['labels']] == 1, 0.9, 0.1)
  np.testing.assert_allclose(batch['targets'], smoothed * [2 / 3, 2],
                             rtol=1e-6)
  config.balance_classes = False
  np.testing.assert_allclose(source.train_batch(0)['targets'], smoothed,
                             rtol=1e-6)


def array_source(seed=3, **fields):
  volumes = np.random.default_rng(0).random((22, 4, 4, 4, 1), np.float32)
  config = ml_collections.ConfigDict({
      'batch_size': 4, 'eval_batch_size': 4, 'rng_seed': seed,
      'augmentation': augmentation_only(max_shift=1, mixup_alpha=0.3,
                                        label_smoothing=0.1, **fields)})
  splits = {split: (volumes, np.arange(22, dtype=np.int32))
            for split in sources.SPLITS}
  return sources.ArraySource(splits, config=config,
                             class_names=[str(i) for i in range(22)],
                             task='multi-class')


def epoch(seed, epoch_index, prefetch=2):
  """The batches of one epoch (5 steps of 4 of 22 examples), made ahead by
  `prefetch` threads."""
  source = array_source(seed)
  steps = range(5 * epoch_index, 5 * (epoch_index + 1))
  return list(pipeline.prepared_ahead(source.train_batch, steps, prefetch))


def test_train_batches_depend_on_seed_and_step_only():
  first = epoch(seed=3, epoch_index=1)
  again = epoch(seed=3, epoch_index=1, prefetch=5)
  assert len(first) == 22 // 4
  for batch, same in zip(first, again):
    assert batch.keys() == {'inputs', 'targets', 'labels'}
    assert batch['inputs'].shape == (4, 4, 4, 4, 1)
    assert batch['inputs'].dtype == batch['targets'].dtype == np.float32
    assert batch['targets'].shape == (4, 22) and batch['labels'].shape == (4,)
    for key in batch:
      np.testing.assert_array_equal(batch[key], same[key])
  labels = np.concatenate([batch['labels'] for batch in first])
  assert len(np.unique(labels)) == len(labels)
  other = epoch(seed=3, epoch_index=2)
  assert not np.array_equal(first[0]['labels'], other[0]['labels'])
  assert not np.array_equal(first[0]['labels'],
                            epoch(seed=4, epoch_index=1)[0]['labels'])


def test_train_batches_resume_at_any_step():
  source = array_source(seed=5)
  full = list(pipeline.prepared_ahead(source.train_batch, range(20, 25)))
  resumed = list(pipeline.prepared_ahead(source.train_batch, range(23, 25)))
  for batch, same in zip(full[3:], resumed):
    for key in batch:
      np.testing.assert_array_equal(batch[key], same[key])


def test_train_batches_raise_errors_of_the_background_thread():
  def make(step):
    raise ValueError(f'cannot make batch {step}')
  with pytest.raises(ValueError, match='cannot make batch 0'):
    list(pipeline.prepared_ahead(make, range(3)))


def test_train_batches_stop_their_thread_when_closed():
  threads = threading.active_count()
  batches = pipeline.prepared_ahead(array_source().train_batch,
                                    itertools.count())
  next(batches)
  assert threading.active_count() > threads
  batches.close()
  assert threading.active_count() == threads


def test_eval_views_are_every_combination_of_the_flips():
  assert augment.eval_views(augmentation_only()) == [()]
  views = augment.eval_views(augmentation_only(eval_flips=True))
  assert sorted(views) == sorted(
      [(), (1,), (2,), (3,), (1, 2), (1, 3), (2, 3), (1, 2, 3)])
  assert augment.eval_views(augmentation_only(
      eval_flips=True, flip_axes=('width',))) == [(), (3,)]


def test_eval_flips_give_each_volume_once_per_flip():
  source = array_source(eval_flips=True, flip_axes=('depth', 'width'))
  batches = list(source.eval_batches('val'))
  real = np.concatenate([b['mask'] for b in batches]).astype(bool)
  inputs = np.concatenate([b['inputs'] for b in batches])[real]
  index = np.concatenate([b['index'] for b in batches])[real]
  volumes = next(array_source().eval_batches('val', batch_size=22))['inputs']
  assert np.bincount(index).tolist() == [4] * 22
  for i in (0, 13, 21):
    views = {view.tobytes() for view in inputs[index == i]}
    assert views == {np.flip(volumes[i], axes).tobytes()
                     for axes in [(), (0,), (2,), (0, 2)]}


def test_eval_batches_cover_the_split_once_in_order():
  volumes = np.random.default_rng(0).random((10, 2, 3, 3, 1), np.float32)
  labels = np.arange(10) % 3
  batches = list(sources.padded_batches(
      {'inputs': volumes, 'labels': labels.astype(np.int32),
       'index': np.arange(10, dtype=np.int32)}, batch_size=4))
  assert [b['mask'].tolist() for b in batches] == [[1] * 4, [1] * 4,
                                                  [1, 1, 0, 0]]
  real = np.concatenate([b['mask'] for b in batches]).astype(bool)
  np.testing.assert_array_equal(
      np.concatenate([b['inputs'] for b in batches])[real], volumes)
  np.testing.assert_array_equal(
      np.concatenate([b['labels'] for b in batches])[real], labels)
  np.testing.assert_array_equal(
      np.concatenate([b['index'] for b in batches])[real], np.arange(10))
  assert all(b['inputs'].shape == (4, 2, 3, 3, 1) for b in batches)
  assert batches[-1]['labels'].dtype == np.int32


def test_shard_for_host_takes_this_process_rows(monkeypatch):
  monkeypatch.setattr(pipeline.jax, 'process_count', lambda: 2)
  monkeypatch.setattr(pipeline.jax, 'process_index', lambda: 1)
  batch = {'inputs': np.arange(8).reshape(4, 2), 'mask': np.arange(4)}
  local = pipeline.shard_for_host(batch)
  np.testing.assert_array_equal(local['inputs'], [[4, 5], [6, 7]])
  np.testing.assert_array_equal(local['mask'], [2, 3])
  with pytest.raises(ValueError, match='does not split over 2 processes'):
    pipeline.shard_for_host({'mask': np.arange(3)})


def test_to_devices_splits_over_four_devices():
  script = textwrap.dedent("""
      import jax
      import numpy as np
      import pytest
      from vivit_jax.data import pipeline

      batches = [{'inputs': np.full((8, 3), i, np.float32)} for i in range(3)]
      on_devices = list(pipeline.to_devices(iter(batches), size=2))
      assert len(on_devices) == 3
      for i, batch in enumerate(on_devices):
        inputs = batch['inputs']
        assert inputs.shape == (4, 2, 3)
        assert len(inputs.sharding.device_set) == 4
        np.testing.assert_array_equal(np.asarray(inputs), i)
      sums = jax.pmap(lambda x: x.sum())(on_devices[2]['inputs'])
      np.testing.assert_array_equal(sums, 12)
      with pytest.raises(ValueError, match='does not split over 4 local'):
        next(pipeline.to_devices([{'inputs': np.zeros((6, 3))}]))
  """)
  run_on_host_devices(script, num_devices=4)
