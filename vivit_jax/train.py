"""Training, then evaluation of the best checkpoint on the test split
(`run.py --mode=train`, `vivit_jax.train_and_evaluate`).

A run owns its workdir (`workdir.locked`) and writes there: `config.json`,
`parameters.txt`, `checkpoints/` (see `checkpoints`), `metrics.csv` and
`tensorboard/` (see `logs`), and at its end `results.json`,
`predictions.csv` and the figures (see `results`). Running the same command
again resumes from the newest readable checkpoint; SIGTERM and Ctrl-C save
one before stopping. An ensemble's members are runs of their own, in
`members/k` (see `ensemble`), and its workdir holds the results of their mean
prediction.
"""

import contextlib
import dataclasses
import logging
import math
import os
import signal
from typing import Iterator, Optional

from clu import parameter_overview
from flax import jax_utils
import jax
import ml_collections
import numpy as np

from vivit_jax import allocator
from vivit_jax import checkpoints
from vivit_jax import data
from vivit_jax import ensemble
from vivit_jax import evaluate
from vivit_jax import logs
from vivit_jax import masked_modeling
from vivit_jax import models
from vivit_jax import optimizers
from vivit_jax import pretrained
from vivit_jax import results as results_lib
from vivit_jax import spec as spec_lib
from vivit_jax import steps
from vivit_jax import workdir as workdir_lib
from vivit_jax.data import pipeline

logger = logging.getLogger(__name__)

# A logged training loss above this many times the lowest one before it (or
# above the first one) counts as diverging, for choosing the checkpoint a
# run resumes from after a NaN.
DIVERGENCE_FACTOR = 10.0


class TrainingStopped(Exception):
  """Training stopped before its last step; the message says why and what
  to do next."""


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str
                       ) -> dict:
  """Trains (or resumes training) in `workdir`, then evaluates the best
  checkpoint by validation metric on the validation and test splits. A run
  that starts afresh first loads `config.init_from` and then runs
  `config.masked_pretraining` (`masked_modeling.pretrain`), if they are set.
  An ensemble (`config.ensemble_size` > 1) trains its members one after the
  other (`vivit_jax.ensemble`), then evaluates their mean prediction. Like
  `run.py`, it first sets malloc to keep freed memory in the process
  (`vivit_jax.allocator`; `VIVIT_JAX_KEEP_MEMORY=0` turns that off).

  Returns:
    The contents of `workdir/results.json`.
  Raises:
    spec.ConfigError: a config field that cannot work (before compiling).
    data.DataError: the data cannot be found or read.
    workdir.WorkdirError: the workdir is in use, or holds another model.
    checkpoints.CheckpointError: no checkpoint can be read, or the disk is
      full.
    TrainingStopped: a signal, or a non-finite loss.
  """
  allocator.keep_freed_memory()
  logs.show_progress()
  spec = spec_lib.check_config(config, mode='train')
  for note in spec.notes:
    logger.warning('%s', note)
  lead = jax.process_index() == 0
  with _owned(workdir, spec, lead):
    if spec.config.ensemble_size == 1:
      runs = [_train_run(spec, workdir, lead)]
    else:
      runs = []
      for k, member_workdir in enumerate(
          ensemble.member_workdirs(workdir, spec.config)):
        member = spec_lib.check_config(
            ensemble.member_config(spec.config, k), mode='train')
        logger.info('Member %d of %d, rng_seed %d, in %s.', k + 1,
                    spec.config.ensemble_size,
                    member.config.rng_seed, member_workdir)
        with _owned(member_workdir, member, lead):
          runs.append(_train_run(member, member_workdir, lead))
    final = evaluate.evaluate_members(
        runs[0].model, [run.variables for run in runs], runs[0].source)
    pretrain_seconds = [run.pretrain_seconds for run in runs
                        if run.pretrain_seconds is not None]
    results = results_lib.summarize(
        spec, runs[0].params,
        best_step=([run.best_step for run in runs] if len(runs) > 1 else
                   runs[0].best_step),
        val=final['val'], test=final['test'],
        train_seconds=sum(run.train_seconds for run in runs),
        pretrain_seconds=sum(pretrain_seconds) if pretrain_seconds else None,
        skipped=runs[0].source.skipped)
    if lead:
      results_lib.write(workdir, spec, results, final['test_predictions'],
                        [run.workdir for run in runs])
  return results


@contextlib.contextmanager
def _owned(workdir: str, spec: spec_lib.Spec, lead: bool) -> Iterator[None]:
  """Holds `workdir`'s lock and keeps `spec`'s config there (on the lead
  process; the others write nothing)."""
  if not lead:
    yield
    return
  with workdir_lib.locked(workdir):
    workdir_lib.keep_config(workdir, spec)
    yield


@dataclasses.dataclass
class _TrainedRun:
  """What the evaluation of a finished run (or ensemble member) needs."""
  workdir: str
  model: object
  source: object
  params: dict
  variables: dict
  best_step: int
  train_seconds: float
  pretrain_seconds: Optional[float]


