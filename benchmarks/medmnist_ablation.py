"""The recipe's ablation on a MedMNIST 3D set: `configs/medmnist3d.py`, then
each change of `--rows` applied in turn on top of the rows before it, one
run per row and seed; the validation figures (of the best-validation
checkpoint) decide, the test figures are those each run read once at its
end. A row's workdir is named by the rows up to it and the seed
(`plain+stem_seed0`), so rows shared by several commands train once.

  python -m benchmarks.medmnist_ablation --data_dir=../shared/data \
      --workdir_root=/tmp/ablation --rows=first,plain,stem --seeds=0,1,2
  python -m benchmarks.medmnist_ablation --data_dir=../shared/data \
      --workdir_root=/tmp/ablation --rows=recipe,tta --seeds=0,1,2 \
      --last_only

Runs are sequential; rerunning skips those already done. With several
seeds each figure is their mean +- standard deviation (ddof 0).
"""

import os

from absl import app
from absl import flags

from benchmarks import ingredients
from benchmarks import training_runs

_WORKDIR_ROOT = flags.DEFINE_string('workdir_root', '/tmp/ablation',
                                    'One workdir per row below this folder.')
_ROWS = flags.DEFINE_list(
    'rows', list(ingredients.INGREDIENTS),
    f'Rows, in order, from {list(ingredients.INGREDIENTS)}.')
_SEEDS = flags.DEFINE_list('seeds', ['0'], 'config.rng_seed of each run.')
_LAST_ONLY = flags.DEFINE_bool(
    'last_only', False, 'Train and report the last row only (with the '
    'changes of all rows), not each row before it.')


def main(argv):
  del argv
  dataset, data_dir = (ingredients.DATASET.value,
                       ingredients.data_dir_override())
  seeds = [int(seed) for seed in _SEEDS.value]
  lines = ['| rows | change | val ACC | val AUC | test ACC | test AUC | '
           'classes predicted (test) | train s |',
           '|---|---|---|---|---|---|---|---|']
  last = len(_ROWS.value)
  for rows in [_ROWS.value[:end] for end in range(
      last if _LAST_ONLY.value else 1, last + 1)]:
    changes = ingredients.overrides(rows, dataset)
    results = [training_runs.train(
        f'configs/medmnist3d.py:{dataset}',
        os.path.join(_WORKDIR_ROOT.value, f'{"+".join(rows)}_seed{seed}'),
        {**data_dir, **changes, 'rng_seed': seed}) for seed in seeds]
    figures = [ingredients.mean_std([r[split][metric] for r in results])
               for split in ('val', 'test') for metric in ('acc', 'auc')]
    classes = ','.join(str(r['test']['predicted_classes']) for r in results)
    seconds = ingredients.mean_std([r['train_seconds'] for r in results],
                                   digits=0)
    change = ingredients.INGREDIENTS[rows[-1]][0]
    lines.append(f'| {"+".join(rows)} | {change} | {" | ".join(figures)} | '
                 f'{classes} | {seconds} |')
  print('\n'.join(lines))


if __name__ == '__main__':
  app.run(main)
