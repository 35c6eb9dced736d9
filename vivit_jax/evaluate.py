"""Evaluation: a model's metrics on a split, and a finished run's best
checkpoint on validation and test (`run.py --mode=eval`).

  evaluate_split(eval_step, variables, source, split)  one split
  restore_for_eval(workdir, ...)                        a run's best model
  restore_members(workdir, ...)                         an ensemble's
  evaluate_workdir(workdir)                             its val and test

A split is evaluated over every view the source gives of each example (one
for volumes; clips x crops for videos): the logits of an example's views are
averaged, and the example-level figures come from the averages. ACC and AUC
are MedMNIST's (`metrics`). An ensemble's predictions are the mean of its
members' probabilities (`combine`).
"""

import dataclasses
from typing import Callable, Optional

import jax
from jax.experimental import multihost_utils
import ml_collections
import numpy as np
import optax

from vivit_jax import checkpoints
from vivit_jax import data
from vivit_jax import ensemble
from vivit_jax import metrics
from vivit_jax import models
from vivit_jax import spec as spec_lib
from vivit_jax import steps
from vivit_jax import workdir as workdir_lib
from vivit_jax.data import pipeline


@dataclasses.dataclass
class SplitPredictions:
  """What a model predicted on a split, gathered from all hosts.

  Attributes:
    labels: (N,) int32, one per example.
    logits: (N, K) float32, the mean over each example's views.
    probabilities: (N, K), softmax of `logits`.
    view_logits: (V, K) float32, every view's own logits.
    view_index: (V,) the example of each view.
  """
  labels: np.ndarray
  logits: np.ndarray
  probabilities: np.ndarray
  view_logits: np.ndarray
  view_index: np.ndarray


def predict_split(eval_step: Callable, variables, source, split: str
                  ) -> SplitPredictions:
  """Runs the replicated `variables` over every view of a split."""
  rows = {'logits': [], 'labels': [], 'mask': [], 'index': []}
  for batch in pipeline.eval_batches(source, split):
    logits = eval_step(variables, batch['inputs'])
    rows['logits'].append(np.asarray(logits).reshape(-1, logits.shape[-1]))
    for key in ('labels', 'mask', 'index'):
      rows[key].append(np.asarray(batch[key]).reshape(-1))
  gathered = multihost_utils.process_allgather(
      {key: np.concatenate(value) for key, value in rows.items()}, tiled=True)
  real = gathered['mask'].astype(bool)
  view_logits = gathered['logits'][real].astype(np.float32)
  view_index = gathered['index'][real]
  num_examples = source.num_examples(split)
  sums = np.zeros((num_examples, view_logits.shape[-1]), np.float64)
  np.add.at(sums, view_index, view_logits)
  counts = np.bincount(view_index, minlength=num_examples)
  labels = np.zeros(num_examples, np.int32)
  labels[view_index] = gathered['labels'][real]
  seen = counts > 0
  logits = (sums[seen] / counts[seen, None]).astype(np.float32)
  return SplitPredictions(
      labels=labels[seen], logits=logits,
      probabilities=np.asarray(jax.nn.softmax(logits)),
      view_logits=view_logits, view_index=view_index)


def combine(members: list[SplitPredictions]) -> SplitPredictions:
  """An ensemble's predictions: each example's probabilities (and each
  view's) are the mean of its members' (`ensemble.log_mean_softmax`).

  Raises:
    ValueError: the members predicted different examples or views.
  """
  first = members[0]
  if any(not (np.array_equal(m.labels, first.labels) and
              np.array_equal(m.view_index, first.view_index))
         for m in members[1:]):
    raise ValueError('The members of the ensemble predicted different '
                     'examples.')
  logits = ensemble.log_mean_softmax([m.logits for m in members])
  return SplitPredictions(
      labels=first.labels, logits=logits,
      probabilities=np.asarray(jax.nn.softmax(logits)),
      view_logits=ensemble.log_mean_softmax([m.view_logits for m in members]),
      view_index=first.view_index)


def _top_k_accuracy(logits: np.ndarray, labels: np.ndarray, k: int
                    ) -> Optional[float]:
  if logits.shape[-1] < k:
    return None
  top = np.argsort(-logits, axis=-1)[:, :k]
  return float(np.mean(np.any(top == labels[:, None], axis=-1)))


