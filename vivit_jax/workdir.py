"""A run's workdir: one run at a time, and the config it was trained with.

  with workdir.locked(path):         # a second run exits naming the PID
    workdir.keep_config(path, spec)  # config.json; a resumed run must match
  config = workdir.load_config(path)  # for eval and predict

The lock is an exclusive `flock` on `WORKDIR/.lock`, which holds the PID of
its owner; the kernel releases it when the process ends, however it ends.
"""

import contextlib
import fcntl
import json
import os
from typing import Iterator

import ml_collections

from vivit_jax import config_builders
from vivit_jax import spec as spec_lib

CONFIG_NAME = 'config.json'
LOCK_NAME = '.lock'

# Fields that shape the parameters or the optimiser state: a checkpoint
# restores only into a config that has the same.
_STRUCTURAL = ('model_name', 'model.', 'dataset_configs.num_classes',
               'dataset_configs.num_frames', 'dataset_configs.crop_size',
               'dataset_configs.num_channels', 'optimizer', 'ema_decay',
               'ensemble_size')
# Model fields that change neither the parameters nor what evaluation
# computes.
_TRAINING_ONLY = ('model.dropout_rate', 'model.attention_dropout_rate',
                  'model.stochastic_droplayer_rate', 'model.remat')


class WorkdirError(Exception):
  """The workdir is in use or does not fit the config; one line."""


@contextlib.contextmanager
def locked(workdir: str) -> Iterator[None]:
  """Holds `workdir`'s exclusive lock (creating the folder).

  Raises:
    WorkdirError: another process holds it.
  """
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, LOCK_NAME)
  with open(path, 'a+') as lock_file:
    try:
      fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      lock_file.seek(0)
      owner = lock_file.read().strip() or 'unknown'
      raise WorkdirError(
          f'{workdir} is in use by process {owner} (lock {path}): wait for it '
          'to finish, or give another --workdir.') from None
    lock_file.seek(0)
    lock_file.truncate()
    lock_file.write(str(os.getpid()))
    lock_file.flush()
    try:
      yield
    finally:
      lock_file.seek(0)
      lock_file.truncate()
      fcntl.flock(lock_file, fcntl.LOCK_UN)


def _flatten(tree: dict, prefix: str = '') -> dict:
  flat = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      flat.update(_flatten(value, f'{prefix}{key}.'))
    else:
      flat[f'{prefix}{key}'] = list(value) if isinstance(value, tuple) else (
          value)
  return flat


def _as_json(config: ml_collections.ConfigDict) -> dict:
  return json.loads(config.to_json_best_effort())


def flat_fields(config: ml_collections.ConfigDict) -> dict:
  """`config` as {'dotted.field': value}, values as config.json has them
  (tuples as lists)."""
  return _flatten(_as_json(config))


def load_config(workdir: str) -> ml_collections.ConfigDict:
  """The config `workdir` was trained with.

  Raises:
    FileNotFoundError: the workdir has no config.json.
  """
  path = os.path.join(workdir, CONFIG_NAME)
  if not os.path.exists(path):
    raise FileNotFoundError(f'{path} does not exist: give the --workdir of a '
                            'run, or --config.')
  with open(path) as f:
    return ml_collections.ConfigDict(json.load(f))


def structural_differences(saved: ml_collections.ConfigDict,
                           config: ml_collections.ConfigDict) -> list[str]:
  """'field saved -> given' for each field that shapes the checkpoint; a
  field the saved config predates counts at its default."""
  saved, _ = config_builders.with_defaults(saved)
  old, new = flat_fields(saved), flat_fields(config)
  return [f'{field} {old.get(field)!r} -> {new.get(field)!r}'
          for field in sorted(set(old) | set(new))
          if field.startswith(_STRUCTURAL) and field not in _TRAINING_ONLY
          and old.get(field) != new.get(field)]


def check_matches(workdir: str, spec: spec_lib.Spec) -> None:
  """Raises WorkdirError if `spec`'s model differs from the workdir's.

  A workdir without a saved config (no run yet) matches anything.
  """
  if not os.path.exists(os.path.join(workdir, CONFIG_NAME)):
    return
  differences = structural_differences(load_config(workdir), spec.config)
  if differences:
    raise WorkdirError(
        f'The config does not match the one {workdir} was trained with '
        f'({CONFIG_NAME}): {", ".join(differences)}. Use that config (omit '
        '--config for eval and predict) or another --workdir.')


def keep_config(workdir: str, spec: spec_lib.Spec) -> None:
  """Checks `spec` against the workdir's config, then saves it there."""
  check_matches(workdir, spec)
  path = os.path.join(workdir, CONFIG_NAME)
  with open(path + '.tmp', 'w') as f:
    f.write(spec.config.to_json_best_effort(indent=2))
  os.replace(path + '.tmp', path)
