"""The figures of a finished run: loss, accuracy and AUC curves, the test
confusion matrix and ROC curves (matplotlib, Agg backend: no display)."""

import itertools
from typing import Sequence

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
import numpy as np
import pandas as pd
from sklearn import metrics


def plot_curves(runs: dict[str, pd.DataFrame], steps_per_epoch: int,
                path: str) -> None:
  """Training and validation loss and accuracy, and validation AUC, against
  epochs.

  Args:
    runs: label prefix ('' for a single run) -> the run's log
      (`logs.read_scalars`), with `train/loss`, `train/accuracy`,
      `val/loss`, `val/accuracy` and `val/auc` rows.
    steps_per_epoch: converts steps to epochs.
    path: the PNG to write.
  """
  figure, axes = plt.subplots(1, 3, figsize=(15, 4))
  for ax, quantity in zip(axes, ('loss', 'accuracy', 'auc')):
    for (prefix, scalars), split in itertools.product(runs.items(),
                                                      ('train', 'val')):
      rows = scalars[scalars.name == f'{split}/{quantity}']
      if rows.empty:
        continue
      ax.plot(rows.step / steps_per_epoch, rows.value,
              marker='o' if split == 'val' else None, label=prefix + split)
    ax.set_xlabel('epoch')
    ax.set_ylabel(quantity)
    ax.legend()
  figure.tight_layout()
  figure.savefig(path, dpi=100)
  plt.close(figure)


def plot_confusion_matrix(labels: np.ndarray, predictions: np.ndarray,
                          class_names: Sequence[str], path: str) -> None:
  """Counts of (true class, predicted class) over `labels` (N,) and
  `predictions` (N,), written as a PNG to `path`."""
  num_classes = len(class_names)
  counts = np.zeros((num_classes, num_classes), np.int64)
  np.add.at(counts, (labels, predictions), 1)
  size = max(4.0, 0.6 * num_classes + 2)
  figure, ax = plt.subplots(figsize=(size, size))
  ax.imshow(counts, cmap='Blues')
  for (row, column), count in np.ndenumerate(counts):
    ax.text(column, row, str(count), ha='center', va='center',
            color='white' if count > counts.max() / 2 else 'black')
  ax.set_xticks(range(num_classes), class_names, rotation=45, ha='right')
  ax.set_yticks(range(num_classes), class_names)
  ax.set_xlabel('predicted')
  ax.set_ylabel('true')
  figure.tight_layout()
  figure.savefig(path, dpi=100)
  plt.close(figure)


def plot_roc_curves(labels: np.ndarray, probabilities: np.ndarray,
                    class_names: Sequence[str], path: str) -> None:
  """ROC curves of `probabilities` (N, K) against `labels` (N,): the
  positive class's for two classes, one-vs-rest per class otherwise."""
  figure, ax = plt.subplots(figsize=(5, 5))
  classes = [len(class_names) - 1] if len(class_names) == 2 else range(
      len(class_names))
  for k in classes:
    positive = labels == k
    if positive.all() or not positive.any():
      continue
    false_positive, true_positive, _ = metrics.roc_curve(
        positive, probabilities[:, k])
    auc = metrics.auc(false_positive, true_positive)
    ax.plot(false_positive, true_positive,
            label=f'{class_names[k]} (AUC {auc:.3f})')
  ax.plot([0, 1], [0, 1], color='grey', linestyle=':')
  ax.set_xlabel('false positive rate')
  ax.set_ylabel('true positive rate')
  ax.legend(loc='lower right', fontsize='small')
  figure.tight_layout()
  figure.savefig(path, dpi=100)
  plt.close(figure)
