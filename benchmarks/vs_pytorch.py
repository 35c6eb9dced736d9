"""vivit-jax against a PyTorch eager ViViT: training samples/s on a CPU.

Trains the term project's ViViT Model 1 (configs/termproject.py:vivit1: its
Sections II and III.C; tubelet 4x4x4 on 28^3 volumes, width 64, 8 heads, 6
layers, batch 16, AdamW) in one process: vivit-jax's train step
(`bench.compile_train_step`) and the PyTorch model below, written for this
comparison, on the same synthetic batch shapes and the same CPU threads.
Rounds of steps alternate between the two, so that both see the same machine
load; each step is timed to its end and the figures are medians over the
timed steps. The last line printed is one JSON object with
`jax_samples_per_s`, `torch_samples_per_s` and `ratio` (JAX over PyTorch).

  pip install -e '.[bench]'   # PyTorch's CPU build.
  python -m benchmarks.vs_pytorch [--config=configs/termproject.py:vivit1]
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

from vivit_jax import bench
from vivit_jax.models import embedding
from vivit_jax import models
from vivit_jax import train

_CONFIG = config_flags.DEFINE_config_file(
    'config', 'configs/termproject.py:vivit1',
    'A ViViT Model 1 config with GAP and a sinusoidal position code.',
    lock_config=True)
_WARMUP_STEPS = flags.DEFINE_integer('warmup_steps', 2,
                                     'Untimed steps of each, first.')
_ROUNDS = flags.DEFINE_integer('rounds', 5, 'Rounds of alternating steps.')
_STEPS_PER_ROUND = flags.DEFINE_integer('steps_per_round', 4,
                                        'Timed steps of each per round.')


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


def torch_train_step(config, batch: dict):
  """A function running one AdamW step of the PyTorch model on `batch`
  (channels-first), and the model."""
  model = ViViTModel1(config).train()
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


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  config = _CONFIG.value
  check_supported(config)
  threads = len(os.sched_getaffinity(0))
  torch.set_num_threads(threads)  # XLA's CPU client uses a thread per core.
  torch.manual_seed(config.rng_seed)

  model = models.create_model(config, axis_name=train.AXIS)
  run_jax_step, compile_seconds = bench.compile_train_step(config, model)
  batch = jax.tree.map(np.asarray, bench.synthetic_batch(
      config, config.batch_size))
  run_torch_step, torch_model = torch_train_step(config, {
      # (devices, B / devices, T, H, W, C) -> (B, C, T, H, W).
      'inputs': torch.tensor(np.moveaxis(
          batch['inputs'].reshape(-1, *batch['inputs'].shape[2:]), -1, 1)),
      'labels': torch.tensor(batch['labels'].reshape(-1), dtype=torch.long)})
  jax_params = bench.num_params(model, config)
  torch_params = sum(p.numel() for p in torch_model.parameters())
  if torch_params != jax_params:
    raise AssertionError(f'PyTorch has {torch_params} parameters, vivit-jax '
                         f'{jax_params}: the models differ.')

  load_before = os.getloadavg()
  bench.time_steps(run_jax_step, _WARMUP_STEPS.value)
  bench.time_steps(run_torch_step, _WARMUP_STEPS.value)
  jax_seconds, torch_seconds = [], []
  for _ in range(_ROUNDS.value):
    jax_seconds += bench.time_steps(run_jax_step, _STEPS_PER_ROUND.value)
    torch_seconds += bench.time_steps(run_torch_step, _STEPS_PER_ROUND.value)
  jax_samples_per_s = config.batch_size / statistics.median(jax_seconds)
  torch_samples_per_s = config.batch_size / statistics.median(torch_seconds)
  print(json.dumps({
      'jax_samples_per_s': jax_samples_per_s,
      'torch_samples_per_s': torch_samples_per_s,
      'ratio': jax_samples_per_s / torch_samples_per_s,
      'params': jax_params,
      'batch_size': config.batch_size,
      'threads': threads,
      'timed_steps': len(jax_seconds),
      'jax_compile_s': compile_seconds,
      'load_average_before': load_before[0],
      'load_average_after': os.getloadavg()[0],
      'cpu': platform.processor() or platform.machine(),
      'jax': jax.__version__,
      'torch': torch.__version__,
  }))


if __name__ == '__main__':
  app.run(main)
