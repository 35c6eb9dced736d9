"""Training and evaluation of a config's model (`run.py --mode=train|eval`).

The train step is `pmap`ped over the local devices: each device takes an
equal share of the global batch (`config.batch_size`, split over all devices
of all hosts), gradients are averaged with `lax.pmean`, and the 3D CNN's
BatchNorm averages its statistics over the same axis. Metrics stay on the
devices and reach the host every `config.log_summary_steps` steps.

A run writes to its workdir: `checkpoints/` (see `checkpointing`),
`metrics.csv` and `tensorboard/` (see `logs`), and at its end
`results.json`, `curves.png` and `confusion_matrix.png`. Running the same
command again resumes from the latest checkpoint; SIGTERM and Ctrl-C save
one before stopping.
"""

import contextlib
import functools
import json
import os
import signal
import time
from typing import Any, Callable, Iterator

from absl import logging
from clu import metrics as clu_metrics
from clu import parameter_overview
from flax import jax_utils
from flax.training import train_state
import jax
from jax.experimental import multihost_utils
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from vivit_jax import checkpoints
from vivit_jax import data
from vivit_jax import logs
from vivit_jax import metrics as medmnist_metrics
from vivit_jax import models
from vivit_jax import optimizers
from vivit_jax import plots
from vivit_jax import pretrained
from vivit_jax import spec

AXIS = 'batch'


def _replicate(tree):
  """`tree` on every local device, sharded as the pmapped steps' outputs
  are, so that the steps compile once."""
  return jax_utils.replicate(tree, axis_name=AXIS)


class TrainState(train_state.TrainState):
  """Parameters, optimiser state, step, and the 3D CNN's `batch_stats`
  collection ({} for models without BatchNorm)."""
  batch_stats: Any = None

  def variables(self) -> dict:
    """The variables `model.apply` takes."""
    if self.batch_stats:
      return {'params': self.params, 'batch_stats': self.batch_stats}
    return {'params': self.params}


class TrainingStopped(Exception):
  """Training stopped before its last step; the message says why and what
  to do next."""


def _schedule_steps(config: ml_collections.ConfigDict, num_train: int
                    ) -> tuple[int, int]:
  """(steps per epoch, total steps) for `num_train` training examples; the
  last incomplete batch of each epoch is dropped."""
  steps_per_epoch = num_train // config.batch_size
  return steps_per_epoch, (config.get('num_training_steps') or
                           config.num_training_epochs * steps_per_epoch)


