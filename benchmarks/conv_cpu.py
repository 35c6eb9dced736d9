"""The 3D CNN's convolutions on the CPU, forward and backward: the fused C++
kernels (`cpu_conv`), one matmul over unfolded patches
(`cnn3d.unfolded_conv`), XLA's `lax.conv_general_dilated` and, where
PyTorch is installed, its `conv3d` (eager, the same number of threads).

One figure per implementation and layer of the term project's CNN (batch
16: 28^3 x 1 -> 32, 14^3 x 32 -> 64, 7^3 x 64 -> 128, kernel 3^3, padding
1): output, then the gradients of the kernel and (but for the first layer,
whose input is the data) of the input for one random output gradient. Timed as `alternating.time_alternating` says; the last line
printed is one JSON object.

  python -m benchmarks.conv_cpu [--batch=16]
"""

import json
import os

from absl import app
from absl import flags
import jax
import numpy as np

from benchmarks import alternating
from vivit_jax.models import cnn3d
from vivit_jax.models import cpu_conv
from vivit_jax.models import cpu_kernels

_BATCH = flags.DEFINE_integer('batch', 16, 'Batch.')
_ROUNDS = flags.DEFINE_integer('rounds', 5, 'Rounds of alternating calls.')
_CALLS = flags.DEFINE_integer('calls_per_round', 5, 'Timed calls per round.')

# (D = H = W, input channels, output channels) of the term project's CNN.
_LAYERS = ((28, 1, 32), (14, 32, 64), (7, 64, 128))
_PADDING = ((1, 1),) * 3


def _lax_conv(x, kernel, padding):
  return jax.lax.conv_general_dilated(
      x, kernel, (1, 1, 1), padding,
      dimension_numbers=('NDHWC', 'DHWIO', 'NDHWC'))


def _jax_runner(conv, x, kernel, input_grad: bool):
  """A function computing conv's output and its vector-Jacobian product
  (for the kernel, and for x if input_grad)."""
  @jax.jit
  def forward_backward(x, kernel, dy):
    if input_grad:
      y, backward = jax.vjp(lambda x, k: conv(x, k, _PADDING), x, kernel)
    else:
      y, backward = jax.vjp(lambda k: conv(x, k, _PADDING), kernel)
    return y, backward(dy)

  dy = jax.random.normal(jax.random.key(2), (*x.shape[:-1], kernel.shape[-1]))
  return lambda: jax.block_until_ready(forward_backward(x, kernel, dy))


def _torch_runner(x, kernel, input_grad: bool):
  """PyTorch's conv3d on (batch, C, D, H, W) copies, or None."""
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError:
    return None
  torch.set_num_threads(len(os.sched_getaffinity(0)))
  x = torch.tensor(np.moveaxis(np.asarray(x), -1, 1))
  x.requires_grad_(input_grad)
  kernel = torch.tensor(np.asarray(kernel).transpose(4, 3, 0, 1, 2))
  kernel.requires_grad_()
  dy = torch.randn(x.shape[0], kernel.shape[0], *x.shape[2:])

  def run():
    y = torch.nn.functional.conv3d(x, kernel, padding=1)
    y.backward(dy)

  return run


def main(argv):
  del argv
  result = {}
  for layer, (size, channels, features) in enumerate(_LAYERS):
    x = jax.random.normal(jax.random.key(0),
                          (_BATCH.value, size, size, size, channels))
    kernel = jax.random.normal(jax.random.key(1),
                               (3, 3, 3, channels, features))
    input_grad = layer > 0
    runners = {}
    if cpu_kernels.available():
      runners['fused_kernel'] = _jax_runner(cpu_conv.conv, x, kernel,
                                            input_grad)
    runners['unfolded_matmul'] = _jax_runner(cnn3d.unfolded_conv, x, kernel,
                                             input_grad)
    runners['xla_conv'] = _jax_runner(_lax_conv, x, kernel, input_grad)
    torch_run = _torch_runner(x, kernel, input_grad)
    if torch_run is not None:
      runners['torch_conv3d'] = torch_run
    figures = alternating.time_alternating(runners, _ROUNDS.value,
                                           _CALLS.value)
    passes = 3 if input_grad else 2  # Forward, kernel and input gradients.
    figures['gflop'] = passes * 2 * x.size * 27 * features / 1e9
    print(f'Conv_{layer}: {json.dumps(figures)}', flush=True)
    result[f'Conv_{layer}'] = figures
  print(json.dumps(result))


if __name__ == '__main__':
  app.run(main)
