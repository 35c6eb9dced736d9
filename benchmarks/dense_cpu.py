"""A dense layer's kernel and bias gradients on the CPU: the C++ kernel
(`cpu_dense.dense`) against XLA's (`x^T dy` and `dy`'s column sums).

The shapes are those of the term project's Model 1, batch 16, 343 tokens:
the QKV projection (64 -> 192), the output projection (64 -> 64) and the
MLP's two layers (64 -> 256, 256 -> 64). Timed as
`alternating.time_alternating` says; the last line printed is one JSON
object, with each shape's GFLOP/s.

  python -m benchmarks.dense_cpu [--rows=5488]
"""

import json

from absl import app
from absl import flags
import jax
import jax.numpy as jnp

from benchmarks import alternating
from vivit_jax.models import cpu_dense
from vivit_jax.models import cpu_kernels

_ROWS = flags.DEFINE_integer('rows', 16 * 343, 'Rows (tokens of the batch).')
_ROUNDS = flags.DEFINE_integer('rounds', 5, 'Rounds of alternating calls.')
_CALLS = flags.DEFINE_integer('calls_per_round', 20, 'Timed calls per round.')

_LAYERS = {'qkv': (64, 192), 'out': (64, 64), 'mlp_0': (64, 256),
           'mlp_1': (256, 64)}


def _runner(x, kernel, bias, dy):
  """The kernel's and the bias's gradients for dy, compiled now, as models
  get them where this runs (the kernel, or XLA inside `xla_ops`)."""
  grads = jax.jit(jax.grad(
      lambda x, kernel, bias, dy: jnp.vdot(cpu_dense.dense(x, kernel, bias),
                                           dy),
      argnums=(1, 2))).lower(x, kernel, bias, dy).compile()
  return lambda: jax.block_until_ready(grads(x, kernel, bias, dy))


def main(argv):
  del argv
  cpu_kernels.require('XLA\'s dot')
  runners, flops = {}, {}
  for name, (k, m) in _LAYERS.items():
    keys = jax.random.split(jax.random.key(0), 4)
    x = jax.random.normal(keys[0], (_ROWS.value, k))
    dy = jax.random.normal(keys[1], (_ROWS.value, m))
    kernel = jax.random.normal(keys[2], (k, m))
    bias = jax.random.normal(keys[3], (m,))
    runners[f'kernel_{name}'] = _runner(x, kernel, bias, dy)
    with cpu_kernels.xla_ops():
      runners[f'xla_{name}'] = _runner(x, kernel, bias, dy)
    flops[name] = 2 * _ROWS.value * k * m
  result = alternating.time_alternating(runners, _ROUNDS.value, _CALLS.value)
  for name, count in flops.items():
    for path in ('kernel', 'xla'):
      result[f'{path}_{name}_gflops'] = (
          count / result[f'{path}_{name}_ms'] / 1e6)
  result.update(rows=_ROWS.value, layers=_LAYERS)
  print(json.dumps(result))


if __name__ == '__main__':
  app.run(main)
