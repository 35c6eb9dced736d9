"""Convolutions for tests: XLA's, and outputs with gradients to compare."""

import jax
import jax.numpy as jnp


def lax_conv(x: jnp.ndarray, kernel: jnp.ndarray, padding) -> jnp.ndarray:
  """`lax.conv_general_dilated`, stride 1, channels-last: (batch, *spatial,
  C) with (*window, C, F), (low, high) padding per spatial axis."""
  n = x.ndim - 2
  numbers = jax.lax.conv_dimension_numbers(
      x.shape, kernel.shape, ('N' + 'DHW'[-n:] + 'C', 'DHW'[-n:] + 'IO',
                              'N' + 'DHW'[-n:] + 'C'))
  return jax.lax.conv_general_dilated(
      x, kernel, (1,) * n, padding, dimension_numbers=numbers,
      precision=jax.lax.Precision.HIGHEST)


def conv_and_grads(convs, *args, padding) -> list:
  """For each conv(*args, padding): its output, and the gradients with
  respect to args of the output's dot product with one random array."""
  def run(conv, *args):
    y, backward = jax.vjp(lambda *args: conv(*args, padding), *args)
    return y, backward(jax.random.normal(jax.random.key(7), y.shape))
  return [jax.jit(run, static_argnums=0)(conv, *args) for conv in convs]
