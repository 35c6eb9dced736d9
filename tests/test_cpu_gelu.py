"""The CPU GELU kernels compute jax.nn.gelu's tanh approximation of x + bias
and its gradients, DenseGelu is Dense then GELU, and both give way to JAX's
GELU where they do not apply."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vivit_jax.models import cpu_gelu
from vivit_jax.models import cpu_kernels

pytestmark = pytest.mark.skipif(
    not cpu_kernels.available(), reason='no C++ compiler on this machine')


def _float64_gelu_and_slope(x):
  """The tanh approximation and its derivative, in float64 (NumPy)."""
  x = np.asarray(x, np.float64)
  c = np.sqrt(2 / np.pi)
  t = np.tanh(c * (x + 0.044715 * x**3))
  return x * (1 + t) / 2, (1 + t) / 2 + x * (1 - t * t) / 2 * c * (
      1 + 3 * 0.044715 * x**2)


def _check_against_float64(x, gelus=(cpu_gelu.gelu, jax.nn.gelu)):
  """Kernel and JAX both within float32 rounding of the float64 values
  (JAX's 1 + tanh cancels where x is very negative, the kernel's does not,
  so the two differ by a few units in the 6th digit of the gradient)."""
  expected, slope = _float64_gelu_and_slope(x)
  for gelu in gelus:
    y = jax.jit(gelu)(x)
    grad = jax.jit(jax.grad(lambda x: jnp.sum(gelu(x))))(x)
    np.testing.assert_allclose(y, expected, rtol=1e-6, atol=2e-6)
    np.testing.assert_allclose(grad, slope, rtol=1e-6, atol=1e-5)


@pytest.mark.parametrize('shape,scale', [
    ((16, 343, 256), 1.0),  # The term project's MLP.
    ((7,), 3.0),  # Less than a vector.
    ((3, 37), 10.0),  # Vectors and a partial one.
    ((5, 16411), 2.0),  # More than one work item, with a partial vector.
])
def test_equals_the_tanh_gelu_and_its_gradient(shape, scale):
  _check_against_float64(scale * jax.random.normal(jax.random.key(0), shape))


def test_large_inputs_stay_finite():
  x = jnp.array([-1e30, -1e4, -100.0, -20.0, -5.0, 0.0, 5.0, 20.0, 1e4, 1e30])
  assert np.all(np.isfinite(cpu_gelu.gelu(x)))
  assert np.all(np.isfinite(jax.grad(lambda x: cpu_gelu.gelu(x).sum())(x)))
  _check_against_float64(x, [cpu_gelu.gelu])  # JAX's gradient: NaN at 1e30.


def test_takes_jax_gelu_where_the_kernel_does_not_apply():
  x = jax.random.normal(jax.random.key(0), (4, 9))
  for args in [(x, False), (x.astype(jnp.bfloat16), True)]:
    np.testing.assert_array_equal(cpu_gelu.gelu(*args), jax.nn.gelu(*args))
  with cpu_kernels.xla_ops():
    np.testing.assert_array_equal(jax.jit(cpu_gelu.gelu)(x),
                                  jax.jit(jax.nn.gelu)(x))


def test_batches_under_vmap():
  x = jax.random.normal(jax.random.key(0), (3, 5, 40))
  np.testing.assert_allclose(jax.vmap(cpu_gelu.gelu)(x), jax.nn.gelu(x),
                             rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize('shape', [(16, 343, 256), (3, 37), (40, 7)])
def test_adds_the_bias_and_returns_its_gradient(shape):
  x, bias, weights = (jax.random.normal(key, size) for key, size in zip(
      jax.random.split(jax.random.key(0), 3), (shape, shape[-1:], shape)))
  expected, slope = _float64_gelu_and_slope(
      np.asarray(x, np.float64) + np.asarray(bias, np.float64))
  loss = lambda x, bias: jnp.sum(weights * cpu_gelu.gelu(x, True, bias))
  dx, dbias = jax.jit(jax.grad(loss, argnums=(0, 1)))(x, bias)
  expected_dx = np.asarray(weights, np.float64) * slope
  np.testing.assert_allclose(cpu_gelu.gelu(x, True, bias), expected,
                             rtol=1e-6, atol=2e-6)
  np.testing.assert_allclose(dx, expected_dx, rtol=1e-6, atol=1e-5)
  rows = int(np.prod(shape[:-1]))
  np.testing.assert_allclose(dbias, expected_dx.reshape(rows, -1).sum(0),
                             rtol=1e-5, atol=1e-5 * np.sqrt(rows))


def test_dense_gelu_is_dense_then_gelu():
  x = jax.random.normal(jax.random.key(0), (2, 21, 24))
  fused = cpu_gelu.DenseGelu(40, bias_init=nn.initializers.normal(1.0))
  params = fused.init(jax.random.key(1), x)
  dense = nn.Dense(40, bias_init=nn.initializers.normal(1.0))
  assert jax.tree.map(jnp.shape, params) == jax.tree.map(
      jnp.shape, dense.init(jax.random.key(1), x))

  def value_and_grads(fn):
    loss = lambda p, x: jnp.sum(jnp.sin(fn(p, x)))
    return jax.jit(lambda p, x: (fn(p, x), jax.grad(loss, argnums=(0, 1))(
        p, x)))(params, x)

  fast = value_and_grads(fused.apply)
  assert cpu_kernels.GELU_FORWARD in jax.jit(fused.apply).lower(
      params, x).as_text()
  reference = value_and_grads(
      lambda p, x: jax.nn.gelu(dense.apply(p, x), approximate=True))
  jax.tree.map(lambda a, b: np.testing.assert_allclose(
      a, b, rtol=1e-5, atol=1e-5), fast, reference)
