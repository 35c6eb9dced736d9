"""Checkpoints of a training run, kept by orbax's `CheckpointManager`.

Layout: `WORKDIR/checkpoints/STEP/default/` holds one pytree

  {'params':      the model's parameters (float32),
   'batch_stats': BatchNorm statistics (the 3D CNN, a BatchNorm stem),
   'ema_params':  the moving average of 'params' (with config.ema_decay),
   'opt_state':   the optax state,
   'step':        int32 scalar, the number of steps taken,
   'rng':         uint32 key data of the run's dropout key}

as host arrays. Checkpoints written at validation steps record the
validation metrics {'acc', 'auc', 'loss'}, and the manager keeps the last
`config.max_checkpoints_to_keep` checkpoints plus the best one by
`config.checkpoint_metric`, whose name is kept in the root metadata.

A checkpoint that cannot be restored (a truncated or missing file) is
skipped for the newest one that can, and the skip is logged. To use a
trained model's parameters elsewhere:

  params = checkpoints.restore_params('/path/to/workdir')
"""

import errno
import logging
import os
import shutil
from typing import Any, Callable, Optional

import jax
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint.checkpoint_managers import preservation_policy

from vivit_jax import spec as spec_lib

logger = logging.getLogger(__name__)


class CheckpointError(Exception):
  """No checkpoint can be read or written; the message says what to do."""


def checkpoint_dir(workdir: str) -> str:
  return os.path.join(os.path.abspath(workdir), 'checkpoints')


def saved_steps(workdir: str) -> list[int]:
  """The steps of the checkpoint folders in `workdir`, read or not; [] when
  it has none (nothing is created)."""
  directory = checkpoint_dir(workdir)
  if not os.path.isdir(directory):
    return []
  return sorted(int(name) for name in os.listdir(directory) if name.isdigit())


def create_manager(workdir: str, metric: str = 'auc',
                   max_to_keep: int = 2) -> ocp.CheckpointManager:
  """The manager of `workdir`'s checkpoints: the last `max_to_keep` and the
  best by validation `metric` are kept."""
  best_fn = lambda metrics: metrics[metric]
  mode = spec_lib.CHECKPOINT_METRICS[metric]
  options = ocp.CheckpointManagerOptions(
      best_fn=best_fn, best_mode=mode,
      preservation_policy=preservation_policy.AnyPreservationPolicy([
          preservation_policy.LatestN(max_to_keep),
          preservation_policy.BestN(
              get_metric_fn=best_fn, reverse=mode == 'min', n=1,
              keep_checkpoints_without_metrics=False),
      ]),
      enable_async_checkpointing=False)
  return ocp.CheckpointManager(checkpoint_dir(workdir), options=options,
                               metadata={'checkpoint_metric': metric})


def open_manager(workdir: str) -> ocp.CheckpointManager:
  """The manager of an existing run, ranking by the metric it was made with.

  Raises:
    FileNotFoundError: `workdir` holds no checkpoint.
  """
  directory = checkpoint_dir(workdir)
  if not saved_steps(workdir):
    raise FileNotFoundError(
        f'No checkpoints in {directory}: train first with '
        f'`run.py --workdir={workdir}`, or pass the workdir of a run.')
  metadata = ocp.CheckpointManager(directory).metadata().custom_metadata
  return create_manager(workdir, metadata.get('checkpoint_metric', 'auc'))


def is_disk_full(error: BaseException) -> bool:
  """Whether `error` (or what it wraps) is 'No space left on device'."""
  while error is not None:
    if isinstance(error, OSError) and error.errno == errno.ENOSPC:
      return True
    if 'No space left on device' in str(error):
      return True
    error = error.__cause__ or error.__context__
  return False


def save(manager: ocp.CheckpointManager, step: int, tree: dict,
         metrics: Optional[dict] = None) -> None:
  """Saves `tree` (host arrays, see the module docstring) as `step`.

  Raises:
    CheckpointError: the disk is full (what was half-written is removed).
  """
  try:
    manager.save(step, args=ocp.args.StandardSave(tree), metrics=metrics,
                 force=True)
  except Exception as error:  # pylint: disable=broad-except
    if not is_disk_full(error):
      raise
    partial = os.path.join(str(manager.directory), str(step))
    if step not in manager.all_steps(read=True):
      shutil.rmtree(partial, ignore_errors=True)
    latest = [s for s in manager.all_steps(read=True) if s != step]
    safe = (f'the last safe checkpoint is step {max(latest)} in '
            f'{manager.directory}' if latest else 'no checkpoint was saved')
    raise CheckpointError(
        f'No space left on device writing checkpoint {step} to '
        f'{manager.directory}; {safe}. Free space and run the same command '
        'to resume.') from error


