"""The fused BatchNorm -> ReLU -> max pooling kernels compute what
`nn.BatchNorm`, `nn.relu` and `cnn3d.max_pool` compute, with the same
gradients, statistics and parameters, alone and across devices."""

import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.conftest import run_on_host_devices
from vivit_jax.models import cnn3d
from vivit_jax.models import cpu_batch_norm_pool
from vivit_jax.models import cpu_kernels

pytestmark = pytest.mark.skipif(
    not cpu_kernels.available(), reason='no C++ compiler on this machine')

_EPSILON = 1e-5


def reference(y, scale, bias, axis_name=None, window=2):
  """`nn.BatchNorm`'s training function (its `_compute_stats` and
  `_normalize`), then ReLU and `cnn3d.max_pool`, in jnp."""
  axes = (0, 1, 2, 3)
  mean, mean2 = jnp.mean(y, axes), jnp.mean(y * y, axes)
  if axis_name is not None:
    mean, mean2 = jax.lax.pmean(jnp.stack([mean, mean2]), axis_name)
  var = jnp.maximum(0.0, mean2 - mean * mean)
  z = (y - mean) * (jax.lax.rsqrt(var + _EPSILON) * scale) + bias
  return cnn3d.max_pool(nn.relu(z), window), mean, var


def fused(y, scale, bias, axis_name=None, window=2):
  return cpu_batch_norm_pool.batch_norm_relu_pool(y, scale, bias, _EPSILON,
                                                  axis_name, window)


def _close(actual, expected):
  """Equal to float32 rounding: within 1e-5 of each array's largest
  magnitude."""
  for a, e in zip(jax.tree.leaves(actual), jax.tree.leaves(expected)):
    np.testing.assert_allclose(a, e, rtol=0,
                               atol=1e-5 * float(np.max(np.abs(e))))


def _inputs(shape, ties: bool):
  """y (with, where `ties`, few distinct values, so that windows tie for
  their maximum), scale and bias."""
  y = jax.random.normal(jax.random.key(0), shape)
  if ties:
    y = jnp.round(y * 1.5)
  channels = shape[-1]
  scale = 1 + 0.5 * jax.random.normal(jax.random.key(1), (channels,))
  bias = 0.3 * jax.random.normal(jax.random.key(2), (channels,))
  return y, scale, bias


def _value_and_vjp(function, *args):
  """The outputs and the gradient of a random weighting of them."""
  outputs, vjp = jax.vjp(function, *args)
  keys = jax.random.split(jax.random.key(3), len(outputs))
  cotangents = tuple(jax.random.normal(k, o.shape)
                     for k, o in zip(keys, outputs))
  return outputs, vjp(cotangents)


@pytest.mark.parametrize('shape,window,ties', [
    ((2, 8, 8, 8, 32), 2, False),  # The CNN's blocks.
    ((2, 7, 6, 5, 20), 2, False),  # Cropped planes, rows and columns; a
                                   # vector of channels and a remainder.
    ((3, 4, 4, 4, 3), 2, True),  # Ties for the maximum.
    ((1, 6, 7, 6, 17), 3, True),  # Larger windows.
])
def test_training_equals_batch_norm_relu_max_pool(shape, window, ties):
  args = _inputs(shape, ties)
  forward = lambda f: jax.jit(lambda *a: _value_and_vjp(
      lambda *b: f(*b, window=window), *a))(*args)
  _close(forward(fused), forward(reference))


def test_with_given_statistics_equals_its_reference():
  """The inference function (running averages) and its gradients with
  respect to the input, the statistics, mul and bias."""
  y, _, bias = _inputs((2, 7, 6, 8, 19), ties=False)
  mean = 0.1 * jax.random.normal(jax.random.key(4), (19,))
  mul = jax.random.normal(jax.random.key(5), (19,))

  def expected(y, mean, mul, bias):
    return (cnn3d.max_pool(nn.relu((y - mean) * mul + bias), 2),)

  def actual(y, mean, mul, bias):
    return (cpu_batch_norm_pool.normalize_relu_pool(y, mean, mul, bias, 2),)

  run = lambda f: jax.jit(lambda *a: _value_and_vjp(f, *a))(y, mean, mul,
                                                            bias)
  _close(run(actual), run(expected))


@pytest.mark.parametrize('train', [True, False])
def test_module_is_flax_batch_norm_relu_pool(train):
  """Parameters, batch statistics, their updates, outputs and gradients of
  `cnn3d.BatchNormReluPool` are those of `nn.BatchNorm` -> ReLU -> pool."""
  x, _, _ = _inputs((2, 6, 6, 6, 8), ties=False)
  fused_module = cnn3d.BatchNormReluPool(not train, 0.9, _EPSILON, None, 2)
  batch_norm = nn.BatchNorm(use_running_average=not train, momentum=0.9,
                            epsilon=_EPSILON)
  variables = batch_norm.init(jax.random.key(0), x)
  _close(fused_module.init(jax.random.key(0), x), variables)
  variables = jax.tree.map(  # Not the initial values: all of them count.
      lambda v: v + 0.2 * jax.random.uniform(jax.random.key(1), v.shape),
      variables)

  def run(function):
    def loss(variables, x):
      pooled, updates = function(variables, x)
      return jnp.sum(jnp.sin(pooled)), (pooled, updates)
    return jax.jit(jax.grad(loss, argnums=(0, 1), has_aux=True))(variables, x)

  def reference_block(variables, x):
    x, updates = batch_norm.apply(variables, x, mutable=['batch_stats'])
    return cnn3d.max_pool(nn.relu(x), 2), updates

  _close(run(lambda v, x: fused_module.apply(v, x, mutable=['batch_stats'])),
         run(reference_block))


_PMAP_SCRIPT = r'''
import json
import jax
import jax.numpy as jnp
import numpy as np
from tests.test_cpu_batch_norm_pool import (_inputs, _value_and_vjp, fused,
                                            reference)

assert jax.local_device_count() == 4
y, scale, bias = _inputs((4, 2, 6, 5, 6, 20), ties=False)
run = lambda f: jax.pmap(
    lambda y: _value_and_vjp(lambda *a: f(*a, axis_name='d'), y, scale, bias),
    axis_name='d')(y)
errors = [float(np.max(np.abs(a - e)) / np.max(np.abs(e)))
          for a, e in zip(jax.tree.leaves(run(fused)),
                          jax.tree.leaves(run(reference)))]
print(json.dumps(errors))
'''


def test_statistics_and_their_gradients_across_devices():
  """Under `pmap`, batch statistics are averaged over the devices and the
  gradient flows back through that average, as in `nn.BatchNorm`."""
  errors = json.loads(run_on_host_devices(_PMAP_SCRIPT).splitlines()[-1])
  assert len(errors) == 6 and max(errors) < 1e-5, errors