def validate_config(config: ml_collections.ConfigDict) -> None:
  """Raises ValueError naming the config field that cannot work.

  Checks the model (`spec.validate_config`), then the training fields:
  optimiser, schedule, batch sizes against the device count and the
  training set, step counts and checkpoints. Nothing is compiled.

  Raises:
    data.DataError: the data set is unknown.
  """
  spec.validate_config(config)
  if config.optimizer not in optimizers.OPTIMIZERS:
    spec.config_error('optimizer', f'unknown optimizer {config.optimizer!r}',
          f'Use one of {optimizers.OPTIMIZERS}.')
  lr_configs = config.lr_configs
  if lr_configs.learning_rate_schedule not in optimizers.SCHEDULES:
    spec.config_error('lr_configs.learning_rate_schedule',
          f'unknown schedule {lr_configs.learning_rate_schedule!r}',
          f'Use one of {optimizers.SCHEDULES}.')
  if lr_configs.base_learning_rate <= 0:
    spec.config_error('lr_configs.base_learning_rate',
          f'{lr_configs.base_learning_rate} is not positive',
          'Give a positive learning rate.')
  if lr_configs.get('warmup_steps') is not None and lr_configs.get(
      'warmup_epochs'):
    spec.config_error('lr_configs.warmup_steps', 'warm-up is given both in steps and in '
          'epochs', 'Set one of warmup_steps and warmup_epochs, and the other '
          'to None or 0.')
  if config.get('max_grad_norm') is not None and config.max_grad_norm <= 0:
    spec.config_error('max_grad_norm', f'{config.max_grad_norm} is not positive',
          'Give a positive norm, or None to not clip.')
  for field in ('num_training_epochs', 'num_training_steps',
                'log_summary_steps', 'log_eval_steps', 'checkpoint_steps',
                'max_checkpoints_to_keep'):
    if config.get(field) is not None and config[field] <= 0:
      spec.config_error(field, f'{config[field]} is not positive',
            'Give a positive number.')
  if config.checkpoint_metric not in checkpoints.MODES:
    spec.config_error('checkpoint_metric', f'unknown metric {config.checkpoint_metric!r}',
          f'Use one of {tuple(checkpoints.MODES)}.')

  num_devices = jax.device_count()
  for field in ('batch_size', 'eval_batch_size'):
    if config[field] <= 0 or config[field] % num_devices:
      spec.config_error(field, f'{config[field]} examples do not split evenly over the '
            f'{num_devices} devices', f'Use a positive multiple of '
            f'{num_devices}.')
  num_train = data.dataset_info(
      config.dataset_configs.dataset_name)['n_samples']['train']
  if config.batch_size > num_train:
    spec.config_error('batch_size', f'{config.batch_size} is larger than the '
          f'{num_train} training examples', 'Use a smaller batch.')
  steps_per_epoch, total_steps = _schedule_steps(config, num_train)
  warmup = optimizers.warmup_steps(config, steps_per_epoch)
  if warmup >= total_steps:
    unit = 'steps' if lr_configs.get('warmup_steps') is not None else 'epochs'
    spec.config_error(f'lr_configs.warmup_{unit}', f'the warm-up ({warmup} steps) does not '
          f'end before training does ({total_steps} steps)',
          'Shorten the warm-up or train longer.')


def _top5_correct(logits: jnp.ndarray, labels: jnp.ndarray, **_
                  ) -> jnp.ndarray:
  """(batch, K) logits, (batch,) labels -> (batch,) 1.0 where the label is
  among the 5 highest logits."""
  _, top5 = jax.lax.top_k(logits, 5)
  return jnp.any(top5 == labels[:, None], axis=-1).astype(jnp.float32)


def metrics_collection(num_classes: int) -> type[clu_metrics.Collection]:
  """Average loss and top-1 accuracy, and top-5 accuracy if K >= 5."""
  fields = {'loss': clu_metrics.Average.from_output('loss'),
            'accuracy': clu_metrics.Accuracy}
  if num_classes >= 5:
    fields['top5'] = clu_metrics.Average.from_fun(_top5_correct)
  return clu_metrics.Collection.create(**fields)


def create_train_state(config: ml_collections.ConfigDict, model,
                       rng: jax.Array, learning_rate_fn: optax.Schedule
                       ) -> TrainState:
  """A freshly initialised state (on the host, not replicated).

  Parameters are float32 whatever `config.model_dtype_str`.
  """
  clip = jnp.zeros((1,) + spec.input_shape(config), jnp.float32)
  variables = jax.jit(functools.partial(model.init, train=False))(rng, clip)
  return TrainState.create(
      apply_fn=model.apply, params=variables['params'],
      batch_stats=variables.get('batch_stats', {}),
      tx=optimizers.create_optimizer(config, learning_rate_fn))


