"""Training end to end on the real AdrenalMNIST3D (configs/tiny.py): results
and figures, resumption after SIGTERM, a stop on a non-finite loss, eval
mode, 1 vs 4 devices, and clear failures for missing data and wrong configs;
the term project's configs against its Table II."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pandas as pd
import pytest

import vivit_jax
from tests.conftest import REPO, SHARED, run_on_host_devices, sigterm_at_step
from vivit_jax import checkpoints
from vivit_jax import evaluate
from vivit_jax import logs
from vivit_jax import models
from vivit_jax import spec as spec_lib
from vivit_jax import summary
from vivit_jax import train
from vivit_jax.data import pipeline

DATA_DIR = str(SHARED / 'data')


def _config():
  config = vivit_jax.load_config(str(REPO / 'configs/tiny.py'))
  config.dataset_configs.data_dir = DATA_DIR
  return config


def _train_losses(workdir) -> pd.Series:
  scalars = logs.read_scalars(str(workdir))
  return scalars[scalars.name == 'train/loss'].set_index('step').value


@pytest.fixture(scope='module')
def finished_run(tmp_path_factory):
  workdir = tmp_path_factory.mktemp('uninterrupted')
  return workdir, train.train_and_evaluate(_config(), str(workdir))


def test_run_writes_finite_results_and_figures(finished_run):
  workdir, results = finished_run
  assert json.loads((workdir / 'results.json').read_text()) == results
  assert results['dataset'] == 'adrenalmnist3d'
  assert results['params'] == summary.summarize(_config())['params']
  assert results['best_step'] in (3, 6)  # The validation steps.
  for split in ('val', 'test'):
    for name in ('acc', 'auc', 'loss', 'top1'):
      assert np.isfinite(results[split][name]), (split, name)
    assert results[split]['top5'] is None  # 2 classes.
  for figure in ('curves.png', 'confusion_matrix.png', 'roc_curve.png'):
    assert (workdir / figure).read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
  assert list(_train_losses(workdir).index) == [1, 2, 3, 4, 5, 6]


def test_resumed_run_ends_as_an_uninterrupted_one(finished_run, tmp_path,
                                                  monkeypatch):
  uninterrupted, _ = finished_run
  sigterm_at_step(2, monkeypatch)
  with pytest.raises(train.TrainingStopped, match='SIGTERM at step 2'):
    train.train_and_evaluate(_config(), str(tmp_path))
  assert checkpoints.open_manager(str(tmp_path)).latest_step() == 2
  monkeypatch.undo()

  train.train_and_evaluate(_config(), str(tmp_path))
  resumed = checkpoints.restore_params(str(tmp_path), step=6)
  expected = checkpoints.restore_params(str(uninterrupted), step=6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6),
               resumed, expected)
  pd.testing.assert_series_equal(_train_losses(tmp_path),
                                 _train_losses(uninterrupted))
  assert b'\r' not in (tmp_path / logs.CSV_NAME).read_bytes()


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(
    tmp_path, monkeypatch):
  train_batches = pipeline.train_batches

  def nan_from_fourth_batch(*args, **kwargs):
    for index, batch in enumerate(train_batches(*args, **kwargs)):
      if index >= 3:
        batch = {**batch, 'inputs': batch['inputs'] * np.nan}
      yield batch

  monkeypatch.setattr(pipeline, 'train_batches', nan_from_fourth_batch)
  with pytest.raises(train.TrainingStopped,
                     match=r'Loss is nan at step 4.*resumes from step 3'):
    train.train_and_evaluate(_config(), str(tmp_path))
  assert checkpoints.open_manager(str(tmp_path)).latest_step() == 3
  params = checkpoints.restore_params(str(tmp_path), step=3)
  assert all(np.isfinite(p).all() for p in jax.tree.leaves(params))


def test_eval_mode_reproduces_the_test_results(finished_run):
  workdir, results = finished_run
  evaluated = evaluate.evaluate_workdir(str(workdir))
  assert evaluated['best_step'] == results['best_step']
  for split in ('val', 'test'):
    for name in ('acc', 'auc', 'loss'):
      np.testing.assert_allclose(evaluated[split][name],
                                 results[split][name], rtol=1e-6)


@pytest.mark.parametrize('overrides, message', [
    ({'optimizer': 'adam'}, r'config\.optimizer: unknown value'),
    ({'lr_configs.learning_rate_schedule': 'step'},
     r'config\.lr_configs\.learning_rate_schedule: unknown value'),
    ({'lr_configs.warmup_steps': 2, 'lr_configs.warmup_epochs': 0.01},
     r'config\.lr_configs\.warmup_steps: .* both in steps and in epochs'),
    ({'batch_size': 2048}, r'config\.batch_size: 2048 is larger than the 1188'),
    ({'num_training_steps': 0}, r'config\.num_training_steps: 0 is not'),
    ({'checkpoint_metric': 'f1'}, r'config\.checkpoint_metric: unknown'),
    ({'model.num_heads': 3}, r'config\.model\.num_heads: 3 heads'),
    ({'augmentation.flip_axes': (), 'augmentation.eval_flips': True},
     r'config\.augmentation\.eval_flips: is set but flip_axes is empty'),
])
def test_config_errors_name_the_field(overrides, message):
  config = _config()
  config.update_from_flattened_dict(overrides)
  with pytest.raises(spec_lib.ConfigError, match=message):
    spec_lib.check_config(config)


def test_a_warm_up_longer_than_the_run_is_shortened():
  config = _config()
  config.lr_configs.warmup_epochs = 1.0
  spec = spec_lib.check_config(config)
  assert (spec.total_steps, spec.warmup_steps) == (6, 3)
  assert spec.notes == ('The warm-up (148 steps) would not end before '
                        'training does (6 steps): shortened to 3 steps, half '
                        'the run.',)


def test_batch_must_split_over_the_devices(monkeypatch):
  monkeypatch.setattr(jax, 'device_count', lambda: 3)
  with pytest.raises(ValueError, match=r'config\.batch_size: 8 examples do '
                     'not split evenly over the 3 devices. Use a positive '
                     'multiple of 3'):
    spec_lib.check_config(_config())


def test_four_devices_give_the_losses_of_one(finished_run, tmp_path):
  one_device, _ = finished_run
  run_on_host_devices(
      'import runpy, sys\n'
      f'sys.argv = ["run.py", "--config=configs/tiny.py", '
      f'"--config.dataset_configs.data_dir={DATA_DIR}", '
      f'"--workdir={tmp_path}"]\n'
      'runpy.run_path("run.py", run_name="__main__")\n', num_devices=4)
  pd.testing.assert_series_equal(_train_losses(tmp_path),
                                 _train_losses(one_device), rtol=1e-5)


def test_missing_data_exits_with_one_line(tmp_path):
  result = subprocess.run(
      [sys.executable, 'run.py', '--config=configs/tiny.py',
       f'--config.dataset_configs.data_dir={tmp_path}',
       f'--workdir={tmp_path / "workdir"}'],
      cwd=REPO, capture_output=True, text=True, timeout=120,
      env=dict(os.environ, PYTHONPATH=str(REPO)))
  assert result.returncode != 0
  last_line = result.stderr.strip().splitlines()[-1]
  assert last_line.startswith('DataError: adrenalmnist3d.npz')
  assert '--config.dataset_configs.data_dir' in last_line
  assert 'Traceback' not in result.stderr


@pytest.mark.parametrize('arg, params', [
    ('vivit1', 304_907), ('vivit2', 6_338_059), ('cnn3d', 279_435)])
def test_termproject_configs_have_table_ii_parameter_counts(arg, params):
  spec = spec_lib.check_config(vivit_jax.load_config(
      str(REPO / f'configs/termproject.py:{arg}')), mode='model')
  variables = summary.abstract_variables(models.create_model(spec), spec)
  assert sum(p.size for p in jax.tree.leaves(variables['params'])) == params
