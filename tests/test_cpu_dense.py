"""The CPU dense kernel's gradients are x^T dy and dy's column sums, `Dense`
is `nn.Dense`, and both give way to XLA where the kernel does not apply."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vivit_jax.models import cpu_dense
from vivit_jax.models import cpu_kernels

pytestmark = pytest.mark.skipif(
    not cpu_kernels.available(), reason='no C++ compiler on this machine')


def _draws(rows_shape, k, m, seed=0):
  keys = jax.random.split(jax.random.key(seed), 4)
  return (jax.random.normal(keys[0], (*rows_shape, k)),
          jax.random.normal(keys[1], (k, m)),
          jax.random.normal(keys[2], (m,)),
          jax.random.normal(keys[3], (*rows_shape, m)))


def _gradients(x, kernel, bias, dy):
  loss = lambda x, kernel, bias: jnp.vdot(cpu_dense.dense(x, kernel, bias),
                                          dy)
  return jax.jit(jax.grad(loss, argnums=(0, 1, 2)))(x, kernel, bias)


@pytest.mark.parametrize('rows_shape,k,m', [
    ((16, 343), 64, 192),  # The term project's QKV projection.
    ((16, 343), 256, 64),  # Its MLP's second layer.
    ((3, 7, 5), 13, 32),  # Columns in a partial register block.
    ((2, 9), 70, 96),  # Fewer rows than row groups; 70 = 5 x 12 + 10.
    ((1,), 64, 64),  # One row.
    ((0,), 8, 32),  # None.
])
def test_gradients_against_float64(rows_shape, k, m):
  x, kernel, bias, dy = _draws(rows_shape, k, m)
  dx, d_kernel, d_bias = _gradients(x, kernel, bias, dy)
  x64, dy64 = (np.asarray(a, np.float64).reshape(-1, a.shape[-1])
               for a in (x, dy))
  rows = x64.shape[0]
  # Sums of `rows` products of unit normals: float32 rounding grows with
  # their spread, sqrt(rows).
  tolerance = dict(rtol=1e-5, atol=1e-5 * np.sqrt(max(rows, 1)))
  np.testing.assert_allclose(d_kernel, x64.T @ dy64, **tolerance)
  np.testing.assert_allclose(d_bias, dy64.sum(0), **tolerance)
  np.testing.assert_allclose(
      np.asarray(dx).reshape(rows, k),
      dy64 @ np.asarray(kernel, np.float64).T, rtol=1e-5, atol=1e-4)
  np.testing.assert_allclose(cpu_dense.dense(x, kernel, bias),
                             jnp.dot(x, kernel) + bias, rtol=1e-6, atol=1e-5)


def test_gradients_are_the_same_bits_every_call():
  x, kernel, bias, dy = _draws((16, 343), 64, 96)
  first = _gradients(x, kernel, bias, dy)
  for _ in range(3):
    jax.tree.map(np.testing.assert_array_equal,
                 _gradients(x, kernel, bias, dy), first)


def test_without_bias():
  x, kernel, _, dy = _draws((5, 11), 24, 64)
  loss = lambda x, kernel: jnp.vdot(cpu_dense.dense(x, kernel), dy)
  assert cpu_kernels.DENSE_WEIGHT_GRAD in jax.jit(jax.grad(loss, 1)).lower(
      x, kernel).as_text()
  dx, d_kernel = jax.jit(jax.grad(loss, argnums=(0, 1)))(x, kernel)
  reference = jax.grad(lambda x, kernel: jnp.vdot(x @ kernel, dy),
                       argnums=(0, 1))(x, kernel)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(
      a, b, rtol=1e-5, atol=1e-5), (dx, d_kernel), reference)


@pytest.mark.parametrize('features', [64, 40])  # The kernel; XLA's (40).
def test_dense_is_flax_dense(features):
  x = jax.random.normal(jax.random.key(0), (2, 21, 24))
  fused = cpu_dense.Dense(features, bias_init=nn.initializers.normal(1.0))
  flax_dense = nn.Dense(features, bias_init=nn.initializers.normal(1.0))
  params = fused.init(jax.random.key(1), x)
  jax.tree.map(np.testing.assert_array_equal, params,
               flax_dense.init(jax.random.key(1), x))

  def value_and_grads(apply):
    loss = lambda p, x: jnp.sum(jnp.sin(apply(p, x)))
    return jax.jit(lambda p, x: (apply(p, x), jax.grad(
        loss, argnums=(0, 1))(p, x)))(params, x)

  uses_kernel = cpu_kernels.DENSE_WEIGHT_GRAD in jax.jit(jax.grad(
      lambda p: jnp.sum(fused.apply(p, x)))).lower(params).as_text()
  assert uses_kernel == (features % 32 == 0)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(
      a, b, rtol=1e-5, atol=1e-5), value_and_grads(fused.apply),
               value_and_grads(flax_dense.apply))


def test_takes_xla_where_the_kernel_does_not_apply():
  x, kernel, bias, _ = _draws((4, 9), 16, 32)
  halves = [a.astype(jnp.bfloat16) for a in (x, kernel, bias)]
  np.testing.assert_array_equal(cpu_dense.dense(*halves),
                                jnp.dot(*halves[:2]) + halves[2])
  with cpu_kernels.xla_ops():
    hlo = jax.jit(jax.grad(lambda x: jnp.sum(cpu_dense.dense(
        x, kernel, bias)))).lower(x).as_text()
    assert cpu_kernels.DENSE_WEIGHT_GRAD not in hlo


def test_batches_under_vmap():
  x, kernel, bias, _ = _draws((3, 5), 8, 32)

  def kernel_grads(dense):
    loss = lambda x, kernel: jnp.sum(jnp.sin(dense(x, kernel, bias)))
    return jax.vmap(jax.grad(loss, argnums=1), in_axes=(0, None))(x, kernel)

  np.testing.assert_allclose(
      kernel_grads(cpu_dense.dense),
      kernel_grads(lambda x, kernel, bias: x @ kernel + bias),
      rtol=1e-5, atol=1e-5)