def make_train_step(model, metrics_class: type[clu_metrics.Collection]
                    ) -> Callable:
  """The pmapped `train_step(state, batch, rng) -> (state, metrics)`.

  `state` and `rng` are replicated, `batch` has leading dims (devices,
  per-device batch), with 'inputs', 'targets' (soft, (B, K)) and 'labels'.
  The dropout key is `rng` folded with the step and the device index. The
  input state is donated; `metrics` is replicated over devices.
  """

  def train_step(state: TrainState, batch: dict, rng: jax.Array):
    rng = jax.random.fold_in(jax.random.fold_in(rng, state.step),
                             jax.lax.axis_index(AXIS))
    mutable = ['batch_stats'] if state.batch_stats else False

    def loss_fn(params):
      output = model.apply(
          state.replace(params=params).variables(), batch['inputs'],
          train=True, rngs={'dropout': rng}, mutable=mutable)
      logits, updates = output if mutable else (output, {})
      losses = optax.softmax_cross_entropy(logits, batch['targets'])
      return losses.mean(), (losses, logits, updates)

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    (_, (losses, logits, updates)), grads = grad_fn(state.params)
    grads = jax.lax.pmean(grads, AXIS)
    state = state.apply_gradients(grads=grads)
    if mutable:
      state = state.replace(batch_stats=updates['batch_stats'])
    metrics = metrics_class.gather_from_model_output(
        axis_name=AXIS, loss=losses, logits=logits, labels=batch['labels'])
    return state, metrics

  return jax.pmap(train_step, axis_name=AXIS, donate_argnums=(0,))


def make_eval_step(model, metrics_class: type[clu_metrics.Collection]
                   ) -> Callable:
  """The pmapped `eval_step(state, batch) -> (metrics, scores)`.

  `batch` holds 'inputs', 'labels' and 'mask' (0 for padding), with leading
  dims (devices, per-device batch); `scores` are the softmax probabilities,
  (devices, per-device batch, K).
  """

  def eval_step(state: TrainState, batch: dict):
    logits = model.apply(state.variables(), batch['inputs'], train=False)
    losses = optax.softmax_cross_entropy_with_integer_labels(
        logits, batch['labels'])
    metrics = metrics_class.gather_from_model_output(
        axis_name=AXIS, loss=losses, logits=logits, labels=batch['labels'],
        mask=batch['mask'].astype(bool))
    return metrics, jax.nn.softmax(logits)

  return jax.pmap(eval_step, axis_name=AXIS)


def evaluate(eval_step: Callable, state: TrainState, volumes: np.ndarray,
             labels: np.ndarray, *, batch_size: int, task: str
             ) -> tuple[dict, np.ndarray, np.ndarray]:
  """Metrics of the replicated `state` on one split.

  Returns:
    {'loss', 'top1', 'top5' (None below 5 classes), 'acc', 'auc'}, where acc
    and auc are MedMNIST's; and the split's labels (N,) and softmax scores
    (N, K), gathered from all hosts.
  """
  totals, scores, seen_labels, masks = None, [], [], []
  batches = data.prefetch_to_devices(map(data.shard_for_host, data.eval_batches(
      volumes, labels, batch_size=batch_size)))
  for batch in batches:
    update, probabilities = eval_step(state, batch)
    totals = update if totals is None else totals.merge(update)
    scores.append(np.asarray(probabilities).reshape(
        -1, probabilities.shape[-1]))
    seen_labels.append(np.asarray(batch['labels']).reshape(-1))
    masks.append(np.asarray(batch['mask']).reshape(-1).astype(bool))
  scores, seen_labels, masks = multihost_utils.process_allgather(
      (np.concatenate(scores), np.concatenate(seen_labels),
       np.concatenate(masks)), tiled=True)
  scores, seen_labels = scores[masks], seen_labels[masks]
  computed = {name: float(value)
              for name, value in totals.unreplicate().compute().items()}
  results = {'loss': computed['loss'], 'top1': computed['accuracy'],
             'top5': computed.get('top5'),
             **medmnist_metrics.medmnist_acc_auc(task, seen_labels, scores)}
  return results, seen_labels, scores


def _checkpoint_tree(state: TrainState, rng: jax.Array) -> dict:
  """The checkpoint of a host `state` (see `checkpointing`), host arrays."""
  tree = {'params': state.params, 'opt_state': state.opt_state,
          'step': state.step, 'rng': jax.random.key_data(rng)}
  if state.batch_stats:
    tree['batch_stats'] = state.batch_stats
  return jax.tree.map(np.asarray, jax.device_get(tree))


