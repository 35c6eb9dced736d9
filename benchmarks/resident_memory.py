"""A config's resident memory over train steps, with malloc as it comes or
set as `run.py` sets it (`--keep_freed_memory`, `vivit_jax.allocator`).

Compiles the project's train step (`bench.compile_train_step`) and runs
`--steps` steps, printing the process's resident set every `--every` steps
and its peak; the last line is one JSON object.

  python -m benchmarks.resident_memory --config=configs/termproject.py:vivit1
  python -m benchmarks.resident_memory --config=configs/termproject.py:vivit1 \\
      --keep_freed_memory
"""

import json
import resource

from absl import app
from absl import flags
import jax
from ml_collections import config_flags

from vivit_jax import allocator
from vivit_jax import bench
from vivit_jax import models
from vivit_jax import spec as spec_lib
from vivit_jax import steps

_CONFIG = config_flags.DEFINE_config_file(
    'config', 'configs/termproject.py:vivit1', 'The config to train.',
    lock_config=False)
_STEPS = flags.DEFINE_integer('steps', 80, 'Train steps.')
_EVERY = flags.DEFINE_integer('every', 20, 'Steps between readings.')
_KEEP_FREED_MEMORY = flags.DEFINE_bool(
    'keep_freed_memory', False,
    'Set malloc as run.py does (vivit_jax.allocator) first.')


def _resident_mib() -> float:
  with open('/proc/self/statm') as statm:
    return int(statm.read().split()[1]) * resource.getpagesize() / 2**20


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  kept = _KEEP_FREED_MEMORY.value and allocator.keep_freed_memory()
  spec = spec_lib.check_config(_CONFIG.value, mode='model')
  model = models.create_model(spec, axis_name=steps.AXIS)
  run_step, _ = bench.compile_train_step(spec, model)
  readings = {}
  for step in range(1, _STEPS.value + 1):
    jax.block_until_ready(run_step())
    if step % _EVERY.value == 0 or step == 1:
      readings[step] = round(_resident_mib())
      print(f'step {step}: {readings[step]} MiB resident', flush=True)
  peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
  print(json.dumps({'config': _CONFIG.value.experiment_name,
                    'keep_freed_memory': kept,
                    'resident_mib_by_step': readings,
                    'peak_resident_mib': round(peak)}))


if __name__ == '__main__':
  app.run(main)
