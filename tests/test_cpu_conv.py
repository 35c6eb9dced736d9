"""The CPU convolution kernels compute XLA's convolution and its gradients,
are what the CPU 3D CNN runs, and give way to unfolded convolutions where
they cannot be built."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.conv_reference import conv_and_grads
from tests.conv_reference import lax_conv
from vivit_jax.models import cnn3d
from vivit_jax.models import cpu_conv
from vivit_jax.models import cpu_kernels

pytestmark = pytest.mark.skipif(
    not cpu_kernels.available(), reason='no C++ compiler on this machine')


def _close(actual, expected):
  """Equal to float32 rounding: each array within 1e-5 of its largest
  magnitude (sums of up to a few thousand products)."""
  for a, e in zip(jax.tree.leaves(actual), jax.tree.leaves(expected)):
    np.testing.assert_allclose(a, e, rtol=0,
                               atol=1e-5 * float(np.max(np.abs(e))))


@pytest.mark.parametrize('shape,window,features,padding', [
    ((2, 9, 8, 10, 1), (3, 3, 3), 32, ((1, 1),) * 3),  # The CNN's first.
    ((2, 6, 5, 7, 32), (3, 3, 3), 64, ((1, 1),) * 3),  # Two feature blocks.
    ((3, 6, 5, 7, 3), (3, 2, 3), 40, ((0, 0), (1, 0), (2, 1))),  # Uneven.
    ((2, 4, 30, 5, 2), (1, 3, 5), 5, ((0, 0), (3, 3), (0, 4))),  # Wide.
    ((1, 3, 3, 3, 4), (3, 3, 3), 1, ((2, 2),) * 3),  # Padding > window - 1.
    ((3, 9, 8, 2), (3, 3), 33, ((1, 1), (1, 1))),  # 2D.
    ((2, 17, 6), (5,), 7, ((2, 2),)),  # 1D.
])
def test_equals_xla_convolution_and_its_gradients(shape, window, features,
                                                  padding):
  x = jax.random.normal(jax.random.key(0), shape)
  kernel = jax.random.normal(jax.random.key(1), (*window, shape[-1], features))
  _close(*conv_and_grads([cpu_conv.conv, lax_conv], x, kernel,
                         padding=padding))


def test_bias_and_its_gradient():
  x = jax.random.normal(jax.random.key(0), (2, 5, 4, 6, 3))
  kernel = jax.random.normal(jax.random.key(1), (3, 3, 3, 3, 36))
  bias = jax.random.normal(jax.random.key(2), (36,))
  _close(*conv_and_grads(
      [lambda x, k, b, padding: cpu_conv.conv(x, k, padding, b),
       lambda x, k, b, padding: lax_conv(x, k, padding) + b],
      x, kernel, bias, padding=((1, 1),) * 3))


def test_gradients_are_the_same_bits_on_every_call():
  """The kernel's gradient sums over many planes on several threads, in an
  order that does not depend on which thread ran which planes."""
  x = jax.random.normal(jax.random.key(0), (16, 12, 12, 12, 32))
  kernel = 0.05 * jax.random.normal(jax.random.key(1), (3, 3, 3, 32, 64))
  bias = jnp.zeros(64)
  grads = jax.jit(jax.grad(
      lambda k, b: jnp.sum(jnp.sin(cpu_conv.conv(x, k, ((1, 1),) * 3, b))),
      argnums=(0, 1)))
  first = [np.asarray(g) for g in grads(kernel, bias)]
  for _ in range(10):
    for again, expected in zip(grads(kernel, bias), first):
      np.testing.assert_array_equal(again, expected)


def test_under_vmap_and_pmap_and_in_bfloat16():
  x = jax.random.normal(jax.random.key(0), (3, 2, 5, 4, 6, 2))
  kernel = jax.random.normal(jax.random.key(1), (3, 3, 3, 2, 8))
  padding = ((1, 1),) * 3
  expected = jax.vmap(lambda x: lax_conv(x, kernel, padding))(x)
  conv = lambda x: cpu_conv.conv(x, kernel, padding)
  np.testing.assert_allclose(jax.vmap(conv)(x), expected, rtol=1e-5,
                             atol=1e-5)
  np.testing.assert_allclose(jax.pmap(conv)(x[:jax.device_count()]),
                             expected[:jax.device_count()], rtol=1e-5,
                             atol=1e-5)
  half = cpu_conv.conv(x[0].astype(jnp.bfloat16), kernel, padding)
  assert half.dtype == jnp.bfloat16


def _cnn_hlo() -> str:
  model = cnn3d.CNN3D(num_classes=3, features=(4, 8), axis_name=None,
                      dtype=jnp.float32)
  clip = jnp.zeros((2, 8, 8, 8, 1))
  variables = model.init(jax.random.key(0), clip, train=False)
  return jax.jit(lambda v, x: model.apply(v, x, train=False)).lower(
      variables, clip).as_text()


def test_cpu_cnn_runs_it():
  assert cpu_kernels.CONV_FORWARD in _cnn_hlo()


def test_without_it_the_cnn_unfolds(monkeypatch, tmp_path):
  monkeypatch.setenv('VIVIT_JAX_CACHE', str(tmp_path))
  monkeypatch.setenv('CXX', 'false')
  cpu_kernels.available.cache_clear()
  try:
    hlo = _cnn_hlo()
  finally:
    cpu_kernels.available.cache_clear()
  assert cpu_kernels.CONV_FORWARD not in hlo
  assert 'concatenate' in hlo
