"""vivit-jax entry point.

  python run.py --config=configs/adrenal.py:model1 --workdir=/tmp/m1  # train
  python run.py --config=configs/adrenal.py:model1 --workdir=/tmp/m1 \
      --mode=eval                                # evaluate the best checkpoint
  python run.py --config=configs/vivit_b.py:kinetics400 --mode=summary

Running `--mode=train` again on the same workdir resumes from its latest
checkpoint. Several hosts: give each process --coordinator_address,
--num_processes and --process_id (or the JAX_COORDINATOR_ADDRESS,
JAX_NUM_PROCESSES and JAX_PROCESS_ID variables), and the same config.
"""

import json
import logging as python_logging
import os

from absl import app
from absl import flags
from absl import logging
import jax
from ml_collections import config_flags

from vivit_jax import bench
from vivit_jax.pretrained import readers
from vivit_jax import data
from vivit_jax import summary
from vivit_jax import train

_CONFIG = config_flags.DEFINE_config_file(
    'config', None, 'Experiment config file, optionally FILE:ARG.',
    lock_config=True)
_MODE = flags.DEFINE_enum('mode', 'train', ['train', 'eval', 'summary', 'bench'],
                          'train (then evaluate on test), eval, summary, bench.')
_WORKDIR = flags.DEFINE_string('workdir', None, 'Checkpoints, logs, results.')
_COORDINATOR_ADDRESS = flags.DEFINE_string(
    'coordinator_address', os.environ.get('JAX_COORDINATOR_ADDRESS'),
    'host:port of process 0, for training on several hosts.')
_NUM_PROCESSES = flags.DEFINE_integer(
    'num_processes', os.environ.get('JAX_NUM_PROCESSES'),
    'Number of processes (hosts); with --coordinator_address.')
_PROCESS_ID = flags.DEFINE_integer(
    'process_id', os.environ.get('JAX_PROCESS_ID'),
    'This process\'s index in [0, num_processes).')
flags.mark_flag_as_required('config')


def _not_orbax_info(record: python_logging.LogRecord) -> bool:
  """Drops orbax's INFO lines (a dozen per checkpoint), keeps its warnings."""
  return (record.levelno >= python_logging.WARNING or
          f'{os.sep}orbax{os.sep}' not in record.pathname)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  config = _CONFIG.value
  if _MODE.value == 'summary':
    try:
      summary.print_summary(config)
    except ValueError as error:
      raise SystemExit(f'Invalid config: {error}') from error
    return
  logging.get_absl_handler().addFilter(_not_orbax_info)
  if _COORDINATOR_ADDRESS.value:
    jax.distributed.initialize(_COORDINATOR_ADDRESS.value,
                               _NUM_PROCESSES.value, _PROCESS_ID.value)
  logging.info('JAX process %d of %d, %d local devices of %d.',
               jax.process_index(), jax.process_count(),
               jax.local_device_count(), jax.device_count())
  try:
    train.validate_config(config)
  except (ValueError, data.DataError) as error:
    raise SystemExit(f'Invalid config: {error}') from error
  if _MODE.value == 'bench':
    bench.print_benchmark(config)
    return
  if not _WORKDIR.value:
    raise app.UsageError(f'--mode={_MODE.value} needs --workdir.')
  try:
    if _MODE.value == 'train':
      train.train_and_evaluate(config, _WORKDIR.value)
    else:
      print(json.dumps(train.evaluate_workdir(config, _WORKDIR.value)))
  except (FileNotFoundError, data.DataError, readers.CheckpointError,
          train.TrainingStopped) as error:
    raise SystemExit(f'{type(error).__name__}: {error}') from error


if __name__ == '__main__':
  app.run(main)
