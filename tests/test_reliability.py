"""What a workdir survives: a second run on it, a damaged newest
checkpoint, a full disk, a diverging loss, and bad input, each ending in one
line (the README's Reliability section lists these guarantees)."""

import errno
import os
import pathlib
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

import vivit_jax
from tests.conftest import REPO, sigterm_at_step
from vivit_jax import checkpoints
from vivit_jax import evaluate
from vivit_jax import logs
from vivit_jax import spec as spec_lib
from vivit_jax import train
from vivit_jax import workdir as workdir_lib
from vivit_jax.data import pipeline


def _config(**overrides):
  config = vivit_jax.load_config(str(REPO / 'configs/tiny.py'))
  config.update_from_flattened_dict(overrides)
  return config


def _final_params(workdir):
  return checkpoints.restore_params(str(workdir), step=6)


def _assert_same_params(a, b):
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, atol=1e-6), a, b)


def _one_line_error(result: subprocess.CompletedProcess) -> str:
  assert result.returncode != 0
  assert 'Traceback' not in result.stderr, result.stderr[-3000:]
  return result.stderr.strip().splitlines()[-1]


def _run(*args, timeout=300):
  return subprocess.run(
      [sys.executable, 'run.py', *args], cwd=REPO, capture_output=True,
      text=True, timeout=timeout, env=dict(os.environ, PYTHONPATH=str(REPO)))


@pytest.fixture(scope='module')
def lone_run(tmp_path_factory) -> pathlib.Path:
  workdir = tmp_path_factory.mktemp('lone')
  train.train_and_evaluate(_config(), str(workdir))
  return workdir


def test_a_second_run_on_a_workdir_is_refused(lone_run, tmp_path):
  first = subprocess.Popen(
      [sys.executable, 'run.py', '--config=configs/tiny.py',
       f'--workdir={tmp_path}'], cwd=REPO, stdout=subprocess.PIPE,
      stderr=subprocess.PIPE, text=True,
      env=dict(os.environ, PYTHONPATH=str(REPO)))
  lock = tmp_path / workdir_lib.LOCK_NAME
  deadline = time.time() + 120
  while not (lock.exists() and lock.read_text()) and time.time() < deadline:
    time.sleep(0.1)
  # Paused while the second run tries the workdir: with compilations cached
  # the first run can otherwise finish before the second one starts.
  os.kill(first.pid, signal.SIGSTOP)
  try:
    second = _run('--config=configs/tiny.py', f'--workdir={tmp_path}')
  finally:
    os.kill(first.pid, signal.SIGCONT)
  _, first_stderr = first.communicate(timeout=300)
  assert first.returncode == 0, first_stderr[-3000:]
  assert _one_line_error(second) == (
      f'WorkdirError: {tmp_path} is in use by process {first.pid} (lock '
      f'{lock}): wait for it to finish, or give another --workdir.')
  _assert_same_params(_final_params(tmp_path), _final_params(lone_run))


