"""The term project's hyper-parameter grid (its Sections III.C and IV.A,
Table I) on OrganMNIST3D (28^3): ViViT-1's recipe
(`configs/termproject.py:vivit1`) over learning rates {1e-3, 1e-4, 1e-5},
widths {64, 128, 256} (MLP 4 x width), heads {4, 8}, layers {6, 8} and cubic
tubelets {4, 7}: 72 runs, printed as Table I.

  python -m benchmarks.termproject_sweep --workdir_root=/tmp/table1
  python -m benchmarks.termproject_sweep --print_only   # just the commands

The paper's tubelets of 6 and 8 voxels do not divide 28 (its Keras model's
VALID convolution drops the last 4 voxels of each axis); the models here
need a divisor, so the grid has 4 and 7. Runs are sequential; rerunning
skips those already done.
"""

import itertools
import os
import shlex

from absl import app
from absl import flags

from benchmarks import training_runs
from vivit_jax import logs

_WORKDIR_ROOT = flags.DEFINE_string('workdir_root', '/tmp/termproject_sweep',
                                    'One workdir per run below this folder.')
_DATA_DIR = flags.DEFINE_string('data_dir', None,
                                'Folder with organmnist3d.npz.')
_PRINT_ONLY = flags.DEFINE_bool('print_only', False,
                                'Print the commands instead of running them.')

CONFIG = 'configs/termproject.py:vivit1'
LEARNING_RATES = (1e-3, 1e-4, 1e-5)
WIDTHS = (64, 128, 256)
HEADS = (4, 8)
LAYERS = (6, 8)
TUBELETS = (4, 7)


def _overrides(learning_rate, width, heads, layers, tubelet) -> dict:
  overrides = {
      'lr_configs.base_learning_rate': learning_rate,
      'model.hidden_size': width, 'model.mlp_dim': 4 * width,
      'model.num_heads': heads, 'model.num_layers': layers,
      'model.patches.size': f'({tubelet},{tubelet},{tubelet})'}
  if _DATA_DIR.value:
    overrides['dataset_configs.data_dir'] = _DATA_DIR.value
  return overrides


def _last_train_loss(workdir: str) -> float:
  scalars = logs.read_scalars(workdir)
  return scalars[scalars.name == 'train/loss'].value.iloc[-1]


def main(argv):
  del argv
  rows = ['| learning rate | width | heads | layers | tubelet | test top-1 '
          '(%) | test top-5 (%) | last train loss |', '|---' * 8 + '|']
  for point in itertools.product(LEARNING_RATES, WIDTHS, HEADS, LAYERS,
                                 TUBELETS):
    learning_rate, width, heads, layers, tubelet = point
    workdir = os.path.join(
        _WORKDIR_ROOT.value,
        f'lr{learning_rate:g}_d{width}_h{heads}_l{layers}_t{tubelet}')
    if _PRINT_ONLY.value:
      print(shlex.join(training_runs.command(CONFIG, workdir,
                                             _overrides(*point))))
      continue
    test = training_runs.train(CONFIG, workdir, _overrides(*point))['test']
    rows.append(
        f'| {learning_rate:g} | {width} | {heads} | {layers} | '
        f'({tubelet},{tubelet},{tubelet}) | {100 * test["top1"]:.2f} | '
        f'{100 * test["top5"]:.2f} | {_last_train_loss(workdir):.2f} |')
  if not _PRINT_ONLY.value:
    print('\n'.join(rows))


if __name__ == '__main__':
  app.run(main)
