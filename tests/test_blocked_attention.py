"""Blocked attention computes XLA's attention and its gradients, in memory
that does not grow with the square of the tokens."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vivit_jax.models import attention
from vivit_jax.models import blocked_attention


def _qkv(batch, tokens, heads, head_dim, dtype=jnp.float32):
  keys = jax.random.split(jax.random.key(0), 3)
  return [2 * jax.random.normal(key, (batch, tokens, heads, head_dim), dtype)
          for key in keys]


def _loss_and_grads(attention_fn, query, key, value):
  """A loss that weighs every output differently, and its gradients."""
  weights = jax.random.normal(jax.random.key(1), query.shape)

  def loss(q, k, v):
    return jnp.sum(weights * attention_fn(q, k, v).astype(jnp.float32))

  return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))(
      query, key, value)


@pytest.mark.parametrize('block_bytes,tokens', [
    (blocked_attention.BLOCK_BYTES, 50),  # Many heads in a block.
    (4 * 37 * 8, 37),  # 8 query rows a block, the last block padded.
    (4 * 64 * 64, 64),  # One head a block, all its rows.
])
def test_equals_xla_attention_and_its_gradients(monkeypatch, block_bytes,
                                                tokens):
  monkeypatch.setattr(blocked_attention, 'BLOCK_BYTES', block_bytes)
  qkv = _qkv(3, tokens, 4, 8)
  expected = jax.nn.dot_product_attention(*qkv)
  np.testing.assert_allclose(blocked_attention.xla_loops(*qkv),
                             expected, rtol=1e-5, atol=1e-5)
  assert np.abs(np.asarray(expected)).max() > 0.1
  loss, grads = _loss_and_grads(blocked_attention.xla_loops, *qkv)
  expected_loss, expected_grads = _loss_and_grads(
      jax.nn.dot_product_attention, *qkv)
  np.testing.assert_allclose(loss, expected_loss, rtol=1e-5)
  for grad, expected_grad in zip(grads, expected_grads):
    scale = np.abs(np.asarray(expected_grad)).max()
    np.testing.assert_allclose(grad / scale, expected_grad / scale, atol=1e-5)


def test_keeps_the_input_dtype():
  qkv = _qkv(2, 20, 2, 8, jnp.bfloat16)
  out = blocked_attention.xla_loops(*qkv)
  assert out.dtype == jnp.bfloat16
  np.testing.assert_allclose(
      np.asarray(out, np.float32),
      jax.nn.dot_product_attention(*[x.astype(jnp.float32) for x in qkv]),
      atol=0.05)


def test_training_memory_does_not_hold_all_scores():
  tokens, heads = 2048, 8
  scores_bytes = heads * tokens**2 * 4
  shape = jax.ShapeDtypeStruct((1, tokens, heads, 8), jnp.float32)

  def temporary_bytes(attention_fn):
    grad = jax.jit(jax.grad(lambda *qkv: attention_fn(*qkv).sum(),
                            argnums=(0, 1, 2)))
    return grad.lower(shape, shape, shape).compile().memory_analysis(
        ).temp_size_in_bytes

  assert temporary_bytes(jax.nn.dot_product_attention) > scores_bytes
  # The XLA loops, and the CPU kernel where it is built.
  for attention_fn in (blocked_attention.xla_loops,
                       blocked_attention.dot_product_attention):
    assert temporary_bytes(attention_fn) < scores_bytes / 8


def test_cpu_models_use_it_and_xla_attention_counts_flops():
  qkv = _qkv(1, 10, 2, 4)
  assert 'custom_vjp_call' in str(
      jax.make_jaxpr(attention.dot_product_attention)(*qkv))
  with attention.xla_attention():
    jaxpr = str(jax.make_jaxpr(attention.dot_product_attention)(*qkv))
  assert 'custom_vjp_call' not in jaxpr
