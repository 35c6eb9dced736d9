"""`run.py --mode=bench`: how fast a config's model trains and evaluates.

The project's own train and eval steps (`train.make_train_step`,
`train.make_eval_step`), compiled ahead of time, run on the local devices on
one synthetic batch of the config's shapes that is already on them: the
figures are the steps', without the input pipeline. `warmup_steps` steps run
untimed, then each of `timed_steps` steps is timed to its end; figures are
medians over the timed steps. The last line printed is one JSON object:

  train_samples_per_s, eval_samples_per_s   batch size / median step time.
  compile_s                                 compiling the train step.
  peak_memory_bytes   the devices' peak use on accelerators, the process's
                      peak resident set on CPUs.
  gflops_per_sample   multiply-adds of one forward pass / 1e9, the paper's
                      convention (`summary.forward_gflops`).
  mfu                 the train step's model FLOPs (3 forward passes, 2 FLOPs
                      per multiply-add) per second over the devices' peak
                      dense bfloat16 FLOP/s; null where the peak is unknown.
"""

import json
import resource
import statistics
import time
from typing import Any, Callable, Optional

from absl import flags
from flax import jax_utils
import jax
import ml_collections
import numpy as np
import optax

from vivit_jax import models
from vivit_jax import summary
from vivit_jax import train
from vivit_jax import spec

_WARMUP_STEPS = flags.DEFINE_integer(
    'bench_warmup_steps', 2, '--mode=bench: untimed steps before timing.')
_TIMED_STEPS = flags.DEFINE_integer(
    'bench_timed_steps', 10, '--mode=bench: timed steps, of each kind.')

# Peak dense bfloat16 FLOP/s of one device (NVIDIA's data sheets), by the
# start of its `device_kind`; the first match counts.
PEAK_BF16_FLOPS = (
    ('NVIDIA H100 PCIe', 756e12),
    ('NVIDIA H100 NVL', 835e12),
    ('NVIDIA H100', 989e12),
    ('NVIDIA H200', 989e12),
    ('NVIDIA A100', 312e12),
)


def peak_flops_per_s(device: jax.Device) -> Optional[float]:
  """PEAK_BF16_FLOPS of `device`, or None if its kind is not listed."""
  for kind, flops in PEAK_BF16_FLOPS:
    if device.device_kind.startswith(kind):
      return flops
  return None


def peak_memory_bytes() -> int:
  """The local devices' peak memory use, or on CPUs (whose devices keep no
  statistics) the peak resident set of this process."""
  stats = [device.memory_stats() for device in jax.local_devices()]
  if all(stats):
    return max(s['peak_bytes_in_use'] for s in stats)
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB.


def num_params(model, config: ml_collections.ConfigDict) -> int:
  """The number of parameters of `config`'s `model`."""
  variables = summary.abstract_variables(model, config)
  return int(sum(np.prod(p.shape)
                 for p in jax.tree.leaves(variables['params'])))


def time_steps(run_step: Callable[[], Any], num_steps: int) -> list[float]:
  """Seconds of each of `num_steps` calls of `run_step`, each to its end."""
  seconds = []
  for _ in range(num_steps):
    start = time.perf_counter()
    jax.block_until_ready(run_step())
    seconds.append(time.perf_counter() - start)
  return seconds


