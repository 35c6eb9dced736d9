"""vivit_jax.metrics against MedMNIST's official evaluator."""

import contextlib
import io

import numpy as np
import pytest

from vivit_jax import metrics

with contextlib.redirect_stdout(io.StringIO()):  # medmnist asks for torch.
  evaluator = pytest.importorskip(
      'medmnist.evaluator',
      reason='compares with medmnist: pip install --no-deps medmnist==3.0.2')


def predictions(seed, num_classes, num_examples=300, decimals=None):
  """Labels (N, 1) as medmnist stores them and softmax scores (N, K)."""
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, num_classes, (num_examples, 1))
  logits = rng.normal(size=(num_examples, num_classes)) + 2 * np.eye(
      num_classes)[labels[:, 0]] * rng.random((num_examples, 1))
  scores = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
  return labels, scores if decimals is None else np.round(scores, decimals)


@pytest.mark.parametrize('seed', range(4))
@pytest.mark.parametrize('task, num_classes', [('binary-class', 2),
                                               ('multi-class', 3),
                                               ('multi-class', 11)])
@pytest.mark.parametrize('decimals', [None, 1])  # 1: many tied scores.
def test_matches_medmnist_evaluator(seed, task, num_classes, decimals):
  labels, scores = predictions(seed, num_classes, decimals=decimals)
  ours = metrics.medmnist_acc_auc(task, labels, scores)
  assert ours['acc'] == pytest.approx(
      evaluator.getACC(labels, scores, task), abs=1e-12)
  assert ours['auc'] == pytest.approx(
      evaluator.getAUC(labels, scores, task), abs=1e-12)


def test_binary_acc_thresholds_the_last_column():
  scores = np.array([[0.6, 0.4], [0.5, 0.5], [0.2, 0.8], [0.9, 0.1]])
  result = metrics.medmnist_acc_auc('binary-class', np.array([0, 1, 1, 1]),
                                    scores)
  assert result == {'acc': 0.5, 'auc': pytest.approx(2 / 3)}


def test_auc_is_nan_where_a_class_is_absent():
  labels, scores = predictions(0, 3)
  result = metrics.medmnist_acc_auc('multi-class', labels.clip(0, 1), scores)
  assert np.isnan(result['auc']) and 0 <= result['acc'] <= 1


def test_other_tasks_are_refused():
  with pytest.raises(ValueError, match='ordinal-regression'):
    metrics.medmnist_acc_auc('ordinal-regression', np.zeros(2), np.zeros(2))
