"""Two JAX processes on this machine, joined by `jax.distributed.initialize`
over loopback with 2 CPU devices each, train configs/tiny.py to the losses of
one process with 4 devices."""

import socket
import subprocess
import sys

import pandas as pd
import pytest

from tests.conftest import REPO, SHARED, host_devices_env
from vivit_jax import logs

DATA_DIR = SHARED / 'data'
TIMEOUT_S = 300

pytestmark = pytest.mark.skipif(
    not (DATA_DIR / 'adrenalmnist3d.npz').exists(),
    reason=f'needs the real AdrenalMNIST3D files in {DATA_DIR}')


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def _train(workdir, num_devices: int, *flags: str) -> subprocess.Popen:
  """Starts run.py training configs/tiny.py on `num_devices` CPU devices."""
  return subprocess.Popen(
      [sys.executable, 'run.py', '--config=configs/tiny.py',
       f'--config.dataset_configs.data_dir={DATA_DIR}',
       f'--workdir={workdir}', *flags],
      cwd=REPO, env=host_devices_env(num_devices), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
      text=True)


def _wait(processes) -> None:
  """Waits for all of `processes`; fails with the first error, if any."""
  try:
    errors = [process.communicate(timeout=TIMEOUT_S)[1]
              for process in processes]
  finally:
    for process in processes:
      process.kill()
  for process, error in zip(processes, errors):
    assert process.returncode == 0, error[-4000:]


def _train_losses(workdir) -> pd.Series:
  scalars = logs.read_scalars(str(workdir))
  return scalars[scalars.name == 'train/loss'].set_index('step').value


def test_two_processes_train_as_one_with_four_devices(tmp_path):
  address = f'127.0.0.1:{_free_port()}'
  two_processes = [
      _train(tmp_path / 'two_processes', 2, f'--coordinator_address={address}',
             '--num_processes=2', f'--process_id={index}')
      for index in range(2)]
  one_process = _train(tmp_path / 'one_process', 4)
  _wait(two_processes + [one_process])
  losses = _train_losses(tmp_path / 'two_processes')
  assert list(losses.index) == [1, 2, 3, 4, 5, 6]
  pd.testing.assert_series_equal(
      losses, _train_losses(tmp_path / 'one_process'), rtol=1e-5)