def _load_pretrained(config: ml_collections.ConfigDict, state: TrainState
                     ) -> TrainState:
  """The host `state` with the parameters of `config.init_from`'s
  checkpoint, and its optimiser state initialised for them."""
  params, report = pretrained.load_pretrained(config, state.params)
  logging.info('%s', report)
  return state.replace(params=params, opt_state=state.tx.init(params))


def _restore(manager, step: int, state: TrainState, rng: jax.Array
             ) -> tuple[TrainState, jax.Array]:
  """Checkpoint `step` into the host `state`, and the run's dropout key."""
  tree = checkpoints.restore(manager, step, _checkpoint_tree(state, rng))
  # A Python int, as in a fresh state, so that the steps do not recompile.
  state = state.replace(params=tree['params'], opt_state=tree['opt_state'],
                        step=int(tree['step']),
                        batch_stats=tree.get('batch_stats', {}))
  return state, jax.random.wrap_key_data(tree['rng'])


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


class _Setup:
  """What training and evaluation of a config share: the data, the model,
  a freshly initialised host state and the pmapped evaluation step."""

  def __init__(self, config: ml_collections.ConfigDict):
    validate_config(config)
    self.config = config
    self.model = models.create_model(config, axis_name=AXIS)
    dataset = config.dataset_configs
    self.info = data.dataset_info(dataset.dataset_name)
    self.num_classes = dataset.num_classes
    self.splits = data.load_splits(dataset)
    self.steps_per_epoch, self.total_steps = _schedule_steps(
        config, len(self.splits['train'][1]))
    self.learning_rate_fn = optimizers.learning_rate_schedule(
        config, self.steps_per_epoch, self.total_steps)
    init_rng, self.dropout_rng = jax.random.split(
        jax.random.key(config.rng_seed))
    self.state = create_train_state(config, self.model, init_rng,
                                    self.learning_rate_fn)
    self.metrics_class = metrics_collection(self.num_classes)
    self.eval_step = make_eval_step(self.model, self.metrics_class)

  def evaluate(self, state: TrainState, split: str):
    """`evaluate` of the replicated `state` on 'val' or 'test'."""
    volumes, labels = self.splits[split]
    return evaluate(self.eval_step, state, volumes, labels,
                    batch_size=self.config.eval_batch_size,
                    task=self.info['task'])

  def evaluate_best(self, manager) -> dict:
    """Validation and test results of the best checkpoint, and the test
    labels and scores."""
    step = manager.best_step()
    state, _ = _restore(manager, step, self.state, self.dropout_rng)
    state = _replicate(state)
    val, _, _ = self.evaluate(state, 'val')
    test, labels, scores = self.evaluate(state, 'test')
    return {'best_step': step, 'val': val, 'test': test,
            'test_labels': labels, 'test_scores': scores}