def synthetic_batch(config: ml_collections.ConfigDict, batch_size: int,
                    seed: int = 0) -> dict:
  """Uniform clips and random labels in the pmapped steps' layout.

  Returns:
    {'inputs': (devices, B / devices, *input_shape) float32, 'labels'
    (devices, B / devices) int32, 'targets': their one-hot vectors,
    'mask': ones}, on the local devices.
  """
  rng = np.random.default_rng(seed)
  num_classes = config.dataset_configs.num_classes
  shape = (jax.local_device_count(), batch_size // jax.local_device_count())
  labels = rng.integers(0, num_classes, shape, dtype=np.int32)
  return jax.device_put({
      'inputs': rng.random(shape + spec.input_shape(config), np.float32),
      'labels': labels,
      'targets': np.eye(num_classes, dtype=np.float32)[labels],
      'mask': np.ones(shape, np.float32),
  })


def _initial_state(config: ml_collections.ConfigDict, model):
  """A fresh training state, replicated over the local devices."""
  # The learning rate does not change the step's cost.
  schedule = optax.constant_schedule(config.lr_configs.base_learning_rate)
  return jax_utils.replicate(train.create_train_state(
      config, model, jax.random.key(config.rng_seed), schedule))


def compile_train_step(config: ml_collections.ConfigDict, model
                       ) -> tuple[Callable[[], Any], float]:
  """`config`'s train step on a fixed synthetic batch, ready to run.

  Returns:
    A function running one step, which returns the new state and metrics
    (the state is donated and carried to the next step); and the seconds
    compiling took.
  """
  train_step = train.make_train_step(
      model, train.metrics_collection(config.dataset_configs.num_classes))
  state = _initial_state(config, model)
  rng = jax_utils.replicate(jax.random.key(config.rng_seed + 1))
  batch = synthetic_batch(config, config.batch_size)
  del batch['mask']
  start = time.perf_counter()
  compiled = train_step.lower(state, batch, rng).compile()
  compile_seconds = time.perf_counter() - start

  def run_step():
    nonlocal state
    state, metrics = compiled(state, batch, rng)
    return state, metrics

  return run_step, compile_seconds


def compile_eval_step(config: ml_collections.ConfigDict, model
                      ) -> Callable[[], Any]:
  """`config`'s eval step on a fixed synthetic batch, ready to run."""
  eval_step = train.make_eval_step(
      model, train.metrics_collection(config.dataset_configs.num_classes))
  state = _initial_state(config, model)
  batch = synthetic_batch(config, config.eval_batch_size)
  del batch['targets']
  compiled = eval_step.lower(state, batch).compile()
  return lambda: compiled(state, batch)


def benchmark(config: ml_collections.ConfigDict, warmup_steps: int = 2,
              timed_steps: int = 10) -> dict:
  """The figures of the module docstring, and what they were measured on.

  Raises:
    ValueError: a config field that cannot work (see `train.validate_config`).
  """
  train.validate_config(config)
  model = models.create_model(config, axis_name=train.AXIS)
  run_train_step, compile_seconds = compile_train_step(config, model)
  train_step_s = statistics.median(
      time_steps(run_train_step, warmup_steps + timed_steps)[warmup_steps:])
  del run_train_step  # Frees the training state before evaluation.
  eval_step_s = statistics.median(time_steps(
      compile_eval_step(config, model),
      warmup_steps + timed_steps)[warmup_steps:])

  gflops = summary.forward_gflops(
      model, summary.abstract_variables(model, config), config)
  train_samples_per_s = config.batch_size / train_step_s
  device = jax.local_devices()[0]
  peak = peak_flops_per_s(device)
  return {
      'train_samples_per_s': train_samples_per_s,
      'eval_samples_per_s': config.eval_batch_size / eval_step_s,
      'compile_s': compile_seconds,
      'peak_memory_bytes': peak_memory_bytes(),
      'gflops_per_sample': gflops,
      # A training step is 3 forward passes; a multiply-add is 2 FLOPs.
      'mfu': (6e9 * gflops * train_samples_per_s
              / (peak * jax.local_device_count()) if peak else None),
      'train_step_s': train_step_s,
      'eval_step_s': eval_step_s,
      'batch_size': config.batch_size,
      'eval_batch_size': config.eval_batch_size,
      'params': num_params(model, config),
      'tokens': summary.num_tokens(config),
      'device': device.device_kind,
      'num_devices': jax.local_device_count(),
      'dtype': config.get('model_dtype_str', 'float32'),
  }


def print_benchmark(config: ml_collections.ConfigDict) -> None:
  """`benchmark` with the --bench_* flags, as one JSON line."""
  print(json.dumps(benchmark(config, _WARMUP_STEPS.value, _TIMED_STEPS.value)))
