"""vivit-jax against PyTorch eager: training samples/s on a CPU.

Trains, in one process, the term project's ViViT Model 1
(configs/termproject.py:vivit1: its Sections II and III.C; tubelet 4x4x4 on
28^3 volumes, width 64, 8 heads, 6 layers, batch 16, AdamW) and its 3D CNN
(configs/termproject.py:cnn3d: three Conv3D-BatchNorm-ReLU-MaxPool blocks of
32, 64 and 128 filters, batch 16, AdamW): vivit-jax's train step
(`bench.compile_train_step`) and the PyTorch models below, written for this
comparison, on the same synthetic batch shapes and the same number of CPU
threads. Rounds of steps alternate between the two, so that both see the same
machine load; each step is timed to its end and the figures are medians over
the timed steps.

The load average (1 minute) is recorded before and after. Other processes
competing for the cores distort both figures and their ratio, so where either
exceeds the number of cores the run is marked `"quiet": false` and a line says
that its figures are not for the README. The last line printed is one JSON
object: `jax_samples_per_s`, `torch_samples_per_s`, `ratio` (JAX over
PyTorch, ViViT), `cnn_jax_samples_per_s`, `cnn_torch_samples_per_s`,
`cnn_ratio`, `keep_freed_memory`, `load_average_before`,
`load_average_after`, `quiet`.

By default malloc is set as vivit-jax trains (`run.py` and
`train_and_evaluate` set it first: `vivit_jax.allocator`, freed memory kept
in the process), for the whole process, both frameworks alike; PyTorch's
steps gain from it too. `--nokeep_freed_memory` leaves glibc's malloc as it
comes, which hands large freed blocks back to the OS, so each step pages its
buffers in anew.

  pip install -e '.[bench]'   # PyTorch's CPU build.
  python -m benchmarks.vs_pytorch [--config=configs/termproject.py:vivit1]
  python -m benchmarks.vs_pytorch --nokeep_freed_memory
"""

import json
import os
import platform
import statistics

from absl import app
from absl import flags
import jax
from ml_collections import config_flags
import numpy as np
import torch
from torch import nn

from vivit_jax import allocator
from vivit_jax import bench
from vivit_jax.models import embedding
from vivit_jax import models
from vivit_jax import spec as spec_lib
from vivit_jax import steps
from vivit_jax import summary

_CONFIG = config_flags.DEFINE_config_file(
    'config', 'configs/termproject.py:vivit1',
    'A ViViT Model 1 config with GAP and a sinusoidal position code.',
    lock_config=True)
_CNN_CONFIG = config_flags.DEFINE_config_file(
    'cnn_config', 'configs/termproject.py:cnn3d', 'The 3D CNN config.',
    lock_config=True)
_MODELS = flags.DEFINE_list('models', ['vivit', 'cnn3d'],
                            'Which comparisons to run.')
_WARMUP_STEPS = flags.DEFINE_integer('warmup_steps', 2,
                                     'Untimed steps of each, first.')
_ROUNDS = flags.DEFINE_integer('rounds', 5, 'Rounds of alternating steps.')
_STEPS_PER_ROUND = flags.DEFINE_integer('steps_per_round', 4,
                                        'Timed steps of each per round.')
_KEEP_FREED_MEMORY = flags.DEFINE_bool(
    'keep_freed_memory', True,
    'Set malloc as vivit-jax trains (vivit_jax.allocator), for both '
    'frameworks; --nokeep_freed_memory leaves it as it comes.')


class EncoderBlock(nn.Module):
  """Pre-LN block, as `vivit_jax.encoder.EncoderBlock`."""

  def __init__(self, width: int, heads: int, mlp_dim: int, dropout: float,
               attention_dropout: float, gelu: str):
    super().__init__()
    self.norm_attention = nn.LayerNorm(width, eps=1e-6)
    self.attention = nn.MultiheadAttention(
        width, heads, dropout=attention_dropout, batch_first=True)
    self.norm_mlp = nn.LayerNorm(width, eps=1e-6)
    self.mlp = nn.Sequential(
        nn.Linear(width, mlp_dim), nn.GELU(approximate=gelu),
        nn.Dropout(dropout), nn.Linear(mlp_dim, width), nn.Dropout(dropout))
    self.dropout = nn.Dropout(dropout)

  def forward(self, z: torch.Tensor) -> torch.Tensor:
    x = self.norm_attention(z)
    y = self.dropout(self.attention(x, x, x, need_weights=False)[0]) + z
    return self.mlp(self.norm_mlp(y)) + y


