"""Checkpoints of a training run, kept by orbax's `CheckpointManager`.

Layout: `WORKDIR/checkpoints/STEP/default/` holds one pytree

  {'params':      the model's parameters (float32),
   'batch_stats': BatchNorm statistics (the 3D CNN only),
   'opt_state':   the optax state,
   'step':        int32 scalar, the number of steps taken,
   'rng':         uint32 key data of the run's dropout key}

as host arrays. Checkpoints written at validation steps record the
validation metrics {'acc', 'auc', 'loss'}, and the manager keeps the last
`config.max_checkpoints_to_keep` checkpoints plus the best one by
`config.checkpoint_metric`, whose name is kept in the root metadata.

To use a trained model's parameters elsewhere:

  params = checkpoints.restore_params('/path/to/workdir')
"""

import os
from typing import Any, Optional

import orbax.checkpoint as ocp
from orbax.checkpoint.checkpoint_managers import preservation_policy

MODES = {'acc': 'max', 'auc': 'max', 'loss': 'min'}


def checkpoint_dir(workdir: str) -> str:
  return os.path.join(os.path.abspath(workdir), 'checkpoints')


def create_manager(workdir: str, metric: str = 'auc',
                   max_to_keep: int = 2) -> ocp.CheckpointManager:
  """The manager of `workdir`'s checkpoints: the last `max_to_keep` and the
  best by validation `metric` are kept."""
  best_fn = lambda metrics: metrics[metric]
  options = ocp.CheckpointManagerOptions(
      best_fn=best_fn, best_mode=MODES[metric],
      preservation_policy=preservation_policy.AnyPreservationPolicy([
          preservation_policy.LatestN(max_to_keep),
          preservation_policy.BestN(
              get_metric_fn=best_fn, reverse=MODES[metric] == 'min', n=1,
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
  if not os.path.isdir(directory):
    raise FileNotFoundError(
        f'No checkpoints in {directory}: train first with '
        f'`run.py --workdir={workdir}`, or pass the workdir of a run.')
  metadata = ocp.CheckpointManager(directory).metadata().custom_metadata
  return create_manager(workdir, metadata.get('checkpoint_metric', 'auc'))


def save(manager: ocp.CheckpointManager, step: int, tree: dict,
         metrics: Optional[dict] = None) -> None:
  """Saves `tree` (host arrays, see the module docstring) as `step`."""
  manager.save(step, args=ocp.args.StandardSave(tree), metrics=metrics,
               force=True)


def restore(manager: ocp.CheckpointManager, step: int, target: dict) -> dict:
  """Restores `step` into the structure, shapes and dtypes of `target`."""
  return manager.restore(step, args=ocp.args.StandardRestore(target))



def restore_params(workdir: str, step: Optional[int] = None) -> Any:
  """The parameters of a trained model, as numpy arrays.

  Args:
    workdir: the `--workdir` of a run (or its `checkpoints` folder).
    step: the checkpoint to read; None reads the best by validation metric,
      or the latest if none has metrics.
  """
  if os.path.basename(os.path.normpath(workdir)) == 'checkpoints':
    workdir = os.path.dirname(os.path.normpath(workdir))
  manager = open_manager(workdir)
  step = manager.best_step() if step is None else step
  if step is None:
    raise FileNotFoundError(f'{checkpoint_dir(workdir)} holds no checkpoint.')
  return manager.restore(step)['params']
