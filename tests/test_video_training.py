"""End-to-end training on video files: configs/video_tiny.py learns the
direction of moving squares, and a run resumed mid-epoch ends as an
uninterrupted one. These target the training loop that consumes
`vivit_jax.data.VideoSource` (train_batch(step), eval_batches(split))."""

import json
import os
import signal

import jax
import numpy as np
import pandas as pd
import pytest

import vivit_jax
from tests import video_fixtures
from tests.conftest import REPO
from vivit_jax import checkpoints
from vivit_jax import logs
from vivit_jax import train
from vivit_jax.data import video_source


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
  """48 training, 12 validation and 24 test videos of 3 classes, and one
  corrupt training file."""
  root = str(tmp_path_factory.mktemp('videos'))
  video_fixtures.write_dataset(root, per_class=(16, 4, 8))
  video_fixtures.write_corrupt(os.path.join(root, 'train', 'up', 'bad.mp4'))
  return root


def _config(data_dir, **overrides):
  config = vivit_jax.load_config(str(REPO / 'configs/video_tiny.py'))
  config.dataset_configs.data_dir = data_dir
  for field, value in overrides.items():
    config[field] = value
  return config


def _train_losses(workdir) -> pd.Series:
  scalars = logs.read_scalars(str(workdir))
  return scalars[scalars.name == 'train/loss'].set_index('step').value


def test_video_tiny_learns_the_direction_of_motion(data_dir, tmp_path):
  results = train.train_and_evaluate(_config(data_dir), str(tmp_path))
  assert json.loads((tmp_path / 'results.json').read_text()) == results
  assert results['skipped_files'] == {
      os.path.join(data_dir, 'train', 'up', 'bad.mp4'): 1}
  # Chance is 1/3; up and down differ only in the order of the frames.
  assert results['test']['top1'] >= 0.6, results['test']


def test_resumed_mid_epoch_ends_as_an_uninterrupted_run(data_dir, tmp_path,
                                                        monkeypatch):
  config = _config(data_dir, num_training_steps=9, log_summary_steps=1)
  steps_per_epoch = 48 // config.batch_size
  uninterrupted = tmp_path / 'uninterrupted'
  train.train_and_evaluate(config, str(uninterrupted))

  resumed = tmp_path / 'resumed'
  train_batch = video_source.VideoSource.train_batch

  def sigterm_at_step_4(self, step):
    if step == 4:
      os.kill(os.getpid(), signal.SIGTERM)
    return train_batch(self, step)

  monkeypatch.setattr(video_source.VideoSource, 'train_batch',
                      sigterm_at_step_4)
  with pytest.raises(train.TrainingStopped, match='SIGTERM'):
    train.train_and_evaluate(config, str(resumed))
  stopped_at = checkpoints.open_manager(str(resumed)).latest_step()
  assert 0 < stopped_at < 9 and stopped_at % steps_per_epoch, stopped_at
  monkeypatch.undo()

  train.train_and_evaluate(config, str(resumed))
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6),
               checkpoints.restore_params(str(resumed), step=9),
               checkpoints.restore_params(str(uninterrupted), step=9))
  pd.testing.assert_series_equal(_train_losses(resumed),
                                 _train_losses(uninterrupted))