def _train_run(spec: spec_lib.Spec, workdir: str, lead: bool) -> _TrainedRun:
  """Trains one model in `workdir` (owned by this process) to its last step,
  resuming from its newest checkpoint; returns its best checkpoint's
  variables, on the host."""
  model = models.create_model(spec, axis_name=steps.AXIS)
  init_rng, dropout_rng = jax.random.split(
      jax.random.key(spec.config.rng_seed))
  state = steps.create_train_state(spec, model, init_rng)
  fresh = not checkpoints.saved_steps(workdir)
  if fresh:
    state = _load_pretrained(spec, state)
  source = data.create_source(spec.config)
  pretrain_seconds = None
  if fresh and spec.config.masked_pretraining.num_epochs:
    state, pretrain_seconds = _pretrain(spec, model, state, source,
                                        jax.random.fold_in(init_rng, 1))
  _describe(spec, state.params, workdir, lead)
  with checkpoints.create_manager(
      workdir, spec.config.checkpoint_metric,
      spec.config.max_checkpoints_to_keep) as manager:
    state, dropout_rng = _resume(manager, state, dropout_rng)
    progress = logs.Progress(workdir, int(state.step), spec.total_steps,
                             spec.config.batch_size, write=lead)
    with contextlib.closing(progress), _disk_full_is_one_line(
        manager, workdir):
      _train(spec, model, source, state, dropout_rng, manager, progress,
             workdir)
    best_step, state = evaluate.restore_best(manager, state)
  return _TrainedRun(
      workdir=workdir, model=model, source=source, params=state.params,
      variables=state.eval_variables(), best_step=best_step,
      train_seconds=progress.seconds(), pretrain_seconds=pretrain_seconds)


@contextlib.contextmanager
def _disk_full_is_one_line(manager, workdir: str) -> Iterator[None]:
  """Turns 'No space left on device' anywhere in training into one line
  naming what could not be written and the last safe checkpoint."""
  try:
    yield
  except checkpoints.CheckpointError:
    raise
  except Exception as error:  # pylint: disable=broad-except
    if not checkpoints.is_disk_full(error):
      raise
    latest = manager.latest_step()
    safe = (f'the last safe checkpoint is step {latest} in '
            f'{manager.directory}' if latest is not None else
            'no checkpoint was saved')
    what = getattr(error, 'filename', None) or workdir
    raise checkpoints.CheckpointError(
        f'No space left on device writing {what}; {safe}. Free space and run '
        'the same command to resume.') from error


def _load_pretrained(spec: spec_lib.Spec, state: steps.TrainState
                     ) -> steps.TrainState:
  """The host `state` with the parameters (and BatchNorm statistics) of
  `config.init_from`'s checkpoint, if any, and its optimiser state
  initialised for them."""
  if not spec.init_checkpoint:
    return state
  variables, report = pretrained.load_pretrained(spec.config,
                                                 state.variables())
  logger.info('%s', report)
  params = variables['params']
  return state.replace(params=params,
                       batch_stats=variables.get('batch_stats', {}),
                       opt_state=state.tx.init(params)).restart_average()


def _pretrain(spec: spec_lib.Spec, model, state: steps.TrainState, source,
              rng: jax.Array) -> tuple[steps.TrainState, float]:
  """`masked_modeling.pretrain`, stopped by SIGINT or SIGTERM (nothing of it
  is saved)."""
  with _stop_signals() as received:
    state, seconds = masked_modeling.pretrain(spec, model, state, source, rng,
                                              stop=lambda: bool(received))
  if received:
    raise TrainingStopped(
        f'Stopped by {signal.Signals(received[0]).name} during masked '
        'pre-training, which keeps no checkpoint. Run the same command to '
        'start again.')
  return state, seconds


def _describe(spec: spec_lib.Spec, params, workdir: str, lead: bool) -> None:
  """One line on the console; the parameter table in parameters.txt."""
  count = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(params))
  logger.info('%s: %s parameters, %d tokens, %d steps of batch %d (%d per '
              'epoch); parameter table in %s.', spec.model_name,
              f'{count:,}', spec.num_tokens, spec.total_steps,
              spec.config.batch_size, spec.steps_per_epoch,
              os.path.join(workdir, 'parameters.txt'))
  if lead:
    with open(os.path.join(workdir, 'parameters.txt'), 'w') as f:
      f.write(parameter_overview.get_parameter_overview(params) + '\n')


def _resume(manager, state: steps.TrainState, rng: jax.Array
            ) -> tuple[steps.TrainState, jax.Array]:
  """The newest readable checkpoint's state, or `state` if there is none."""
  saved = sorted(manager.all_steps(), reverse=True)
  if not saved:
    return state, rng
  step, (state, rng) = checkpoints.restore_first_readable(
      manager, saved, lambda s: checkpoints.restore_state(manager, s, state,
                                                          rng))
  logger.info('Resuming from the checkpoint of step %d.', step)
  return state, rng


