"""GELU (tanh approximation) of x + bias, the Dense layer's output and bias,
on the CPU, forward and forward with backward: the fused C++ kernels
(`cpu_gelu.gelu`) against `jax.nn.gelu` as XLA compiles it.

Default shape: the MLP's hidden layer in the term project's Model 1, batch
16, 343 tokens, width 256. Timed as `alternating.time_alternating` says; the
last line printed is one JSON object.

  python -m benchmarks.gelu_cpu [--rows=5488 --width=256]
"""

import json

from absl import app
from absl import flags
import jax

from benchmarks import alternating
from vivit_jax.models import cpu_gelu
from vivit_jax.models import cpu_kernels

_ROWS = flags.DEFINE_integer('rows', 16 * 343, 'Rows (tokens of the batch).')
_WIDTH = flags.DEFINE_integer('width', 256, 'Width (the MLP dimension).')
_ROUNDS = flags.DEFINE_integer('rounds', 5, 'Rounds of alternating calls.')
_CALLS = flags.DEFINE_integer('calls_per_round', 20, 'Timed calls per round.')


def _runners(gelu, x, bias, weights):
  """Forward, and forward with backward (the output and the gradients of x
  and bias for the output gradient `weights`, as a model needs them),
  compiled now."""

  def forward_backward(x, bias):
    y, vjp = jax.vjp(gelu, x, bias)
    return y, vjp(weights)

  forward = jax.jit(gelu).lower(x, bias).compile()
  both = jax.jit(forward_backward).lower(x, bias).compile()
  return (lambda: jax.block_until_ready(forward(x, bias)),
          lambda: jax.block_until_ready(both(x, bias)))


def main(argv):
  del argv
  cpu_kernels.require('jax.nn.gelu')
  x, weights = jax.random.normal(jax.random.key(0), (2, _ROWS.value,
                                                     _WIDTH.value))
  bias = jax.random.normal(jax.random.key(1), (_WIDTH.value,))
  kernel_forward, kernel_both = _runners(
      lambda x, bias: cpu_gelu.gelu(x, True, bias), x, bias, weights)
  xla_forward, xla_both = _runners(lambda x, bias: jax.nn.gelu(x + bias),
                                   x, bias, weights)
  result = alternating.kernel_against_reference(
      (kernel_forward, kernel_both), (xla_forward, xla_both), 'xla',
      _ROUNDS.value, _CALLS.value)
  result.update(shape=(_ROWS.value, _WIDTH.value))
  print(json.dumps(result))


if __name__ == '__main__':
  app.run(main)
