"""One LayerNorm on the CPU, forward and forward with backward: the fused
C++ kernel (`cpu_layer_norm.LayerNorm`) against Flax's `nn.LayerNorm` as
XLA compiles it.

Default shape: the term project's Model 1, batch 16, 343 tokens, width 64.
Timed as `alternating.time_alternating` says; the last line printed is one
JSON object.

  python -m benchmarks.layer_norm_cpu [--rows=5488 --width=64]
"""

import json

from absl import app
from absl import flags
import flax.linen as nn
import jax
import jax.numpy as jnp

from benchmarks import alternating
from vivit_jax.models import cpu_kernels
from vivit_jax.models import cpu_layer_norm

_ROWS = flags.DEFINE_integer('rows', 16 * 343, 'Rows (tokens of the batch).')
_WIDTH = flags.DEFINE_integer('width', 64, 'Width (the normalised axis).')
_ROUNDS = flags.DEFINE_integer('rounds', 5, 'Rounds of alternating calls.')
_CALLS = flags.DEFINE_integer('calls_per_round', 20, 'Timed calls per round.')


def _runners(module, x, weights):
  """Forward, and forward with backward, compiled now (under the paths the
  caller has set)."""
  variables = module.init(jax.random.key(1), x)
  loss = lambda v, x: jnp.sum(weights * module.apply(v, x))
  forward = jax.jit(module.apply).lower(variables, x).compile()
  both = jax.jit(jax.grad(loss, argnums=(0, 1))).lower(variables, x).compile()
  return (lambda: jax.block_until_ready(forward(variables, x)),
          lambda: jax.block_until_ready(both(variables, x)))


def main(argv):
  del argv
  cpu_kernels.require('flax.linen.LayerNorm')
  x, weights = jax.random.normal(jax.random.key(0), (2, _ROWS.value,
                                                     _WIDTH.value))
  kernel_forward, kernel_both = _runners(cpu_layer_norm.LayerNorm(), x,
                                         weights)
  with cpu_kernels.xla_ops():
    flax_forward, flax_both = _runners(nn.LayerNorm(), x, weights)
  result = alternating.kernel_against_reference(
      (kernel_forward, kernel_both), (flax_forward, flax_both), 'flax',
      _ROUNDS.value, _CALLS.value)
  result.update(shape=(_ROWS.value, _WIDTH.value))
  print(json.dumps(result))


if __name__ == '__main__':
  app.run(main)
