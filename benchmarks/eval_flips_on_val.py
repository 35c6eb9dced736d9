"""Validation figures of finished runs' best checkpoints, evaluated as they
are and with test-time flips (`augmentation.eval_flips` over the set's
label-preserving flips); the test split is not read.

  python -m benchmarks.eval_flips_on_val workdirs/ablation/first+plain_seed0 \
      workdirs/ablation/first+plain+stem_seed0

Prints one JSON line per workdir: {'workdir', 'as_trained', 'flips'}, each
{'acc', 'auc', 'loss'}.
"""

import json

from absl import app

from vivit_jax import data
from vivit_jax import evaluate
from vivit_jax import spec as spec_lib
from vivit_jax import steps
from vivit_jax import workdir as workdir_lib


def _validation(workdir: str, flips: bool) -> dict:
  config = workdir_lib.load_config(workdir)
  if flips:
    with config.unlocked():
      config.augmentation.flip_axes = data.medmnist.default_flip_axes(
          config.dataset_configs.dataset_name)
      config.augmentation.eval_flips = True
  spec, model, variables, _ = evaluate.restore_for_eval(workdir, config)
  spec = spec_lib.check_config(spec.config, mode='eval')
  val, _ = evaluate.evaluate_split(
      steps.make_eval_step(model), steps.replicate(variables),
      data.create_source(spec.config), 'val')
  return {name: round(val[name], 4) for name in ('acc', 'auc', 'loss')}


def main(argv):
  for workdir in argv[1:]:
    print(json.dumps({'workdir': workdir,
                      'as_trained': _validation(workdir, flips=False),
                      'flips': _validation(workdir, flips=True)}), flush=True)


if __name__ == '__main__':
  app.run(main)
