"""The recipe's ablation on a MedMNIST 3D set: `configs/medmnist3d.py`, then
each change of `--rows` applied in turn on top of the rows before it, one
run per row; the validation figures (of the best-validation checkpoint)
decide, the test figures are those each run read once at its end.

  python -m benchmarks.medmnist_ablation --data_dir=../shared/data \
      --workdir_root=/tmp/ablation --rows=recipe,stem
  python -m benchmarks.medmnist_ablation --data_dir=../shared/data \
      --workdir_root=/tmp/ablation --rows=plain,flips

Runs are sequential; rerunning skips those already done.
"""

import os

from absl import app
from absl import flags

from benchmarks import training_runs
from vivit_jax.data import medmnist

# Row name -> (what it changes, the config overrides it adds to the rows
# before it on the command line). '{flips}': the set's label-preserving flips.
INGREDIENTS = {
    'recipe': ('configs/medmnist3d.py as it is', {}),
    'stem': ('convolutional stem of 16 and 32 filters, 1^3 tubelets (343 '
             'tokens)', {'model.stem_features': '(16,32)',
                         'model.patches.size': '(1,1,1)'}),
    'plain': ('no augmentation, label smoothing, stochastic depth or weight '
              'decay; 6 epochs, 1 of warm-up',
              {'augmentation.max_shift': 0,
               'augmentation.intensity_jitter': 0.0,
               'augmentation.flip_axes': '()',
               'augmentation.label_smoothing': 0.0,
               'model.stochastic_droplayer_rate': 0.0,
               'optimizer_configs.weight_decay': 0.0,
               'num_training_epochs': 6, 'lr_configs.warmup_epochs': 1.0}),
    'flips': ('the set\'s label-preserving flips',
              {'augmentation.flip_axes': '{flips}'}),
    'mixup': ('mixup, alpha 0.2', {'augmentation.mixup_alpha': 0.2}),
    'epochs20': ('20 epochs, 2 of warm-up (the recipe\'s)',
                 {'num_training_epochs': 20, 'lr_configs.warmup_epochs': 2.0}),
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
  lines = ['| row | change | val ACC | val AUC | test ACC | test AUC | '
           'classes predicted (test) | train s |',
           '|---|---|---|---|---|---|---|---|']
  flips = str(medmnist.default_flip_axes(_DATASET.value)).replace(' ', '')
  for row in _ROWS.value:
    adds, changes = INGREDIENTS[row]
    overrides.update({key: value.replace('{flips}', flips)
                      if isinstance(value, str) else value
                      for key, value in changes.items()})
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
