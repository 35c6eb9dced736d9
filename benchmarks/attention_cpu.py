"""One layer's softmax attention on the CPU, forward and backward: the fused
C++ kernel (`cpu_attention`), `blocked_attention`'s XLA loops, XLA's
`jax.nn.dot_product_attention` and, where PyTorch is installed, its
`scaled_dot_product_attention` (eager, the same number of threads).

Default shape: the term project's Model 1, batch 16, 343 tokens, 8 heads of
width 8. Timed as `alternating.time_alternating` says; the last line printed
is one JSON object.

  python -m benchmarks.attention_cpu [--batch=16 --tokens=343 --heads=8 --head_dim=8]
"""

import json
import os

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import alternating
from vivit_jax.models import blocked_attention
from vivit_jax.models import cpu_attention
from vivit_jax.models import cpu_kernels

_BATCH = flags.DEFINE_integer('batch', 16, 'Batch.')
_TOKENS = flags.DEFINE_integer('tokens', 343, 'Tokens N.')
_HEADS = flags.DEFINE_integer('heads', 8, 'Heads.')
_HEAD_DIM = flags.DEFINE_integer('head_dim', 8, 'Head width.')
_ROUNDS = flags.DEFINE_integer('rounds', 5, 'Rounds of alternating calls.')
_CALLS = flags.DEFINE_integer('calls_per_round', 5, 'Timed calls per round.')


def _jax_runner(attention_fn, q, k, v):
  """A function running forward and backward of sum(w * attention)."""
  weights = jax.random.normal(jax.random.key(1), q.shape)
  grad = jax.jit(jax.grad(lambda q, k, v: jnp.sum(weights * attention_fn(
      q, k, v)), argnums=(0, 1, 2)))
  return lambda: jax.block_until_ready(grad(q, k, v))


def _torch_runner(q, k, v):
  """PyTorch's SDPA on (batch, heads, N, head_dim) copies, or None."""
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError:
    return None
  torch.set_num_threads(os.cpu_count())
  q, k, v = (torch.tensor(np.moveaxis(np.asarray(x), 2, 1)).requires_grad_()
             for x in (q, k, v))
  weights = torch.randn(q.shape)

  def run():
    out = torch.nn.functional.scaled_dot_product_attention(q, k, v)
    (weights * out).sum().backward()

  return run


def main(argv):
  del argv
  shape = (_BATCH.value, _TOKENS.value, _HEADS.value, _HEAD_DIM.value)
  q, k, v = jax.random.normal(jax.random.key(0), (3, *shape))
  runners = {}
  if cpu_kernels.available():
    runners['fused_kernel'] = _jax_runner(cpu_attention.attention, q, k, v)
  runners['xla_blocked_loops'] = _jax_runner(blocked_attention.xla_loops,
                                               q, k, v)
  runners['xla_dot_product_attention'] = _jax_runner(
      jax.nn.dot_product_attention, q, k, v)
  torch_run = _torch_runner(q, k, v)
  if torch_run is not None:
    runners['torch_sdpa'] = torch_run
  result = alternating.time_alternating(runners, _ROUNDS.value,
                                        _CALLS.value)
  result.update(shape=shape)
  print(json.dumps(result))


if __name__ == '__main__':
  app.run(main)
