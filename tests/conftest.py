"""Shared test helpers: small configs and runs on forced host devices."""

import os
import pathlib
import signal
import subprocess
import sys
import tempfile

import ml_collections
import pytest

# Many tests, and the run.py processes they start, compile the same small
# programs: JAX's persistent compilation cache (keyed by the program, the
# devices and the versions) compiles each once. Set before JAX is imported;
# subprocesses inherit it.
os.environ.setdefault('JAX_COMPILATION_CACHE_DIR', os.path.join(
    tempfile.gettempdir(), 'vivit-jax-tests-xla-cache'))
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0')

from vivit_jax import config_builders  # pylint: disable=g-import-not-at-top
from vivit_jax.data import pipeline  # pylint: disable=g-import-not-at-top

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED = REPO.parent / 'shared'

# Models 1-4 with the classifier each supports.
VIVIT_MODELS = (('spacetime', 'token'), ('factorized_encoder', 'token'),
                ('factorized_self_attention_block', 'gap'),
                ('factorized_dot_product_attention', 'gap'))


def tiny_config(attention_type='spacetime', classifier='token', size=8,
                num_frames=4, patch_size=(4, 4, 2), num_classes=3,
                model_name='vivit') -> ml_collections.ConfigDict:
  """A ViViT (or ViT, 3D CNN) config small enough for unit tests."""
  config = ml_collections.ConfigDict()
  config.model_name = model_name
  config.model_dtype_str = 'float32'
  config.model = config_builders.vivit_model(
      hidden_size=16, num_layers=2, num_heads=4, mlp_dim=32,
      patch_size=patch_size, attention_type=attention_type,
      classifier=classifier, temporal_num_layers=1)
  config.dataset_configs = ml_collections.ConfigDict({
      'dataset_name': 'synthetic', 'num_classes': num_classes,
      'num_frames': num_frames, 'crop_size': size, 'num_channels': 1})
  return config


def host_devices_env(num_devices: int) -> dict:
  """This process's environment for a subprocess that sees `num_devices`
  CPU devices and imports this checkout."""
  return dict(os.environ,
              XLA_FLAGS=f'--xla_force_host_platform_device_count={num_devices}',
              PYTHONPATH=os.pathsep.join([str(REPO),
                                          os.environ.get('PYTHONPATH', '')]))


def run_on_host_devices(script: str, num_devices: int = 4,
                        timeout: int = 300) -> str:
  """Runs a Python script in a fresh process with `num_devices` CPU devices.

  Returns its stdout; fails the test with its stderr if it exits non-zero.
  """
  result = subprocess.run([sys.executable, '-c', script], cwd=REPO,
                          env=host_devices_env(num_devices),
                          capture_output=True, text=True, timeout=timeout)
  if result.returncode:
    pytest.fail(f'Subprocess failed:\n{result.stderr[-4000:]}')
  return result.stdout


def sigterm_at_step(step: int, monkeypatch) -> None:
  """Makes `pipeline.train_batches` send this process SIGTERM as it yields
  the batch of `step` (the first of a stream from `start` is step start +
  1)."""
  train_batches = pipeline.train_batches

  def sigterm(source, start):
    for index, batch in enumerate(train_batches(source, start)):
      if start + index + 1 == step:
        os.kill(os.getpid(), signal.SIGTERM)
      yield batch

  monkeypatch.setattr(pipeline, 'train_batches', sigterm)
