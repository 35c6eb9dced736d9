"""The fused CPU attention kernel computes XLA's attention and its gradients,
is what CPU models run, and gives way to the XLA path where it cannot be
built."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vivit_jax.models import attention
from vivit_jax.models import blocked_attention
from vivit_jax.models import cpu_attention
from vivit_jax.models import cpu_kernels

pytestmark = pytest.mark.skipif(
    not cpu_kernels.available(), reason='no C++ compiler on this machine')


def _xla(q, k, v):  # (..., N, heads, head_dim), as the kernel takes them.
  flat = lambda x: x.reshape(-1, *x.shape[-3:])
  return jax.nn.dot_product_attention(flat(q), flat(k), flat(v)).reshape(
      q.shape)


def _value_and_grads(fn, q, k, v):
  weights = jax.random.normal(jax.random.key(3), q.shape)
  loss = lambda q, k, v: jnp.sum(weights * fn(q, k, v))
  return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))(q, k, v)


@pytest.mark.parametrize('shape,scale', [
    ((2, 343, 8, 8), 1.0),  # The term project's: N not a multiple of 16.
    ((3, 5, 2, 8), 1.0),  # Fewer keys than a vector's lanes.
    ((2, 17, 3, 3), 1.0),  # Odd head width, odd heads.
    ((100, 2, 64), 1.0),  # ViT-B's head width; no batch axis.
    ((4, 1, 1, 4), 1.0),  # One token, one head.
    ((2, 3, 50, 2, 16), 4.0),  # Two batch axes; scores in the tens.
    ((2, 40, 2, 16), 8.0),  # Scores a hundred apart: exp underflows to 0.
    ((64, 20, 3, 5), 1.0),  # Many items: a task takes all heads of one.
    ((2, 21, 1, 24), 1.0),  # Transposed 16 columns at a time, 8 alone.
])
def test_equals_xla_attention_and_its_gradients(shape, scale):
  q, k, v = (scale * jax.random.normal(key, shape)
             for key in jax.random.split(jax.random.key(0), 3))
  _, grads = _value_and_grads(cpu_attention.attention, q, k, v)
  _, expected_grads = _value_and_grads(_xla, q, k, v)
  out, expected = cpu_attention.attention(q, k, v), _xla(q, k, v)
  np.testing.assert_allclose(out, expected, rtol=1e-5, atol=2e-5)
  assert np.abs(np.asarray(expected)).max() > 0.1
  for grad, expected_grad in zip(grads, expected_grads):
    largest = max(np.abs(np.asarray(expected_grad)).max(), 1.0)
    np.testing.assert_allclose(grad / largest, expected_grad / largest,
                               atol=2e-5)


@pytest.mark.parametrize('shape', [
    (2, 343, 8, 8), (64, 20, 3, 5), (2, 21, 1, 24), (2, 3, 50, 2, 16)])
def test_self_attention_of_packed_projections(shape):
  """q, k, v sliced from one (..., N, 3, heads, head_dim) projection plus
  its bias: the gradient written as one array, the bias's summed."""
  *lead, n, heads, head_dim = shape
  qkv, bias = (jax.random.normal(key, size) for key, size in zip(
      jax.random.split(jax.random.key(0)),
      [(*lead, n, 3, heads, head_dim), (3, heads, head_dim)]))

  def sliced(qkv, bias):
    biased = qkv + bias
    return _xla(*(biased[..., i, :, :] for i in range(3)))

  weights = jax.random.normal(jax.random.key(3), shape)
  value_and_grads = lambda fn: jax.jit(jax.value_and_grad(
      lambda *args: jnp.sum(weights * fn(*args)), argnums=(0, 1)))(qkv, bias)
  np.testing.assert_allclose(cpu_attention.self_attention(qkv, bias),
                             sliced(qkv, bias), rtol=1e-5, atol=2e-5)
  _, grads = value_and_grads(cpu_attention.self_attention)
  _, expected_grads = value_and_grads(sliced)
  for grad, expected_grad in zip(grads, expected_grads):
    largest = max(np.abs(np.asarray(expected_grad)).max(), 1.0)
    np.testing.assert_allclose(grad / largest, expected_grad / largest,
                               atol=2e-5)


def test_under_vmap_and_pmap_and_in_bfloat16():
  q, k, v = jax.random.normal(jax.random.key(0), (3, 2, 4, 21, 2, 8))
  batched = jax.vmap(cpu_attention.attention)(q, k, v)
  np.testing.assert_allclose(batched, _xla(q, k, v), rtol=1e-5, atol=2e-5)
  devices = jax.local_device_count()
  shards = [x[:, :devices] for x in (q, k, v)]
  np.testing.assert_allclose(
      jax.pmap(cpu_attention.attention, in_axes=1, out_axes=1)(*shards),
      _xla(*shards), rtol=1e-5, atol=2e-5)
  half = cpu_attention.attention(*(x.astype(jnp.bfloat16) for x in (q, k, v)))
  assert half.dtype == jnp.bfloat16


def test_cpu_models_run_it():
  qkv = jax.random.normal(jax.random.key(0), (3, 2, 10, 4, 8))
  hlo = jax.jit(lambda *qkv: attention.dot_product_attention(*qkv)).lower(
      *qkv).as_text()
  assert cpu_kernels.ATTENTION_FORWARD in hlo


@pytest.mark.parametrize('environment', [
    {'CXX': 'false'}, {'CXX': 'no-such-compiler'},
    {'VIVIT_JAX_CPU_KERNEL': '0'}])
def test_without_it_attention_takes_the_xla_path(monkeypatch, tmp_path,
                                                 caplog, environment):
  monkeypatch.setenv('VIVIT_JAX_CACHE', str(tmp_path))
  for name, value in environment.items():
    monkeypatch.setenv(name, value)
  cpu_kernels.available.cache_clear()
  try:
    assert not cpu_kernels.available()
    qkv = jax.random.normal(jax.random.key(0), (3, 2, 10, 4, 8))
    hlo = jax.jit(lambda *qkv: attention.dot_product_attention(*qkv)).lower(
        *qkv).as_text()
    assert cpu_kernels.ATTENTION_FORWARD not in hlo
    np.testing.assert_allclose(blocked_attention.dot_product_attention(*qkv),
                               jax.nn.dot_product_attention(*qkv),
                               rtol=1e-5, atol=2e-5)
  finally:
    cpu_kernels.available.cache_clear()
  warnings = [r.getMessage() for r in caplog.records
              if 'kernels could not be built' in r.getMessage()]
  assert len(warnings) == ('CXX' in environment)
  assert not list(tmp_path.glob('*.so'))