def split_metrics(predictions: SplitPredictions, task: str) -> dict:
  """{'loss', 'top1', 'top5' (None below 5 classes), 'acc', 'auc' (MedMNIST's),
  'clip_top1', 'clip_top5' (each view on its own), 'views' (per example),
  'predicted_classes' (how many classes the model predicts at all)}."""
  p = predictions
  loss = optax.softmax_cross_entropy_with_integer_labels(p.logits, p.labels)
  example_of_view = {index: row for row, index in enumerate(
      np.unique(p.view_index))}
  clip_labels = p.labels[[example_of_view[i] for i in p.view_index]]
  return {
      'loss': float(np.mean(loss)),
      'top1': _top_k_accuracy(p.logits, p.labels, 1),
      'top5': _top_k_accuracy(p.logits, p.labels, 5),
      **metrics.medmnist_acc_auc(task, p.labels, p.probabilities),
      'clip_top1': _top_k_accuracy(p.view_logits, clip_labels, 1),
      'clip_top5': _top_k_accuracy(p.view_logits, clip_labels, 5),
      'views': round(len(p.view_index) / len(p.labels), 3),
      'predicted_classes': int(len(np.unique(p.logits.argmax(-1)))),
  }


def evaluate_split(eval_step: Callable, variables, source, split: str
                   ) -> tuple[dict, SplitPredictions]:
  """`split_metrics` of the replicated `variables` on a split, and the
  predictions they come from."""
  predictions = predict_split(eval_step, variables, source, split)
  return split_metrics(predictions, source.task), predictions


def restore_best(manager, state: steps.TrainState
                 ) -> tuple[int, steps.TrainState]:
  """The best checkpoint by validation metric (the latest when none was
  validated) into the host `state`; a damaged one is skipped for the newest
  readable one."""
  best = checkpoints.best_or_latest_step(manager)
  order = [best] + sorted(set(manager.all_steps()) - {best}, reverse=True)
  step, (state, _) = checkpoints.restore_first_readable(
      manager, order, lambda s: checkpoints.restore_state(
          manager, s, state, jax.random.key(0)))
  return step, state


def restore_for_eval(workdir: str, config: Optional[
    ml_collections.ConfigDict] = None
                     ) -> tuple[spec_lib.Spec, object, dict, int]:
  """A finished run's model and the variables of its best checkpoint, on
  the host.

  Args:
    config: None reads the workdir's own; a given one must build the same
      model (else `workdir.WorkdirError` names what differs).
  Returns:
    (spec, model, variables, step).
  """
  config = config or workdir_lib.load_config(workdir)
  spec = spec_lib.check_config(config, mode='model')
  workdir_lib.check_matches(workdir, spec)
  model = models.create_model(spec, axis_name=steps.AXIS)
  state = steps.create_train_state(spec, model, jax.random.key(0))
  with checkpoints.open_manager(workdir) as manager:
    step, state = restore_best(manager, state)
  return spec, model, state.eval_variables(), step


def restore_members(workdir: str, config: Optional[
    ml_collections.ConfigDict] = None
                    ) -> tuple[spec_lib.Spec, object, list[dict], list[int]]:
  """`restore_for_eval` of each member of a run (the run itself when it is
  not an ensemble): (spec, model, [variables], [step]), one per member."""
  config = config or workdir_lib.load_config(workdir)
  spec = spec_lib.check_config(config, mode='model')
  if spec.config.ensemble_size == 1:  # restore_for_eval checks the workdir.
    spec, model, variables, step = restore_for_eval(workdir, config)
    return spec, model, [variables], [step]
  workdir_lib.check_matches(workdir, spec)
  members = [restore_for_eval(member_workdir,
                              ensemble.member_config(spec.config, k))
             for k, member_workdir in enumerate(
                 ensemble.member_workdirs(workdir, spec.config))]
  return (spec, members[0][1], [member[2] for member in members],
          [member[3] for member in members])


def evaluate_members(model, members: list[dict], source) -> dict:
  """{'val': metrics, 'test': metrics, 'test_predictions': SplitPredictions}
  of the mean prediction of `members` (host variables of `model`; one for a
  single model)."""
  eval_step = steps.make_eval_step(model)
  members = [steps.replicate(variables) for variables in members]
  results = {}
  for split in ('val', 'test'):
    predictions = combine([predict_split(eval_step, variables, source, split)
                           for variables in members])
    results[split] = split_metrics(predictions, source.task)
  return {**results, 'test_predictions': predictions}


def evaluate_workdir(workdir: str,
                     config: Optional[ml_collections.ConfigDict] = None
                     ) -> dict:
  """Validation and test metrics of a run's best checkpoint (of each
  member's, for an ensemble): {'best_step' (a list for an ensemble), 'val',
  'test'}."""
  spec, model, members, best_steps = restore_members(workdir, config)
  spec = spec_lib.check_config(spec.config, mode='eval')
  results = evaluate_members(model, members, data.create_source(spec.config))
  return {'best_step': best_steps if len(members) > 1 else best_steps[0],
          'val': results['val'], 'test': results['test']}
