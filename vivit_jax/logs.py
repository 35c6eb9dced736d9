"""Scalar logs of a run: TensorBoard events (tensorboardX) in
`WORKDIR/tensorboard` and `WORKDIR/metrics.csv`, one `step,name,value` row per
scalar (e.g. `120,val/auc,0.81`).

A resumed run drops what was logged after its checkpoint's step, so the logs
read as those of an uninterrupted run.
"""

import csv
import os

import pandas as pd
import tensorboardX

CSV_NAME = 'metrics.csv'


def read_scalars(workdir: str) -> pd.DataFrame:
  """The CSV log as a table with columns step, name, value."""
  path = os.path.join(workdir, CSV_NAME)
  if not os.path.exists(path):
    return pd.DataFrame({'step': [], 'name': [], 'value': []})
  return pd.read_csv(path)


class MetricWriter:
  """Writes scalars to TensorBoard and the CSV log, from step `start_step`."""

  def __init__(self, workdir: str, start_step: int = 0):
    os.makedirs(workdir, exist_ok=True)
    kept = read_scalars(workdir)
    kept = kept[kept.step <= start_step]
    self._csv_path = os.path.join(workdir, CSV_NAME)
    kept.to_csv(self._csv_path, index=False)
    self._csv_file = open(self._csv_path, 'a', newline='')
    self._csv = csv.writer(self._csv_file)
    self._tensorboard = tensorboardX.SummaryWriter(
        os.path.join(workdir, 'tensorboard'), purge_step=start_step + 1)

  def write_scalars(self, step: int, scalars: dict[str, float]) -> None:
    for name, value in scalars.items():
      self._csv.writerow([step, name, float(value)])
      self._tensorboard.add_scalar(name, float(value), step)
    self._csv_file.flush()

  def close(self) -> None:
    self._csv_file.close()
    self._tensorboard.close()
