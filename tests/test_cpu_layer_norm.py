"""The fused CPU LayerNorm computes Flax's LayerNorm and its gradients, keeps
its parameters, and gives way to Flax's where it does not apply."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vivit_jax.models import cpu_kernels
from vivit_jax.models import cpu_layer_norm

pytestmark = pytest.mark.skipif(
    not cpu_kernels.available(), reason='no C++ compiler on this machine')


def _outputs_and_grads(module, x):
  variables = module.init(jax.random.key(1), x)
  variables = jax.tree.map(  # Parameters other than the initial ones.
      lambda p: p + jax.random.normal(jax.random.key(2), p.shape),
      variables)
  weights = jax.random.normal(jax.random.key(3), x.shape)
  loss = lambda v, x: jnp.sum(weights * module.apply(v, x))
  return jax.jit(lambda v, x: (module.apply(v, x), jax.grad(
      loss, argnums=(0, 1))(v, x)))(variables, x)


@pytest.mark.parametrize('shape,mean', [
    ((16, 343, 64), 0.0),  # The term project's ViViT.
    ((3, 19), 0.0),  # A vector and 3 floats per row.
    ((2, 5, 3), 1.0),  # Narrower than a vector.
    ((70, 768), 0.0),  # ViT-B's width; more rows than the kernel's blocks.
    ((4, 2, 3, 40), 10.0),  # Three batch axes; the mean 10 times the spread.
])
def test_equals_flax_layer_norm_and_its_gradients(shape, mean):
  x = mean + jax.random.normal(jax.random.key(0), shape)
  fused, (fused_grads, fused_dx) = _outputs_and_grads(
      cpu_layer_norm.LayerNorm(), x)
  with cpu_kernels.xla_ops():
    flax_out, (flax_grads, flax_dx) = _outputs_and_grads(nn.LayerNorm(), x)
  assert jax.tree.structure(fused_grads) == jax.tree.structure(flax_grads)
  for got, expected in zip(jax.tree.leaves((fused, fused_grads, fused_dx)),
                           jax.tree.leaves((flax_out, flax_grads, flax_dx))):
    largest = max(np.abs(np.asarray(expected)).max(), 1.0)
    np.testing.assert_allclose(got / largest, expected / largest, atol=2e-5)


@pytest.mark.parametrize('shape', [(16, 343, 64), (3, 19)])
def test_passing_the_input_adds_its_other_gradient(shape):
  """(x, LayerNorm(x)), x also feeding a residual branch: the kernel adds
  that branch's gradient into dx; outputs and gradients are Flax's."""
  x = jax.random.normal(jax.random.key(0), shape)
  weights = jax.random.normal(jax.random.key(3), (2, *shape))
  module = cpu_layer_norm.LayerNorm()
  variables = jax.tree.map(
      lambda p: p + jax.random.normal(jax.random.key(2), p.shape),
      module.init(jax.random.key(1), x))
  fused = lambda v, x: module.apply(v, x, pass_input=True)
  flax = lambda v, x: (x, nn.LayerNorm().apply(v, x))

  def loss(v, x, passing):
    through, y = passing(v, x)
    return jnp.sum(weights[0] * jnp.sin(through) + weights[1] * y)

  grads = jax.jit(jax.grad(loss, argnums=(0, 1)), static_argnums=2)
  assert cpu_kernels.LAYER_NORM_BACKWARD_ADDING in grads.lower(
      variables, x, fused).as_text()
  for got, expected in zip(
      jax.tree.leaves((fused(variables, x), grads(variables, x, fused))),
      jax.tree.leaves((flax(variables, x), grads(variables, x, flax)))):
    largest = max(np.abs(np.asarray(expected)).max(), 1.0)
    np.testing.assert_allclose(got / largest, expected / largest, atol=2e-5)


def test_keeps_flax_parameters_and_takes_flax_path_where_kernel_does_not():
  x = jax.random.normal(jax.random.key(0), (2, 6, 8))
  ours, theirs = cpu_layer_norm.LayerNorm(), nn.LayerNorm()
  assert jax.tree.map(np.shape, ours.init(jax.random.key(1), x)) == \
      jax.tree.map(np.shape, theirs.init(jax.random.key(1), x))
  for module_args, inputs in [({}, x.astype(jnp.bfloat16)),
                              ({'reduction_axes': (-2, -1)}, x),
                              ({'use_bias': False}, x)]:
    ours, theirs = (cls(**module_args) for cls in (cpu_layer_norm.LayerNorm,
                                                    nn.LayerNorm))
    variables = theirs.init(jax.random.key(1), inputs)
    np.testing.assert_array_equal(ours.apply(variables, inputs),
                                  theirs.apply(variables, inputs))


def test_under_pmap_and_the_same_gradients_every_run():
  x = jax.random.normal(jax.random.key(0), (jax.local_device_count(), 50, 8))
  module = cpu_layer_norm.LayerNorm()
  variables = module.init(jax.random.key(1), x[0])
  np.testing.assert_allclose(
      jax.pmap(module.apply, in_axes=(None, 0))(variables, x),
      jax.vmap(nn.LayerNorm().apply, in_axes=(None, 0))(variables, x),
      atol=2e-5)
  grads = [jax.jit(jax.grad(lambda v: jnp.sum(module.apply(v, x) ** 3)))(
      variables) for _ in range(3)]
  for again in grads[1:]:
    jax.tree.map(np.testing.assert_array_equal, again, grads[0])
