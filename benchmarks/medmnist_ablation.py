"""The recipe's ablation on a MedMNIST 3D set: `configs/medmnist3d.py`, then
each ingredient added in turn to the row above, one run per row; the
validation figures (of the best-validation checkpoint) decide, the test
figures are those each run read once at its end.

  python -m benchmarks.medmnist_ablation --data_dir=../shared/data \
      --workdir_root=/tmp/ablation --rows=recipe,stem

Runs are sequential; rerunning skips those already done.
"""

import os

from absl import app
from absl import flags

from benchmarks import training_runs

# Row name -> (what it adds, the config overrides it adds to the row above).
INGREDIENTS = {
    'recipe': ('configs/medmnist3d.py as it is', {}),
    'stem': ('convolutional stem of 16 and 32 filters, 1^3 tubelets (343 '
             'tokens)', {'model.stem_features': '(16,32)',
                         'model.patches.size': '(1,1,1)'}),
    'mixup': ('mixup, alpha 0.2', {'augmentation.mixup_alpha': 0.2}),
    'epochs60': ('60 epochs instead of 20', {'num_training_epochs': 60}),
}

_DATASET = flags.DEFINE_string('dataset', 'adrenalmnist3d',
                               'configs/medmnist3d.py argument.')
_DATA_DIR = flags.DEFINE_string('data_dir', None,
                                'Folder with the set\'s .npz.')
_WORKDIR_ROOT = flags.DEFINE_string('workdir_root', '/tmp/ablation',
                                    'One workdir per row below this folder.')
_ROWS = flags.DEFINE_list('rows', list(INGREDIENTS),
                          f'Rows, in order, from {list(INGREDIENTS)}.')
_SEED = flags.DEFINE_integer('seed', 0, 'config.rng_seed of every row.')


def main(argv):
  del argv
  overrides = {'rng_seed': _SEED.value}
  if _DATA_DIR.value:
    overrides['dataset_configs.data_dir'] = _DATA_DIR.value
  lines = ['| row | adds | val ACC | val AUC | test ACC | test AUC | '
           'classes predicted (test) | train s |',
           '|---|---|---|---|---|---|---|---|']
  for row in _ROWS.value:
    adds, changes = INGREDIENTS[row]
    overrides.update(changes)
    result = training_runs.train(
        f'configs/medmnist3d.py:{_DATASET.value}',
        os.path.join(_WORKDIR_ROOT.value, f'{row}_seed{_SEED.value}'),
        dict(overrides))
    val, test = result['val'], result['test']
    lines.append(
        f'| {row} | {adds} | {val["acc"]:.3f} | {val["auc"]:.3f} | '
        f'{test["acc"]:.3f} | {test["auc"]:.3f} | '
        f'{test["predicted_classes"]} | {result["train_seconds"]:.0f} |')
  print('\n'.join(lines))


if __name__ == '__main__':
  app.run(main)
