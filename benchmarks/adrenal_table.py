"""The README's AdrenalMNIST3D table: ViViT Models 1-4, the 3D CNN, VTN and
C-VidTr (`configs/adrenal.py`), 3 seeds each, test ACC and AUC of the best
validation checkpoint as mean +- standard deviation, beside MedMNIST v2's
published baselines.

  python -m benchmarks.adrenal_table --data_dir=../shared/data \
      --workdir_root=/tmp/adrenal_table

Runs are sequential; rerunning skips those already done.
"""

import os

from absl import app
from absl import flags
import numpy as np

from benchmarks import training_runs

_DATA_DIR = flags.DEFINE_string('data_dir', None,
                                'Folder with adrenalmnist3d.npz.')
_WORKDIR_ROOT = flags.DEFINE_string('workdir_root', '/tmp/adrenal_table',
                                    'One workdir per run below this folder.')
_SEEDS = flags.DEFINE_list('seeds', ['0', '1', '2'], 'config.rng_seed values.')
_MODELS = flags.DEFINE_list(
    'models', ['model1', 'model2', 'model3', 'model4', 'cnn3d'],
    'configs/adrenal.py arguments.')

NAMES = {'model1': 'ViViT Model 1 (spatio-temporal)',
         'model2': 'ViViT Model 2 (factorised encoder)',
         'model3': 'ViViT Model 3 (factorised self-attention)',
         'model4': 'ViViT Model 4 (factorised dot-product)',
         'cnn3d': '3D CNN (term project)',
         'vtn': 'VTN (ViT per slice, Longformer)',
         'vidtr': 'C-VidTr (separable, topK_std)'}
# The best published figures on AdrenalMNIST3D (28) of MedMNIST v2 (Yang et
# al., Scientific Data 2023, Table 4): (test ACC, test AUC).
BASELINES = {'auto-sklearn (best ACC)': ('0.802', ''),
             'ResNet-18 + ACS (best AUC)': ('', '0.839')}


def main(argv):
  del argv
  rows = ['| model | params | train s | test ACC | test AUC |',
          '|---|---|---|---|---|']
  overrides = {'dataset_configs.data_dir': _DATA_DIR.value} if (
      _DATA_DIR.value) else {}
  for model in _MODELS.value:
    runs = [training_runs.train(
        f'configs/adrenal.py:{model}',
        os.path.join(_WORKDIR_ROOT.value, f'{model}_seed{seed}'),
        {'rng_seed': seed, **overrides})
            for seed in _SEEDS.value]
    acc, auc = (np.array([run['test'][name] for run in runs])
                for name in ('acc', 'auc'))
    rows.append(
        f'| {NAMES[model]} | {runs[0]["params"]:,} | '
        f'{np.mean([run["train_seconds"] for run in runs]):.0f} | '
        f'{acc.mean():.3f} ± {acc.std():.3f} | '
        f'{auc.mean():.3f} ± {auc.std():.3f} |')
  rows += [f'| MedMNIST v2: {name} | | | {acc} | {auc} |'
           for name, (acc, auc) in BASELINES.items()]
  print('\n'.join(rows))


if __name__ == '__main__':
  app.run(main)