def restore(manager: ocp.CheckpointManager, step: int, target: dict) -> dict:
  """Restores `step` into the structure, shapes and dtypes of `target`."""
  return manager.restore(step, args=ocp.args.StandardRestore(target))


def _first_line(error: BaseException) -> str:
  lines = str(error).strip().splitlines()
  return lines[0][:200] if lines else type(error).__name__


def state_tree(state, rng: jax.Array) -> dict:
  """The checkpoint of a host train state and the run's dropout key (see
  the module docstring), as host arrays."""
  tree = {'params': state.params, 'opt_state': state.opt_state,
          'step': state.step, 'rng': jax.random.key_data(rng)}
  if state.batch_stats:
    tree['batch_stats'] = state.batch_stats
  if state.ema_params is not None:
    tree['ema_params'] = state.ema_params
  return jax.tree.map(np.asarray, jax.device_get(tree))


def restore_state(manager: ocp.CheckpointManager, step: int, state,
                  rng: jax.Array):
  """Checkpoint `step` into the host `state`; returns it and the run's
  dropout key."""
  tree = restore(manager, step, state_tree(state, rng))
  # A Python int, as in a fresh state, so that the steps do not recompile.
  state = state.replace(params=tree['params'], opt_state=tree['opt_state'],
                        step=int(tree['step']),
                        batch_stats=tree.get('batch_stats', {}),
                        ema_params=tree.get('ema_params'))
  return state, jax.random.wrap_key_data(tree['rng'])


def restore_first_readable(manager: ocp.CheckpointManager, steps: list[int],
                           read: Callable[[int], Any]) -> tuple[int, Any]:
  """`read(step)` of the first of `steps` (in their order) that reads; each
  one that does not is logged and skipped.

  Raises:
    CheckpointError: none reads; the message names each and what to delete.
  """
  failures = []
  for step in steps:
    try:
      restored = read(step)
    except Exception as error:  # pylint: disable=broad-except
      failures.append(f'step {step}: {_first_line(error)}')
      logger.warning('Checkpoint %d in %s cannot be restored (%s); trying an '
                     'older one.', step, manager.directory, _first_line(error))
      continue
    if failures:
      logger.warning('Restored checkpoint %d instead.', step)
    return step, restored
  raise CheckpointError(
      f'No checkpoint in {manager.directory} can be restored '
      f'({"; ".join(failures)}): delete {manager.directory} to start over.')


def restore_eval_variables(workdir: str, step: Optional[int] = None
                           ) -> dict[str, Any]:
  """The variables a trained model is evaluated with, as numpy arrays:
  'params' (the moving average where the run kept one) and, for models with
  BatchNorm, 'batch_stats'.

  Args:
    workdir: the `--workdir` of a run (or its `checkpoints` folder).
    step: the checkpoint to read; None reads the best by validation metric,
      or the latest if none has metrics.
  """
  if os.path.basename(os.path.normpath(workdir)) == 'checkpoints':
    workdir = os.path.dirname(os.path.normpath(workdir))
  manager = open_manager(workdir)
  step = best_or_latest_step(manager) if step is None else step
  tree = manager.restore(step)
  variables = {'params': tree.get('ema_params', tree['params'])}
  if 'batch_stats' in tree:
    variables['batch_stats'] = tree['batch_stats']
  return variables


def restore_params(workdir: str, step: Optional[int] = None) -> Any:
  """`restore_eval_variables(workdir, step)['params']`."""
  return restore_eval_variables(workdir, step)['params']


def best_or_latest_step(manager: ocp.CheckpointManager) -> int:
  """The best checkpoint by validation metric; the latest when none was
  validated (a run stopped before its first validation)."""
  best = manager.best_step()
  if best is None:
    best = manager.latest_step()
    logger.warning('No checkpoint in %s was validated; using the latest, step '
                   '%d.', manager.directory, best)
  return best


def move_aside(manager: ocp.CheckpointManager, first_step: int,
               folder: str) -> list[int]:
  """Moves the checkpoints of steps >= `first_step` into `folder`; returns
  their steps."""
  moved = [s for s in manager.all_steps(read=True) if s >= first_step]
  os.makedirs(folder, exist_ok=True)
  for step in moved:
    os.replace(os.path.join(str(manager.directory), str(step)),
               os.path.join(folder, str(step)))
  return moved
