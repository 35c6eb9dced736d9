"""vivit-jax on the command line.

  python run.py --config=configs/medmnist3d.py:adrenalmnist3d \
      --workdir=workdirs/adrenal                 # train, then test
  python run.py --workdir=workdirs/adrenal --mode=eval
  python run.py --workdir=workdirs/adrenal --mode=predict --input=volumes/
  python run.py --config=configs/vivit_b.py:kinetics400 --mode=summary
  python run.py --config=configs/vivit_b.py:kinetics400 --mode=bench

Running `--mode=train` again on the same workdir resumes from its newest
checkpoint. eval and predict read the config the workdir was trained with;
predict also takes `--config` with `--config.init_from.checkpoint_path`
instead of a workdir. Several hosts: give each process
--coordinator_address, --num_processes and --process_id (or the
JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and JAX_PROCESS_ID variables),
and the same config.
"""

import json
import logging as python_logging
import os

from absl import app
from absl import flags
from absl import logging
import jax
from ml_collections import config_flags

from vivit_jax import allocator
from vivit_jax import bench
from vivit_jax import checkpoints
from vivit_jax import data
from vivit_jax import evaluate
from vivit_jax import predict
from vivit_jax import pretrained
from vivit_jax import spec
from vivit_jax import summary
from vivit_jax import train
from vivit_jax import workdir as workdir_lib

_CONFIG = config_flags.DEFINE_config_file(
    'config', None, 'Experiment config file, optionally FILE:ARG.',
    lock_config=True)
_MODE = flags.DEFINE_enum(
    'mode', 'train', ['train', 'eval', 'summary', 'bench', 'predict'],
    'train (then evaluate on test), eval, summary, bench, predict.')
_WORKDIR = flags.DEFINE_string('workdir', None, 'Checkpoints, logs, results.')
_INPUT = flags.DEFINE_string(
    'input', None, '--mode=predict: an .npy/.npz of clips, or a folder.')
_TOP_K = flags.DEFINE_integer('top_k', 3, '--mode=predict: labels listed.')
_COORDINATOR_ADDRESS = flags.DEFINE_string(
    'coordinator_address', os.environ.get('JAX_COORDINATOR_ADDRESS'),
    'host:port of process 0, for training on several hosts.')
_NUM_PROCESSES = flags.DEFINE_integer(
    'num_processes', os.environ.get('JAX_NUM_PROCESSES'),
    'Number of processes (hosts); with --coordinator_address.')
_PROCESS_ID = flags.DEFINE_integer(
    'process_id', os.environ.get('JAX_PROCESS_ID'),
    'This process\'s index in [0, num_processes).')

# What ends a run with one line instead of a traceback.
_ONE_LINE_ERRORS = (
    spec.ConfigError, data.DataError, FileNotFoundError,
    checkpoints.CheckpointError, pretrained.CheckpointError,
    workdir_lib.WorkdirError, predict.InputError, train.TrainingStopped)


def _parse_flags(argv: list[str]) -> list[str]:
  """absl's parsing, with a bad --config (an unknown field, a wrong type, a
  failing get_config) as one line."""
  try:
    return flags.FLAGS(argv)
  except flags.Error as error:
    raise SystemExit(f'{os.path.basename(argv[0])}: {error}') from None
  except Exception as error:  # pylint: disable=broad-except
    message = ' '.join(str(error).split())
    if isinstance(error, (AttributeError, KeyError)):  # An unknown field.
      field = message.strip('"')
      raise SystemExit(
          f'Invalid --config: the config has no field {field}'
          '. Name a field by its whole path, as in the config file (e.g. '
          '--config.lr_configs.warmup_epochs).') from None
    raise SystemExit(f'Invalid --config: {type(error).__name__}: '
                     f'{message}') from None


def _not_orbax_info(record: python_logging.LogRecord) -> bool:
  """Drops orbax's INFO lines (a dozen per checkpoint) and its notes on
  restoring part of a checkpoint; keeps its other warnings."""
  if f'{os.sep}orbax{os.sep}' not in record.pathname:
    return True
  return record.levelno >= python_logging.WARNING and not any(
      noise in record.getMessage() for noise in (
          'Requested `tracked_metric_name`', 'could not be restored'))


def _run(mode: str) -> None:
  if mode in ('summary', 'bench', 'train') and _CONFIG.value is None:
    raise app.UsageError(f'--mode={mode} needs --config.')
  if mode == 'summary':
    summary.print_summary(_CONFIG.value)
  elif mode == 'bench':
    bench.print_benchmark(_CONFIG.value)
  elif mode == 'predict':
    if not _INPUT.value:
      raise app.UsageError('--mode=predict needs --input.')
    classifier = (predict.Classifier.from_workdir(_WORKDIR.value, _CONFIG.value)
                  if _WORKDIR.value else
                  predict.Classifier.from_config(_CONFIG.value))
    for record in predict.predict_path(classifier, _INPUT.value, _TOP_K.value):
      print(json.dumps(record), flush=True)
  elif not _WORKDIR.value:
    raise app.UsageError(f'--mode={mode} needs --workdir.')
  elif mode == 'train':
    train.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  else:
    print(json.dumps(evaluate.evaluate_workdir(
        _WORKDIR.value, _CONFIG.value)))


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  allocator.keep_freed_memory()
  logging.get_absl_handler().addFilter(_not_orbax_info)
  if _COORDINATOR_ADDRESS.value:
    jax.distributed.initialize(_COORDINATOR_ADDRESS.value,
                               _NUM_PROCESSES.value, _PROCESS_ID.value)
  try:
    _run(_MODE.value)
  except _ONE_LINE_ERRORS as error:
    raise SystemExit(f'{type(error).__name__}: {error}') from None


if __name__ == '__main__':
  app.run(main, flags_parser=_parse_flags)
