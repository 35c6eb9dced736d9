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
from typing import Sequence

import numpy as np

from absl import app
from absl import flags

from benchmarks import training_runs
from vivit_jax.data import medmnist

# Row name -> (what it changes, the config overrides it adds to the rows
# before it on the command line). FLIPS: the set's label-preserving flips.
FLIPS = 'flips'
INGREDIENTS = {
    'recipe': ('configs/medmnist3d.py as it is', {}),
    'first': ('the first recipe: no stem, 4^3 tubelets (343 tokens), shifts '
              'of 3, flips, intensity jitter 0.1, label smoothing 0.1, '
              'stochastic depth 0.1, weight decay 0.05, 20 epochs, 2 of '
              'warm-up',
              {'model.stem_features': (), 'model.patches.size': (4, 4, 4),
               'augmentation.max_shift': 3,
               'augmentation.intensity_jitter': 0.1,
               'augmentation.flip_axes': FLIPS,
               'augmentation.label_smoothing': 0.1,
               'model.stochastic_droplayer_rate': 0.1,
               'optimizer_configs.weight_decay': 0.05,
               'num_training_epochs': 20, 'lr_configs.warmup_epochs': 2.0}),
    'stem': ('convolutional stem of 16 and 32 filters, 1^3 tubelets (343 '
             'tokens)', {'model.stem_features': (16, 32),
                         'model.patches.size': (1, 1, 1)}),
    'widestem': ('convolutional stem of 32 and 64 filters (the 3D CNN\'s '
                 'first two widths), 1^3 tubelets (343 tokens)',
                 {'model.stem_features': (32, 64),
                  'model.patches.size': (1, 1, 1)}),
    'plain': ('no augmentation, label smoothing, stochastic depth or weight '
              'decay; 6 epochs, 1 of warm-up',
              {'augmentation.max_shift': 0,
               'augmentation.intensity_jitter': 0.0,
               'augmentation.flip_axes': (),
               'augmentation.label_smoothing': 0.0,
               'model.stochastic_droplayer_rate': 0.0,
               'optimizer_configs.weight_decay': 0.0,
               'num_training_epochs': 6, 'lr_configs.warmup_epochs': 1.0}),
    'flips': ('the set\'s label-preserving flips',
              {'augmentation.flip_axes': FLIPS}),
    'tta': ('the set\'s label-preserving flips in training, and evaluation '
            'averaging the logits over all their combinations',
            {'augmentation.flip_axes': FLIPS,
             'augmentation.eval_flips': True}),
    'mixup': ('mixup, alpha 0.2', {'augmentation.mixup_alpha': 0.2}),
    'ema': ('validation, checkpoints and test of the parameters\' moving '
            'average, decay 0.99', {'ema_decay': 0.99}),
    'epochs20': ('20 epochs, 2 of warm-up',
                 {'num_training_epochs': 20, 'lr_configs.warmup_epochs': 2.0}),
    'epochs40': ('40 epochs, 2 of warm-up',
                 {'num_training_epochs': 40, 'lr_configs.warmup_epochs': 2.0}),
}

# configs/medmnist3d.py is these rows (tests/test_recipe.py checks it).
RECIPE_ROWS = ('first', 'plain', 'epochs20')


def overrides(rows: Sequence[str], dataset: str) -> dict:
  """The config overrides of `rows` applied in turn, for `dataset`."""
  flips = medmnist.default_flip_axes(dataset)
  merged = {}
  for row in rows:
    merged.update({key: flips if value == FLIPS else value
                   for key, value in INGREDIENTS[row][1].items()})
  return merged


_DATASET = flags.DEFINE_string('dataset', 'adrenalmnist3d',
                               'configs/medmnist3d.py argument.')
_DATA_DIR = flags.DEFINE_string('data_dir', None,
                                'Folder with the set\'s .npz.')
_WORKDIR_ROOT = flags.DEFINE_string('workdir_root', '/tmp/ablation',
                                    'One workdir per row below this folder.')
_ROWS = flags.DEFINE_list('rows', list(INGREDIENTS),
                          f'Rows, in order, from {list(INGREDIENTS)}.')
_SEEDS = flags.DEFINE_list('seeds', ['0'], 'config.rng_seed of each run.')
_LAST_ONLY = flags.DEFINE_bool(
    'last_only', False, 'Train and report the last row only (with the '
    'changes of all rows), not each row before it.')


def _mean_std(values, digits: int = 3) -> str:
  if len(values) == 1:
    return f'{values[0]:.{digits}f}'
  return f'{np.mean(values):.{digits}f} ± {np.std(values):.{digits}f}'


def main(argv):
  del argv
  data_dir = ({'dataset_configs.data_dir': _DATA_DIR.value}
              if _DATA_DIR.value else {})
  seeds = [int(seed) for seed in _SEEDS.value]
  lines = ['| rows | change | val ACC | val AUC | test ACC | test AUC | '
           'classes predicted (test) | train s |',
           '|---|---|---|---|---|---|---|---|']
  last = len(_ROWS.value)
  for rows in [_ROWS.value[:end] for end in range(
      last if _LAST_ONLY.value else 1, last + 1)]:
    changes = overrides(rows, _DATASET.value)
    results = [training_runs.train(
        f'configs/medmnist3d.py:{_DATASET.value}',
        os.path.join(_WORKDIR_ROOT.value, f'{"+".join(rows)}_seed{seed}'),
        {**data_dir, **changes, 'rng_seed': seed}) for seed in seeds]
    figures = [_mean_std([r[split][metric] for r in results])
               for split in ('val', 'test') for metric in ('acc', 'auc')]
    classes = ','.join(str(r['test']['predicted_classes']) for r in results)
    seconds = _mean_std([r['train_seconds'] for r in results], digits=0)
    lines.append(f'| {"+".join(rows)} | {INGREDIENTS[rows[-1]][0]} | '
                 f'{" | ".join(figures)} | {classes} | {seconds} |')
  print('\n'.join(lines))


if __name__ == '__main__':
  app.run(main)
