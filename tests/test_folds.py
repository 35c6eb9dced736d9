"""Cross-validation folds over the train and val splits: stratified, disjoint,
each pooled example held out by exactly one run, the test split unused; a
fold's run end to end, and the config's errors."""

import json

import numpy as np
import pytest

import vivit_jax
from tests.conftest import REPO, SHARED
from vivit_jax import data
from vivit_jax import spec as spec_lib
from vivit_jax.data import folds


def _splits(num_train=47, num_val=13, num_test=9, num_classes=3):
  rng = np.random.default_rng(0)
  splits, start = {}, 0
  for split, size in (('train', num_train), ('val', num_val),
                      ('test', num_test)):
    # Example i holds the number i everywhere, so rows can be traced.
    ids = np.arange(start, start + size, dtype=np.float32)
    splits[split] = (np.broadcast_to(ids[:, None, None], (size, 2, 2)).copy(),
                     rng.integers(0, num_classes, size).astype(np.int32))
    start += size
  return splits


@pytest.mark.parametrize('num_folds', [3, 5])
def test_folds_are_stratified_and_balanced(num_folds):
  labels = np.random.default_rng(1).choice(4, 203, p=[0.6, 0.2, 0.15, 0.05])
  assigned = folds.fold_of_each(labels, num_folds)
  sizes = np.bincount(assigned, minlength=num_folds)
  assert sizes.sum() == len(labels) and sizes.max() - sizes.min() <= 1
  for label in range(4):
    per_fold = np.bincount(assigned[labels == label], minlength=num_folds)
    assert per_fold.max() - per_fold.min() <= 1, (label, per_fold)
  np.testing.assert_array_equal(assigned, folds.fold_of_each(labels, num_folds))


def test_runs_partition_the_pooled_examples_and_skip_test():
  splits, num_folds = _splits(), 4
  pooled = np.concatenate([splits['train'][0], splits['val'][0]])[:, 0, 0]
  labels_of = dict(zip(pooled, np.concatenate(
      [splits['train'][1], splits['val'][1]])))
  held_out = []
  for fold in range(num_folds):
    run = folds.split(splits, num_folds, fold)
    ids = {name: run[name][0][:, 0, 0] for name in run}
    for name, (examples, labels) in run.items():
      assert [labels_of[i] for i in examples[:, 0, 0]] == list(labels), name
      assert len(examples) == folds.split_sizes(
          splits['train'][1], splits['val'][1], num_folds, fold)[name]
    assert sorted(np.concatenate(list(ids.values()))) == sorted(pooled)
    # The next run holds out this run's validation fold.
    next_run = folds.split(splits, num_folds, (fold + 1) % num_folds)
    np.testing.assert_array_equal(next_run['test'][0], run['val'][0])
    held_out.extend(ids['test'])
  assert sorted(held_out) == sorted(pooled)  # Each exactly once.
  assert not set(held_out) & set(splits['test'][0][:, 0, 0])


def _adrenal_config(num_folds, fold):
  config = vivit_jax.load_config(str(REPO / 'configs/tiny.py'))
  config.dataset_configs.data_dir = str(SHARED / 'data')
  config.cross_validation.num_folds = num_folds
  config.cross_validation.fold = fold
  return config


def test_spec_counts_the_fold_run_splits_of_adrenal():
  spec = spec_lib.check_config(_adrenal_config(5, 2), mode='train')
  sizes = spec.split_sizes
  assert sum(sizes.values()) == 1188 + 98  # train + val, no test.
  assert max(sizes['val'], sizes['test']) - min(
      sizes['val'], sizes['test']) <= 1
  assert spec.steps_per_epoch == sizes['train'] // 8
  source = data.create_source(spec.config)
  assert {split: source.num_examples(split) for split in sizes} == sizes


@pytest.mark.parametrize('num_folds, fold, field, words', [
    (2, 0, 'cross_validation.num_folds', 'Use 3 or more folds'),
    (5, 5, 'cross_validation.fold', 'from 0 to 4'),
    (5, -1, 'cross_validation.fold', 'from 0 to 4'),
])
def test_bad_folds_are_one_line(num_folds, fold, field, words):
  with pytest.raises(spec_lib.ConfigError) as error:
    spec_lib.check_config(_adrenal_config(num_folds, fold), mode='train')
  message = str(error.value)
  assert message.startswith(f'config.{field}:') and words in message
  assert '\n' not in message


def test_videos_refuse_folds():
  config = vivit_jax.load_config(str(REPO / 'configs/video_tiny.py'))
  config.cross_validation.num_folds = 5
  with pytest.raises(spec_lib.ConfigError, match='not video files'):
    spec_lib.check_config(config, mode='train')


def test_a_fold_run_reports_its_fold(tmp_path):
  results = vivit_jax.train_and_evaluate(_adrenal_config(4, 3),
                                         str(tmp_path))
  assert results['cross_validation']['fold'] == 3
  assert "test split was not evaluated" in results['cross_validation']['note']
  assert json.loads((tmp_path / 'results.json').read_text()) == results
  rows = (tmp_path / 'predictions.csv').read_text().splitlines()
  assert len(rows) - 1 == spec_lib.check_config(
      _adrenal_config(4, 3), mode='train').split_sizes['test']


def test_the_ensemble_of_seeds_averages_their_held_out_probabilities(
    tmp_path):
  cross_validation = pytest.importorskip('benchmarks.cross_validation')
  labels = np.array([0, 1, 1, 0, 1])
  first = np.array([0.9, 0.6, 0.3, 0.2, 0.45])  # p of class 0
  second = np.array([0.3, 0.2, 0.6, 0.75, 0.35])
  workdirs = []
  for seed, p0 in enumerate((first, second)):
    workdir = tmp_path / f'seed{seed}'
    workdir.mkdir()
    (workdir / 'predictions.csv').write_text('index,label,p_a,p_b\n' + ''.join(
        f'{i},{y},{p},{1 - p}\n' for i, (y, p) in enumerate(zip(labels, p0))))
    workdirs.append(str(workdir))
  ensemble = cross_validation._ensemble(workdirs, 'binary-class')
  # Each seed alone: ACC 0.6, AUC 0.5 and 4/6. Their mean p_b: 0.4, 0.6,
  # 0.55, 0.525, 0.6, which ranks every positive above every negative and
  # gets all but the fourth right.
  assert ensemble['acc'] == pytest.approx(4 / 5)
  assert ensemble['auc'] == pytest.approx(1.0)
  assert ensemble['predicted_classes'] == 2
  (tmp_path / 'seed1' / 'predictions.csv').write_text(
      'index,label,p_a,p_b\n' + ''.join(
          f'{i + 1},{y},0.5,0.5\n' for i, y in enumerate(labels)))
  with pytest.raises(ValueError, match='scored different examples'):
    cross_validation._ensemble(workdirs, 'binary-class')