def _truncate_an_array_file(checkpoint: pathlib.Path) -> None:
  arrays = max((p for p in checkpoint.rglob('*') if p.is_file()
                and '/d/' in str(p)), key=lambda p: p.stat().st_size)
  arrays.write_bytes(arrays.read_bytes()[:arrays.stat().st_size // 2])


def _delete_metadata(checkpoint: pathlib.Path) -> None:
  for path in checkpoint.rglob('_METADATA'):
    path.unlink()


@pytest.mark.parametrize('damage', [_truncate_an_array_file,
                                    _delete_metadata])
def test_a_damaged_newest_checkpoint_falls_back_to_the_previous(
    damage, lone_run, tmp_path, monkeypatch, caplog):
  sigterm_at_step(4, monkeypatch)
  with pytest.raises(train.TrainingStopped, match='SIGTERM at step 4'):
    train.train_and_evaluate(_config(), str(tmp_path))
  monkeypatch.undo()
  assert checkpoints.saved_steps(str(tmp_path)) == [3, 4]
  damage(tmp_path / 'checkpoints' / '4')

  results = train.train_and_evaluate(_config(), str(tmp_path))
  assert 'Checkpoint 4 in' in caplog.text and 'cannot be restored' in (
      caplog.text)
  assert 'Resuming from the checkpoint of step 3.' in caplog.text
  _assert_same_params(_final_params(tmp_path), _final_params(lone_run))
  assert results['steps'] == 6


def test_a_full_disk_is_one_line_and_the_rerun_resumes(lone_run, tmp_path,
                                                       monkeypatch):
  save = checkpoints.ocp.CheckpointManager.save

  def no_space_at_step_6(manager, step, *args, **kwargs):
    if step == 6:
      raise OSError(errno.ENOSPC, 'No space left on device',
                    str(manager.directory))
    return save(manager, step, *args, **kwargs)

  monkeypatch.setattr(checkpoints.ocp.CheckpointManager, 'save',
                      no_space_at_step_6)
  with pytest.raises(checkpoints.CheckpointError) as error:
    train.train_and_evaluate(_config(), str(tmp_path))
  assert str(error.value) == (
      f'No space left on device writing checkpoint 6 to {tmp_path}/checkpoints'
      f'; the last safe checkpoint is step 3 in {tmp_path}/checkpoints. Free '
      'space and run the same command to resume.')
  monkeypatch.undo()
  train.train_and_evaluate(_config(), str(tmp_path))
  _assert_same_params(_final_params(tmp_path), _final_params(lone_run))


def test_a_full_disk_while_logging_is_one_line(tmp_path, monkeypatch):
  def no_space(writer, step, scalars):
    raise OSError(errno.ENOSPC, 'No space left on device',
                  str(tmp_path / logs.CSV_NAME))

  monkeypatch.setattr(logs.MetricWriter, 'write_scalars', no_space)
  with pytest.raises(checkpoints.CheckpointError,
                     match=r'^No space left on device writing .*metrics\.csv; '
                     'no checkpoint was saved. Free space'):
    train.train_and_evaluate(_config(), str(tmp_path))


def test_divergence_start():
  assert train.divergence_start([(1, 0.7), (2, 0.5), (3, 0.6)]) is None
  assert train.divergence_start(
      [(1, 0.7), (2, 0.1), (3, 2.0), (4, 0.3), (5, 9e9), (6, float('nan'))]
  ) == 5
  assert train.divergence_start([(1, float('nan'))]) == 1


def test_a_diverged_run_resumes_from_before_the_divergence(tmp_path,
                                                           monkeypatch):
  train_batches = pipeline.train_batches

  def diverging(source, start):
    for index, batch in enumerate(train_batches(source, start)):
      step = start + index + 1
      if step >= 4:  # A loss a million times larger, then not a number.
        batch = {**batch, 'targets': batch['targets'] * 1e6}
      if step >= 6:
        batch = {**batch, 'inputs': batch['inputs'] * np.nan}
      yield batch

  monkeypatch.setattr(pipeline, 'train_batches', diverging)
  config = _config(checkpoint_steps=1, max_checkpoints_to_keep=10)
  with pytest.raises(train.TrainingStopped) as error:
    train.train_and_evaluate(config, str(tmp_path))
  aside = tmp_path / 'diverged_checkpoints'
  assert str(error.value) == (
      f'Loss is nan at step 6 (diverging since step 4): the checkpoints from '
      f'step 4 on, taken as the loss rose, are moved to {aside}; the same '
      'command resumes from step 3, before the divergence. Lower '
      'config.lr_configs.base_learning_rate or set config.max_grad_norm.')
  assert checkpoints.saved_steps(str(tmp_path)) == [1, 2, 3]
  assert sorted(os.listdir(aside)) == ['4', '5']


def test_bad_input_is_one_line_before_anything_compiles(tmp_path):
  unknown = _run('--config=configs/tiny.py', '--config.bogus_key=1',
                 f'--workdir={tmp_path}')
  assert _one_line_error(unknown).startswith('Invalid --config: ')
  assert 'bogus_key' in _one_line_error(unknown)

  missing = tmp_path / 'missing.npz'
  pretrained = _run('--config=configs/adrenal_deit.py:central_frame',
                    f'--config.init_from.checkpoint_path={missing}',
                    f'--workdir={tmp_path / "w"}')
  assert _one_line_error(pretrained) == (
      f'ConfigError: config.init_from.checkpoint_path: {missing} does not '
      'exist. Give the path of a ViT .npz, a Hugging Face folder, a '
      'vivit-jax workdir or a Scenic checkpoint.')
  assert not (tmp_path / 'w' / 'checkpoints').exists()


def test_sgd_on_an_adamw_config_takes_its_defaults():
  spec = spec_lib.check_config(_config(optimizer='sgd'))
  assert spec.config.optimizer_configs.to_dict() == {'momentum': 0.9,
                                                     'weight_decay': 0.0}
  assert spec.notes == ("config.optimizer_configs.{beta1, beta2, epsilon} are "
                        "not used by optimizer 'sgd'.",)


def test_resuming_with_another_model_is_one_line(lone_run):
  result = _run('--config=configs/tiny.py', '--config.model.num_layers=2',
                f'--workdir={lone_run}')
  assert _one_line_error(result).startswith(
      'WorkdirError: The config does not match the one')
  assert 'model.num_layers 1 -> 2' in _one_line_error(result)


def test_eval_after_a_stop_before_validation_uses_the_latest(tmp_path,
                                                             monkeypatch):
  sigterm_at_step(2, monkeypatch)
  with pytest.raises(train.TrainingStopped):
    train.train_and_evaluate(_config(), str(tmp_path))
  assert evaluate.evaluate_workdir(str(tmp_path))['best_step'] == 2