class ViViTModel1(nn.Module):
  """Tubelet embedding, sinusoidal position code, L blocks, final LayerNorm,
  global average pooling and a linear head. Clips (batch, C, T, H, W)."""

  def __init__(self, config):
    super().__init__()
    model, data = config.model, config.dataset_configs
    height, width, depth = model.patches.size
    self.embedding = nn.Conv3d(data.num_channels, model.hidden_size,
                               (depth, height, width),
                               stride=(depth, height, width))
    num_tokens = ((data.num_frames // depth) * (data.crop_size // height)
                  * (data.crop_size // width))
    self.register_buffer('position', torch.from_numpy(
        embedding.sinusoidal_embedding(num_tokens, model.hidden_size)))
    self.blocks = nn.Sequential(*[
        EncoderBlock(model.hidden_size, model.num_heads, model.mlp_dim,
                     model.dropout_rate, model.attention_dropout_rate,
                     'tanh' if model.gelu_approximate else 'none')
        for _ in range(model.num_layers)])
    self.encoder_norm = nn.LayerNorm(model.hidden_size, eps=1e-6)
    self.head = nn.Linear(model.hidden_size, data.num_classes)

  def forward(self, clips: torch.Tensor) -> torch.Tensor:
    tokens = self.embedding(clips).flatten(2).transpose(1, 2)
    x = self.encoder_norm(self.blocks(tokens + self.position))
    return self.head(x.mean(dim=1))


class CNN3D(nn.Module):
  """`vivit_jax.models.CNN3D`: Conv3D(k3, padding 1) -> BatchNorm -> ReLU ->
  MaxPool(2) blocks, global average pooling, a linear head. Clips (batch, C,
  D, H, W)."""

  def __init__(self, config, features=(32, 64, 128)):
    super().__init__()
    layers, channels = [], config.dataset_configs.num_channels
    for width in features:
      # Flax's momentum 0.9 keeps 0.9 of the running average: PyTorch's 0.1.
      layers += [nn.Conv3d(channels, width, 3, padding=1),
                 nn.BatchNorm3d(width, eps=1e-5, momentum=0.1), nn.ReLU(),
                 nn.MaxPool3d(2)]
      channels = width
    self.features = nn.Sequential(*layers)
    self.head = nn.Linear(channels, config.dataset_configs.num_classes)

  def forward(self, clips: torch.Tensor) -> torch.Tensor:
    return self.head(self.features(clips).mean(dim=(2, 3, 4)))


def check_supported(config) -> None:
  """Raises ValueError if the PyTorch model is not `config`'s model."""
  model = config.model
  expected = {'model_name': ('vivit', config.get('model_name')),
              'model.attention_config.type': (
                  'spacetime', model.attention_config.type),
              'model.classifier': ('gap', model.classifier),
              'model.positional_embedding': (
                  'sinusoidal_1d', model.positional_embedding),
              'model.stochastic_droplayer_rate': (
                  0.0, model.stochastic_droplayer_rate),
              'model.representation_size': (None, model.representation_size),
              'model_dtype_str': ('float32', config.model_dtype_str),
              'optimizer': ('adamw', config.optimizer)}
  for field, (supported, value) in expected.items():
    if value != supported:
      raise ValueError(f'config.{field} is {value!r}; the PyTorch reference '
                       f'implements {supported!r} only.')


def check_supported_cnn(config) -> None:
  """Raises ValueError if the PyTorch CNN is not `config`'s model."""
  for field, supported in (('model_name', 'cnn3d'), ('optimizer', 'adamw'),
                           ('model_dtype_str', 'float32')):
    if config.get(field) != supported:
      raise ValueError(f'config.{field} is {config.get(field)!r}; the PyTorch '
                       f'reference implements {supported!r} only.')


def torch_train_step(config, batch: dict, model_class=ViViTModel1):
  """A function running one AdamW step of the PyTorch model on `batch`
  (channels-first), and the model."""
  model = model_class(config).train()
  options = config.optimizer_configs
  optimizer = torch.optim.AdamW(
      model.parameters(), lr=config.lr_configs.base_learning_rate,
      betas=(options.beta1, options.beta2), eps=options.epsilon,
      weight_decay=options.weight_decay)
  clips, labels = batch['inputs'], batch['labels']

  def run_step():
    optimizer.zero_grad(set_to_none=True)
    loss = nn.functional.cross_entropy(model(clips), labels)
    loss.backward()
    optimizer.step()

  return run_step, model


def compare(config, model_class) -> dict:
  """Alternating rounds of vivit-jax's and PyTorch's train steps of
  `config`'s model: their samples/s (medians) and the steps timed."""
  spec = spec_lib.check_config(config, mode='model')
  config = spec.config
  torch.manual_seed(config.rng_seed)
  model = models.create_model(spec, axis_name=steps.AXIS)
  run_jax_step, compile_seconds = bench.compile_train_step(spec, model)
  batch = jax.tree.map(np.asarray, bench.synthetic_batch(
      spec, config.batch_size))
  run_torch_step, torch_model = torch_train_step(config, {
      # (devices, B / devices, T, H, W, C) -> (B, C, T, H, W).
      'inputs': torch.tensor(np.moveaxis(
          batch['inputs'].reshape(-1, *batch['inputs'].shape[2:]), -1, 1)),
      'labels': torch.tensor(batch['labels'].reshape(-1), dtype=torch.long)},
      model_class)
  jax_params = summary.num_params(summary.abstract_variables(model, spec))
  torch_params = sum(p.numel() for p in torch_model.parameters())
  if torch_params != jax_params:
    raise AssertionError(f'PyTorch has {torch_params} parameters, vivit-jax '
                         f'{jax_params}: the models differ.')

  bench.time_steps(run_jax_step, _WARMUP_STEPS.value)
  bench.time_steps(run_torch_step, _WARMUP_STEPS.value)
  jax_seconds, torch_seconds = [], []
  for _ in range(_ROUNDS.value):
    jax_seconds += bench.time_steps(run_jax_step, _STEPS_PER_ROUND.value)
    torch_seconds += bench.time_steps(run_torch_step, _STEPS_PER_ROUND.value)
  jax_samples_per_s = config.batch_size / statistics.median(jax_seconds)
  torch_samples_per_s = config.batch_size / statistics.median(torch_seconds)
  return {'jax_samples_per_s': jax_samples_per_s,
          'torch_samples_per_s': torch_samples_per_s,
          'ratio': jax_samples_per_s / torch_samples_per_s,
          'params': jax_params, 'jax_compile_s': compile_seconds,
          'timed_steps': len(jax_seconds)}


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  kept = _KEEP_FREED_MEMORY.value and allocator.keep_freed_memory()
  threads = len(os.sched_getaffinity(0))
  torch.set_num_threads(threads)  # XLA's CPU client uses a thread per core.
  runs = {'vivit': (_CONFIG.value, ViViTModel1, check_supported, ''),
          'cnn3d': (_CNN_CONFIG.value, CNN3D, check_supported_cnn, 'cnn_')}
  for name in _MODELS.value:
    if name not in runs:
      raise app.UsageError(f'--models: {name!r} is not one of {list(runs)}.')
    runs[name][2](runs[name][0])

  load_before = os.getloadavg()
  results = {'batch_size': _CONFIG.value.batch_size}
  for name in _MODELS.value:
    config, model_class, _, prefix = runs[name]
    figures = compare(config, model_class)
    print(f'{name}: {json.dumps(figures)}', flush=True)
    results.update({prefix + key: value for key, value in figures.items()})
  load_after = os.getloadavg()
  quiet = max(load_before[0], load_after[0]) <= threads
  if not quiet:
    print(f'NOT FOR THE README: the load average ({load_before[0]:.2f} before, '
          f'{load_after[0]:.2f} after) exceeded the {threads} cores; other '
          'processes competed for them. Rerun on a quiet machine.')
  results.update({
      'threads': threads,
      'keep_freed_memory': kept,
      'load_average_before': load_before[0],
      'load_average_after': load_after[0],
      'quiet': quiet,
      'cpu': platform.processor() or platform.machine(),
      'jax': jax.__version__,
      'torch': torch.__version__,
  })
  print(json.dumps(results))


if __name__ == '__main__':
  app.run(main)