@contextlib.contextmanager
def _stop_signals() -> Iterator[list[int]]:
  """Collects SIGINT and SIGTERM instead of stopping at once."""
  received = []
  handlers = {signum: signal.signal(signum, lambda s, _: received.append(s))
              for signum in (signal.SIGINT, signal.SIGTERM)}
  try:
    yield received
  finally:
    for signum, handler in handlers.items():
      signal.signal(signum, handler)


def _train(spec: spec_lib.Spec, model, source, state: steps.TrainState,
           rng: jax.Array, manager, progress: logs.Progress,
           workdir: str) -> None:
  """The training loop, from `state.step` to the last step.

  Logs every `log_summary_steps` steps; validates every `eval_every_steps`
  steps and at the end, checkpointing with the validation metrics; also
  checkpoints every `checkpoint_every_steps` steps and on a stop signal.
  """
  config = spec.config
  learning_rate = optimizers.learning_rate_schedule(spec)
  train_step = steps.make_train_step(model, spec)
  eval_step = steps.make_eval_step(model)
  losses = _logged_losses(workdir, int(state.step))
  start = int(state.step)
  state, rngs = steps.replicate(state), steps.replicate(rng)
  train_metrics = None
  with _stop_signals() as received, contextlib.closing(
      pipeline.train_batches(source, start)) as batches:
    for step, batch in zip(range(start + 1, spec.total_steps + 1),
                           progress.waiting_for(batches)):
      state, update = train_step(state, batch, rngs)
      train_metrics = update if train_metrics is None else (
          train_metrics.merge(update))
      validate = (step % spec.eval_every_steps == 0 or
                  step == spec.total_steps)
      save = validate or step % spec.checkpoint_every_steps == 0 or received
      if save or step % config.log_summary_steps == 0:
        computed = {name: float(value) for name, value in
                    train_metrics.unreplicate().compute().items()}
        train_metrics = None
        progress.log_train(step, computed, float(learning_rate(step)),
                           step / spec.steps_per_epoch)
        losses.append((step, computed['loss']))
        if not math.isfinite(computed['loss']):
          raise _diverged(losses, manager, workdir)
      val = None
      if validate:
        with progress.paused():
          val = _validate(eval_step, state, source, progress, step)
      if save:
        with progress.paused():
          checkpoints.save(manager, step, checkpoints.state_tree(
              jax_utils.unreplicate(state), rng), val)
      if received:
        raise TrainingStopped(
            f'Stopped by {signal.Signals(received[0]).name} at step {step}; '
            f'the checkpoint is in {manager.directory}. Run the same command '
            'to resume.')


def _validate(eval_step, state, source, progress: logs.Progress,
              step: int) -> dict:
  """Logs the validation metrics of the replicated `state`; returns those
  that rank checkpoints."""
  val, _ = evaluate.evaluate_split(eval_step, state.eval_variables(), source,
                                   'val')
  logger.info('step %d validation: %s', step, {
      name: round(value, 4) for name, value in val.items()
      if isinstance(value, float)})
  progress.write(step, {f'val/{"accuracy" if name == "top1" else name}':
                        value for name, value in val.items()
                        if value is not None})
  return {name: val[name] for name in spec_lib.CHECKPOINT_METRICS}


def _logged_losses(workdir: str, up_to_step: int
                   ) -> list[tuple[int, float]]:
  """(step, training loss) of the windows logged before `up_to_step`."""
  rows = logs.read_scalars(workdir).query(
      "name == 'train/loss' and step <= @up_to_step")
  return list(zip(rows.step.astype(int), rows.value.astype(float)))


def divergence_start(losses: list[tuple[int, float]]) -> Optional[int]:
  """The first step of the final run of diverging windows (non-finite, or
  above both the first loss and DIVERGENCE_FACTOR x the lowest before it);
  None if the last window does not diverge."""
  start, lowest, first = None, math.inf, losses[0][1] if losses else math.inf
  for step, loss in losses:
    diverging = not math.isfinite(loss) or (
        loss > first and loss > DIVERGENCE_FACTOR * lowest)
    if diverging:
      start = step if start is None else start
    else:
      start, lowest = None, min(lowest, loss)
  return start


def _diverged(losses: list[tuple[int, float]], manager,
              workdir: str) -> TrainingStopped:
  """Moves the checkpoints taken while the loss diverged out of the way, so
  that the next run resumes from before it; the error says so."""
  step, loss = losses[-1]
  start = divergence_start(losses)
  aside = os.path.join(workdir, 'diverged_checkpoints')
  moved = checkpoints.move_aside(manager, start, aside)
  kept = [s for s in manager.all_steps(read=True) if s < start]
  where = (f'the checkpoints from step {start} on, taken as the loss rose, '
           f'are moved to {aside}; ' if moved else '')
  resume = (f'the same command resumes from step {max(kept)}, before the '
            'divergence' if kept else 'no checkpoint precedes the divergence: '
            'start a new --workdir')
  return TrainingStopped(
      f'Loss is {loss} at step {step} (diverging since step {start}): {where}'
      f'{resume}. Lower config.lr_configs.base_learning_rate or set '
      'config.max_grad_norm.')
