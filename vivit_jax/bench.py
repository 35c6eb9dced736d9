"""`run.py --mode=bench`: how fast a config's model trains and evaluates.

The project's own train and eval steps (`steps.make_train_step`,
`steps.make_eval_step`), compiled ahead of time, run on the local devices on
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
import jax
import ml_collections
import numpy as np

from vivit_jax import models
from vivit_jax import spec as spec_lib
from vivit_jax import steps
from vivit_jax import summary

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


def time_steps(run_step: Callable[[], Any], num_steps: int) -> list[float]:
  """Seconds of each of `num_steps` calls of `run_step`, each to its end."""
  seconds = []
  for _ in range(num_steps):
    start = time.perf_counter()
    jax.block_until_ready(run_step())
    seconds.append(time.perf_counter() - start)
  return seconds


def synthetic_batch(spec: spec_lib.Spec, batch_size: int, seed: int = 0
                    ) -> dict:
  """Uniform clips and random labels in the pmapped steps' layout.

  Returns:
    {'inputs': (devices, B / devices, *input_shape) float32, 'labels'
    (devices, B / devices) int32, 'targets': their one-hot vectors}, on the
    local devices.
  """
  rng = np.random.default_rng(seed)
  shape = (jax.local_device_count(), batch_size // jax.local_device_count())
  labels = rng.integers(0, spec.num_classes, shape, dtype=np.int32)
  return jax.device_put({
      'inputs': rng.random(shape + spec.input_shape, np.float32),
      'labels': labels,
      'targets': np.eye(spec.num_classes, dtype=np.float32)[labels],
  })


def compile_train_step(spec: spec_lib.Spec, model
                       ) -> tuple[Callable[[], Any], float]:
  """The config's train step on a fixed synthetic batch, ready to run.

  Returns:
    A function running one step, which returns the new state and metrics
    (the state is donated and carried to the next step); and the seconds
    compiling took.
  """
  train_step = steps.make_train_step(model, spec)
  state = steps.replicate(steps.create_train_state(
      spec, model, jax.random.key(spec.config.rng_seed)))
  rng = steps.replicate(jax.random.key(spec.config.rng_seed + 1))
  batch = synthetic_batch(spec, spec.config.batch_size)
  start = time.perf_counter()
  compiled = train_step.lower(state, batch, rng).compile()
  compile_seconds = time.perf_counter() - start

  def run_step():
    nonlocal state
    state, metrics = compiled(state, batch, rng)
    return state, metrics

  return run_step, compile_seconds


def compile_eval_step(spec: spec_lib.Spec, model) -> Callable[[], Any]:
  """The config's eval step on a fixed synthetic batch, ready to run."""
  variables = steps.replicate(steps.init_variables(
      model, spec, jax.random.key(spec.config.rng_seed)))
  inputs = synthetic_batch(spec, spec.config.eval_batch_size)['inputs']
  compiled = steps.make_eval_step(model).lower(variables, inputs).compile()
  return lambda: compiled(variables, inputs)


def benchmark(config: ml_collections.ConfigDict, warmup_steps: int = 2,
              timed_steps: int = 10) -> dict:
  """The figures of the module docstring, and what they were measured on.

  Raises:
    spec.ConfigError: a config field that cannot work.
  """
  spec = spec_lib.check_config(config, mode='model')
  config = spec.config
  model = models.create_model(spec, axis_name=steps.AXIS)
  run_train_step, compile_seconds = compile_train_step(spec, model)
  train_step_s = statistics.median(
      time_steps(run_train_step, warmup_steps + timed_steps)[warmup_steps:])
  del run_train_step  # Frees the training state before evaluation.
  eval_step_s = statistics.median(time_steps(
      compile_eval_step(spec, model),
      warmup_steps + timed_steps)[warmup_steps:])

  variables = summary.abstract_variables(model, spec)
  gflops = summary.forward_gflops(model, variables, spec)
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
      'params': summary.num_params(variables),
      'tokens': spec.num_tokens,
      'device': device.device_kind,
      'num_devices': jax.local_device_count(),
      'dtype': config.model_dtype_str,
  }


def print_benchmark(config: ml_collections.ConfigDict) -> None:
  """`benchmark` with the --bench_* flags, as one JSON line."""
  print(json.dumps(benchmark(config, _WARMUP_STEPS.value, _TIMED_STEPS.value)))