class _Progress:
  """The progress line and the training scalars of each logging window.

  Steps/s and the ETA leave out the time spent in `paused()` (validation,
  checkpoints); `seconds` counts everything since the run's first start.
  """

  def __init__(self, setup: _Setup, workdir: str, start_step: int):
    self._setup = setup
    self._writer = (logs.MetricWriter(workdir, start_step)
                    if jax.process_index() == 0 else None)
    logged = logs.read_scalars(workdir).query("name == 'train/seconds'")
    self._seconds_before = logged.value.iloc[-1] if len(logged) else 0.0
    self._start = self._window_start = time.time()
    self._window_first_step, self._paused = start_step, 0.0

  def seconds(self) -> float:
    return float(self._seconds_before + time.time() - self._start)

  def log(self, step: int, train_metrics: clu_metrics.Collection) -> float:
    """Logs the metrics of the steps since the last call; returns the loss."""
    computed = {name: float(value) for name, value in
                train_metrics.unreplicate().compute().items()}
    steps_per_second = (step - self._window_first_step) / (
        time.time() - self._window_start - self._paused)
    learning_rate = float(self._setup.learning_rate_fn(step))
    total_steps = self._setup.total_steps
    logging.info(
        'step %d/%d (epoch %.2f) | loss %.4f | accuracy %.4f | lr %.3g | '
        '%.2f steps/s | ETA %s', step, total_steps,
        step / self._setup.steps_per_epoch, computed['loss'],
        computed['accuracy'], learning_rate, steps_per_second,
        _format_seconds((total_steps - step) / steps_per_second))
    self.write(step, {
        **{f'train/{name}': value for name, value in computed.items()},
        'train/learning_rate': learning_rate,
        'train/steps_per_second': steps_per_second,
        'train/seconds': self.seconds()})
    self._window_start, self._window_first_step, self._paused = (
        time.time(), step, 0.0)
    return computed['loss']

  def write(self, step: int, scalars: dict[str, float]) -> None:
    if self._writer:
      self._writer.write_scalars(step, scalars)

  @contextlib.contextmanager
  def paused(self):
    start = time.time()
    try:
      yield
    finally:
      self._paused += time.time() - start

  def close(self) -> None:
    if self._writer:
      self._writer.close()


def _format_seconds(seconds: float) -> str:
  minutes, seconds = divmod(int(seconds), 60)
  hours, minutes = divmod(minutes, 60)
  return f'{hours}:{minutes:02d}:{seconds:02d}'


def _device_batches(setup: _Setup, step: int) -> Iterator[dict]:
  """The training batches from `step` to the end of its epoch, on the local
  devices."""
  config = setup.config
  epoch, skip = divmod(step, setup.steps_per_epoch)
  batches = data.train_batches(
      *setup.splits['train'], batch_size=config.batch_size,
      seed=config.rng_seed, epoch=epoch, config=config,
      num_classes=setup.num_classes, skip=skip)
  return data.prefetch_to_devices(map(data.shard_for_host, batches))


def _validate(setup: _Setup, progress: _Progress, state: TrainState,
              step: int) -> dict:
  """Logs the validation metrics of the replicated `state`; returns those
  that rank checkpoints."""
  val, _, _ = setup.evaluate(state, 'val')
  logging.info('step %d validation: %s', step, val)
  progress.write(step, {f'val/{"accuracy" if name == "top1" else name}': value
                        for name, value in val.items() if value is not None})
  return {name: val[name] for name in checkpoints.MODES}


def _non_finite_loss(loss: float, step: int, manager) -> TrainingStopped:
  last = manager.latest_step()
  kept = (f'The last good checkpoint, step {last}, is kept in '
          f'{manager.directory}.' if last is not None else
          'No checkpoint was saved.')
  return TrainingStopped(
      f'Loss is {loss} by step {step}; stopped. {kept} Lower config.'
      'lr_configs.base_learning_rate or set config.max_grad_norm.')


