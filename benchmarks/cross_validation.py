"""Candidate recipes compared by K-fold cross-validation over a set's train
and val splits (`vivit_jax.data.folds`): one run per fold, each scoring its
held-out fold once with the checkpoint its validation fold chose. The set's
test split is not evaluated, so the comparison can choose a recipe that is
then tested once.

  python -m benchmarks.cross_validation --data_dir=../shared/data \
      --workdir_root=/tmp/cv \
      --candidates=first+plain+epochs20,first+plain+stem,configs/adrenal.py:cnn3d

A candidate is either rows of `benchmarks.ingredients` joined by '+'
(their changes applied in turn to configs/medmnist3d.py) or a config file
with its argument. A run's workdir is `{candidate}_fold{k}` for seed 0 and
`{candidate}_seed{s}_fold{k}` for seed s (a config's path and ':' turned
into '_'); rerunning skips finished runs. Each figure is the mean +-
standard deviation (ddof 0) over the folds; every candidate sees the same
folds, so its AUC is also compared with the first row's fold by fold (the
mean and spread of the differences). With several `--seeds`, each
candidate has a row per seed, and one more for the ensemble of its seeds:
on each fold, the mean of their held-out probabilities (`predictions.csv`).
"""

import os

from absl import app
from absl import flags
import numpy as np
import pandas as pd

from benchmarks import ingredients
from benchmarks import training_runs
from vivit_jax import metrics
from vivit_jax.data import medmnist

_WORKDIR_ROOT = flags.DEFINE_string('workdir_root', '/tmp/cross_validation',
                                    'One workdir per candidate and fold.')
_CANDIDATES = flags.DEFINE_list(
    'candidates', ['+'.join(ingredients.RECIPE_ROWS)],
    'Ablation rows joined by "+", or config files with their argument.')
_NUM_FOLDS = flags.DEFINE_integer('num_folds', 5, 'Folds (3 or more).')
_SEEDS = flags.DEFINE_list('seeds', ['0'], 'config.rng_seed of the runs.')


def config_and_overrides(candidate: str, dataset: str) -> tuple[str, dict]:
  """The config argument of `run.py` and the overrides of a candidate."""
  if '.py' in candidate:
    return candidate, {}
  rows = candidate.split('+')
  unknown = sorted(set(rows) - set(ingredients.INGREDIENTS))
  if unknown:
    raise app.UsageError(f'Unknown rows {unknown} in candidate {candidate!r}: '
                         f'use {list(ingredients.INGREDIENTS)} or a '
                         'config file.')
  return (f'configs/medmnist3d.py:{dataset}',
          ingredients.overrides(rows, dataset))


def _ensemble(workdirs: list[str], task: str) -> dict:
  """{'acc', 'auc', 'predicted_classes'} of the mean held-out probabilities
  of the runs in `workdirs` (one fold)."""
  tables = [pd.read_csv(os.path.join(w, 'predictions.csv')) for w in workdirs]
  if any(not t['index'].equals(tables[0]['index']) for t in tables):
    raise ValueError(f'The runs in {workdirs} scored different examples.')
  probabilities = np.mean([t.filter(like='p_').to_numpy() for t in tables], 0)
  return {**metrics.medmnist_acc_auc(task, tables[0]['label'].to_numpy(),
                                     probabilities),
          'predicted_classes': len(np.unique(probabilities.argmax(-1)))}


def main(argv):
  del argv
  dataset, data_dir = (ingredients.DATASET.value,
                       ingredients.data_dir_override())
  seeds = [int(seed) for seed in _SEEDS.value]
  mean_std = ingredients.mean_std
  lines = ['| candidate | held-out ACC | held-out AUC | AUC - first row\'s, '
           'fold by fold | classes predicted (held-out) | train s |',
           '|---|---|---|---|---|---|']
  first_aucs = None
  for candidate in _CANDIDATES.value:
    config, changes = config_and_overrides(candidate, dataset)
    name = candidate.replace('/', '_').replace(':', '_')
    workdirs = {seed: [os.path.join(
        _WORKDIR_ROOT.value, f'{name}{f"_seed{seed}" if seed else ""}'
        f'_fold{fold}') for fold in range(_NUM_FOLDS.value)]
                for seed in seeds}
    rows = {}
    for seed in seeds:
      rows[f'{candidate}, seed {seed}' if len(seeds) > 1 else candidate] = [
          training_runs.train(config, workdir, {
              **data_dir, **changes, 'rng_seed': seed,
              'cross_validation.num_folds': _NUM_FOLDS.value,
              'cross_validation.fold': fold})
          for fold, workdir in enumerate(workdirs[seed])]
    if len(seeds) > 1:
      rows[f'{candidate}, ensemble of seeds {",".join(_SEEDS.value)}'] = [
          {'test': _ensemble(list(fold_workdirs), medmnist.task(dataset))}
          for fold_workdirs in zip(*workdirs.values())]
    for row, results in rows.items():
      figures = [mean_std([r['test'][metric] for r in results])
                 for metric in ('acc', 'auc')]
      aucs = np.array([r['test']['auc'] for r in results])
      first_aucs = aucs if first_aucs is None else first_aucs
      figures.append(mean_std(aucs - first_aucs))
      classes = ','.join(str(r['test']['predicted_classes'])
                         for r in results)
      seconds = (mean_std([r['train_seconds'] for r in results], digits=0)
                 if 'train_seconds' in results[0] else '-')
      lines.append(f'| {row} | {" | ".join(figures)} | {classes} | '
                   f'{seconds} |')
  print(f'{_NUM_FOLDS.value}-fold cross-validation over train + val of '
        f'{dataset}, seeds {",".join(_SEEDS.value)}:')
  print('\n'.join(lines))


if __name__ == '__main__':
  app.run(main)
