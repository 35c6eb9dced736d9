"""Does the training loop add hidden costs? Its samples/s (from the training
log: data preparation, host syncs, logging and checkpoints included,
validation excluded) against `--mode=bench`'s for the same config (the
compiled step alone, on a batch already on the devices), in one process.

  python -m benchmarks.loop_vs_bench [--config=configs/medmnist3d.py:adrenalmnist3d]

Prints one JSON line: bench_samples_per_s, loop_samples_per_s, ratio (loop /
bench) and the load averages before and after.
"""

import json
import os
import statistics
import tempfile

from absl import app
from absl import flags

import vivit_jax
from vivit_jax import bench
from vivit_jax import logs

_CONFIG = flags.DEFINE_string('config', 'configs/medmnist3d.py:adrenalmnist3d',
                              'Config file[:arg].')
_STEPS = flags.DEFINE_integer('steps', 120, 'Training steps to log.')


def main(argv):
  del argv
  load_before = os.getloadavg()
  config = vivit_jax.load_config(_CONFIG.value)
  figures = bench.benchmark(config, warmup_steps=3, timed_steps=20)
  config.num_training_steps = _STEPS.value
  config.log_summary_steps = 10
  config.log_eval_steps = _STEPS.value  # Validation once, at the end.
  with tempfile.TemporaryDirectory() as workdir:
    vivit_jax.train_and_evaluate(config, workdir)
    scalars = logs.read_scalars(workdir)
  rates = scalars[scalars.name == 'train/samples_per_second'].value.tolist()
  loop = statistics.median(rates[1:])  # The first window holds compilation.
  print(json.dumps({
      'config': _CONFIG.value,
      'bench_samples_per_s': round(figures['train_samples_per_s'], 2),
      'loop_samples_per_s': round(loop, 2),
      'ratio': round(loop / figures['train_samples_per_s'], 3),
      'load_before': [round(x, 2) for x in load_before],
      'load_after': [round(x, 2) for x in os.getloadavg()],
  }))


if __name__ == '__main__':
  app.run(main)
