"""ACC and AUC as MedMNIST's official evaluator defines them.

`medmnist_acc_auc` reproduces `medmnist.evaluator.getACC` and `getAUC` for the
tasks of the 3D sets, so reported figures compare with the MedMNIST
benchmarks:
  binary-class: the score is the last column; ACC thresholds it at 0.5 and
    AUC is its ROC AUC.
  multi-class: ACC is that of the argmax; AUC is the mean over classes of the
    one-vs-rest ROC AUC.
"""

import numpy as np
from sklearn import metrics

TASKS = ('binary-class', 'multi-class')


def _roc_auc(positive: np.ndarray, score: np.ndarray) -> float:
  """ROC AUC; NaN where undefined (medmnist raises): one class present."""
  if positive.min() == positive.max():
    return float('nan')
  return float(metrics.roc_auc_score(positive, score))


def medmnist_acc_auc(task: str, labels: np.ndarray, scores: np.ndarray
                     ) -> dict[str, float]:
  """MedMNIST's ACC and AUC of predictions on a split.

  Args:
    task: medmnist's INFO task, 'binary-class' or 'multi-class'.
    labels: (N,) or (N, 1) class indices.
    scores: (N, K) class probabilities (softmax of the logits).
  Returns:
    {'acc': float, 'auc': float}.
  """
  labels = np.asarray(labels).reshape(-1)
  scores = np.asarray(scores).reshape(len(labels), -1)
  if task == 'binary-class':
    positive_score = scores[:, -1]
    return {'acc': float(np.mean(labels == (positive_score > 0.5))),
            'auc': _roc_auc(labels, positive_score)}
  if task == 'multi-class':
    auc = np.mean([_roc_auc(labels == k, scores[:, k])
                   for k in range(scores.shape[1])])
    return {'acc': float(np.mean(labels == np.argmax(scores, axis=-1))),
            'auc': float(auc)}
  raise ValueError(f'MedMNIST 3D tasks are {TASKS}, not {task!r}.')
