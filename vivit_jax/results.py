"""What a finished run reports: `results.json`, `predictions.csv` (the test
split, one row per example) and the figures `curves.png`,
`confusion_matrix.png` and `roc_curve.png` in its workdir. For an ensemble
they describe the mean prediction of its members, and `curves.png` shows
every member's training."""

import json
import logging
import os
from typing import Optional, Union

import jax
import numpy as np
import pandas as pd

from vivit_jax import logs
from vivit_jax import plots
from vivit_jax import spec as spec_lib

logger = logging.getLogger(__name__)


def summarize(spec: spec_lib.Spec, params, *,
              best_step: Union[int, list[int]], val: dict, test: dict,
              train_seconds: float,
              pretrain_seconds: Optional[float] = None,
              skipped: Optional[dict] = None) -> dict:
  """The contents of results.json; warns when the model predicts a single
  class on the test split.

  Args:
    params: the parameters of the model (of one member of an ensemble).
    best_step: the step of the checkpoint evaluated; a list, one per member,
      for an ensemble.
    train_seconds: of all members together, for an ensemble.
    pretrain_seconds: those of masked pre-training when this process ran it
      (a resumed run does not).
  """
  config = spec.config
  results = {
      'dataset': config.dataset_configs.dataset_name,
      'model': spec.model_name,
      'attention': (config.model.attention_config.type
                    if spec.model_name == 'vivit' else None),
      'experiment': config.experiment_name,
      'params': sum(int(np.prod(p.shape)) for p in jax.tree.leaves(params)),
      'ensemble_size': config.ensemble_size,
      'steps': spec.total_steps,
      'best_step': best_step,
      'train_seconds': round(train_seconds, 1),
      **({'pretrain_seconds': round(pretrain_seconds, 1)}
         if pretrain_seconds is not None else {}),
      'val': val,
      'test': test,
      'warnings': [],
  }
  cross_validation = config.cross_validation
  if cross_validation.num_folds:
    results['cross_validation'] = {
        'num_folds': cross_validation.num_folds,
        'fold': cross_validation.fold,
        'note': (f"'test' is fold {cross_validation.fold} of the train and val "
                 "splits, held out from training and validation; the set's "
                 'test split was not evaluated.')}
  if test['predicted_classes'] == 1 and spec.num_classes > 1:
    warning = ('The model predicts a single class on every test example: its '
               "ACC is that class's share of the split, and only its AUC says "
               'whether it ranks the examples at all.')
    logger.warning('%s', warning)
    results['warnings'].append(warning)
  if skipped:
    results['skipped_files'] = dict(skipped)
  logger.info('Results: %s', json.dumps(results))
  return results


def write(workdir: str, spec: spec_lib.Spec, results: dict,
          test_predictions, run_workdirs: list[str]) -> None:
  """Writes results.json, predictions.csv and the figures; the training
  curves are those logged in `run_workdirs` (an ensemble's members, or
  [workdir])."""
  with open(os.path.join(workdir, 'results.json'), 'w') as f:
    json.dump(results, f, indent=2)
  p = test_predictions
  table = pd.DataFrame({'index': np.arange(len(p.labels)), 'label': p.labels})
  for k, name in enumerate(spec.class_names):
    table[f'p_{name}'] = p.probabilities[:, k]
  table.to_csv(os.path.join(workdir, 'predictions.csv'), index=False,
               lineterminator='\n')
  plots.plot_confusion_matrix(
      p.labels, p.probabilities.argmax(-1), spec.class_names,
      os.path.join(workdir, 'confusion_matrix.png'))
  plots.plot_roc_curves(p.labels, p.probabilities, spec.class_names,
                        os.path.join(workdir, 'roc_curve.png'))
  runs = {'' if len(run_workdirs) == 1 else f'member {k}, ':
          logs.read_scalars(run_workdir)
          for k, run_workdir in enumerate(run_workdirs)}
  plots.plot_curves(runs, spec.steps_per_epoch,
                    os.path.join(workdir, 'curves.png'))