def _train(setup: _Setup, workdir: str, manager) -> float:
  """The training loop, from the latest checkpoint (if any) to the last step.

  Validates every `log_eval_steps` steps (default: each epoch) and at the
  end, saving a checkpoint with the validation metrics each time, and also
  every `checkpoint_steps` steps. Losses are checked before each save.

  Returns:
    The seconds spent training, over all runs of this workdir.
  Raises:
    TrainingStopped: on SIGINT or SIGTERM, after saving a checkpoint; or on
      a non-finite loss, keeping the last checkpoint.
  """
  config = setup.config
  state, rng = setup.state, setup.dropout_rng
  step = manager.latest_step() or 0
  if step:
    state, rng = _restore(manager, step, state, rng)
    logging.info('Resuming from the checkpoint of step %d.', step)
  elif config.get('init_from') and config.init_from.checkpoint_path:
    state = _load_pretrained(config, state)
  parameter_overview.log_parameter_overview(state.params)

  progress = _Progress(setup, workdir, step)
  eval_steps = config.get('log_eval_steps') or setup.steps_per_epoch
  checkpoint_steps = config.get('checkpoint_steps') or setup.total_steps
  train_step = make_train_step(setup.model, setup.metrics_class)
  state, rngs = _replicate(state), _replicate(rng)
  train_metrics, stop = None, False
  with _stop_signals() as received, contextlib.closing(progress):
    while step < setup.total_steps and not stop:
      for batch in _device_batches(setup, step):
        state, update = train_step(state, batch, rngs)
        train_metrics = update if train_metrics is None else (
            train_metrics.merge(update))
        step += 1
        stop = bool(received)
        validate = step % eval_steps == 0 or step == setup.total_steps
        save = validate or stop or step % checkpoint_steps == 0
        if save or step % config.log_summary_steps == 0:
          loss = progress.log(step, train_metrics)
          train_metrics = None
          if not np.isfinite(loss):
            raise _non_finite_loss(loss, step, manager)
        if save:
          with progress.paused():
            metrics = _validate(setup, progress, state, step) if (
                validate) else None
            checkpoints.save(manager, step, _checkpoint_tree(
                jax_utils.unreplicate(state), rng), metrics)
        if stop or step == setup.total_steps:
          break
  if stop:
    raise TrainingStopped(
        f'Stopped by {signal.Signals(received[0]).name} at step {step}; the '
        f'checkpoint is in {checkpoints.checkpoint_dir(workdir)}. Run the '
        'same command to resume.')
  return progress.seconds()


def _param_count(params) -> int:
  return int(sum(np.prod(p.shape) for p in jax.tree.leaves(params)))


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str
                       ) -> dict:
  """Trains (or resumes training) in `workdir`, then evaluates the best
  checkpoint by validation metric on the test set.

  Returns:
    The contents of `workdir/results.json`.
  Raises:
    ValueError: a config field that cannot work (before any compilation).
    data.DataError: the data set cannot be found or read.
    TrainingStopped: see `_train`.
  """
  setup = _Setup(config)
  with checkpoints.create_manager(
      workdir, config.checkpoint_metric,
      config.max_checkpoints_to_keep) as manager:
    seconds = _train(setup, workdir, manager)
    best = setup.evaluate_best(manager)
  name = config.get('model_name', 'vivit')
  results = {
      'dataset': config.dataset_configs.dataset_name,
      'model': name,
      'attention': (config.model.attention_config.type if name == 'vivit'
                    else None),
      'experiment': config.get('experiment_name'),
      'params': _param_count(setup.state.params),
      'steps': setup.total_steps,
      'best_step': best['best_step'],
      'train_seconds': round(seconds, 1),
      'val': best['val'],
      'test': best['test'],
  }
  if jax.process_index() == 0:
    _write_results(setup, workdir, results, best)
  logging.info('Results: %s', json.dumps(results))
  return results


def _write_results(setup: _Setup, workdir: str, results: dict, best: dict
                   ) -> None:
  """results.json, confusion_matrix.png (test) and curves.png."""
  with open(os.path.join(workdir, 'results.json'), 'w') as f:
    json.dump(results, f, indent=2)
  class_names = [setup.info['label'][str(i)] for i in range(setup.num_classes)]
  plots.plot_confusion_matrix(
      best['test_labels'], best['test_scores'].argmax(-1), class_names,
      os.path.join(workdir, 'confusion_matrix.png'))
  plots.plot_curves(logs.read_scalars(workdir), setup.steps_per_epoch,
                    os.path.join(workdir, 'curves.png'))


def evaluate_workdir(config: ml_collections.ConfigDict, workdir: str
                     ) -> dict:
  """Validation and test metrics of the best checkpoint of `workdir`."""
  setup = _Setup(config)
  with checkpoints.open_manager(workdir) as manager:
    best = setup.evaluate_best(manager)
  return {name: best[name] for name in ('best_step', 'val', 'test')}
