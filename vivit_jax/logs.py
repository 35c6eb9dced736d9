"""What a run tells: progress lines on the console, and scalar logs in its
workdir: TensorBoard events (tensorboardX) in `WORKDIR/tensorboard` and
`WORKDIR/metrics.csv`, one `step,name,value` row per scalar (e.g.
`120,val/auc,0.81`).

A resumed run drops what was logged after its checkpoint's step, so the logs
read as those of an uninterrupted run.
"""

import contextlib
import csv
import logging
import os
import sys
import time
from typing import Iterator

import pandas as pd
import tensorboardX

CSV_NAME = 'metrics.csv'
logger = logging.getLogger('vivit_jax')


def show_progress() -> None:
  """Makes the package's INFO lines visible on stderr, unless the program
  (or absl) has set up logging of its own."""
  if logger.handlers or logging.getLogger().handlers:
    if logger.level == logging.NOTSET:
      logger.setLevel(logging.INFO)
    return
  handler = logging.StreamHandler(sys.stderr)
  handler.setFormatter(logging.Formatter('%(asctime)s %(message)s',
                                         '%H:%M:%S'))
  logger.addHandler(handler)
  logger.setLevel(logging.INFO)


def read_scalars(workdir: str) -> pd.DataFrame:
  """The CSV log as a table with columns step, name, value."""
  path = os.path.join(workdir, CSV_NAME)
  if not os.path.exists(path) or not os.path.getsize(path):
    return pd.DataFrame({'step': [], 'name': [], 'value': []})
  return pd.read_csv(path)


class MetricWriter:
  """Writes scalars to TensorBoard and the CSV log, from step `start_step`."""

  def __init__(self, workdir: str, start_step: int = 0):
    kept = read_scalars(workdir)
    kept = kept[kept.step <= start_step]
    self._csv_path = os.path.join(workdir, CSV_NAME)
    kept.to_csv(self._csv_path, index=False, lineterminator='\n')
    self._csv_file = open(self._csv_path, 'a', newline='')
    self._csv = csv.writer(self._csv_file, lineterminator='\n')
    self._tensorboard = tensorboardX.SummaryWriter(
        os.path.join(workdir, 'tensorboard'), purge_step=start_step + 1)

  def write_scalars(self, step: int, scalars: dict[str, float]) -> None:
    for name, value in scalars.items():
      self._csv.writerow([step, name, float(value)])
      self._tensorboard.add_scalar(name, float(value), step)
    self._csv_file.flush()

  def close(self) -> None:
    with contextlib.suppress(OSError):
      self._csv_file.close()
    with contextlib.suppress(Exception):  # Its writer thread may have died.
      self._tensorboard.close()


def format_seconds(seconds: float) -> str:
  minutes, seconds = divmod(int(seconds), 60)
  hours, minutes = divmod(minutes, 60)
  return f'{hours}:{minutes:02d}:{seconds:02d}'


class Progress:
  """The progress line and the scalars of each logging window.

  Samples/s and the ETA leave out the time spent in `paused()` (validation,
  checkpoints); `seconds()` counts everything since the run's first start.
  The share of the window spent waiting for the input pipeline (batches
  taken through `waiting_for`) is logged as `train/input_wait_share`. Only
  process 0 writes.
  """

  def __init__(self, workdir: str, start_step: int, total_steps: int,
               batch_size: int, write: bool):
    self._writer = MetricWriter(workdir, start_step) if write else None
    logged = read_scalars(workdir).query("name == 'train/seconds'")
    logged = logged[logged.step <= start_step]
    self._seconds_before = logged.value.iloc[-1] if len(logged) else 0.0
    self._total_steps, self._batch_size = total_steps, batch_size
    self._start = self._window_start = time.time()
    self._window_first_step, self._paused = start_step, 0.0
    self._waiting = 0.0

  def waiting_for(self, batches: Iterator[dict]) -> Iterator[dict]:
    """`batches`, timing how long each takes to arrive."""
    while True:
      start = time.time()
      try:
        batch = next(batches)
      except StopIteration:
        return
      self._waiting += time.time() - start
      yield batch

  def seconds(self) -> float:
    return float(self._seconds_before + time.time() - self._start)

  def log_train(self, step: int, computed: dict[str, float],
                learning_rate: float, epoch: float) -> None:
    """Logs the training metrics of the steps since the last call."""
    window = max(time.time() - self._window_start - self._paused, 1e-9)
    steps_per_s = (step - self._window_first_step) / window
    logger.info(
        'step %d/%d (epoch %.2f) | loss %.4f | accuracy %.4f | lr %.3g | '
        '%.1f samples/s | ETA %s', step, self._total_steps, epoch,
        computed['loss'], computed['accuracy'], learning_rate,
        steps_per_s * self._batch_size,
        format_seconds((self._total_steps - step) / max(steps_per_s, 1e-9)))
    self.write(step, {
        **{f'train/{name}': value for name, value in computed.items()},
        'train/learning_rate': learning_rate,
        'train/samples_per_second': steps_per_s * self._batch_size,
        'train/input_wait_share': min(self._waiting / window, 1.0),
        'train/seconds': self.seconds()})
    self._window_start, self._window_first_step, self._paused = (
        time.time(), step, 0.0)
    self._waiting = 0.0

  def write(self, step: int, scalars: dict[str, float]) -> None:
    if self._writer:
      self._writer.write_scalars(step, scalars)

  @contextlib.contextmanager
  def paused(self):
    start = time.time()
    try:
      yield
    finally:
      self._paused += time.time() - start

  def close(self) -> None:
    if self._writer:
      self._writer.close()
