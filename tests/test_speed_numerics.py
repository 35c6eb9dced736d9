"""The speed paths compute what the straightforward paths compute, to float32
rounding: forward passes and gradients, and the same parameters; and they
compute it in the same order every time: a train step repeated gives the
same bits."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.conv_reference import conv_and_grads
from tests.conv_reference import lax_conv
from tests.conftest import REPO
from tests.conftest import tiny_config
import vivit_jax
from vivit_jax import bench
from vivit_jax import models
from vivit_jax import spec as spec_lib
from vivit_jax.models import attention
from vivit_jax.models import blocked_attention
from vivit_jax.models import cnn3d
from vivit_jax.models import cpu_kernels
from vivit_jax.models import embedding
from vivit_jax.models import encoder
from vivit_jax.models import self_attention

RTOL, ATOL = 2e-5, 2e-5


def _close(actual, expected, rtol=RTOL, atol=ATOL):
  for a, e in zip(jax.tree.leaves(actual), jax.tree.leaves(expected)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(e), rtol=rtol,
                               atol=atol)


def _flax_attention(num_heads, dtype, dropout_rate, attention_fn, name):
  return nn.MultiHeadDotProductAttention(
      num_heads=num_heads, dtype=dtype, broadcast_dropout=False,
      dropout_rate=dropout_rate, attention_fn=attention_fn,
      kernel_init=nn.initializers.xavier_uniform(), name=name)


@pytest.mark.parametrize('attention_fn', [
    attention.dot_product_attention,
    lambda q, k, v, **kw: attention.factorized_dot_product_attention(
        q, k, v, temporal_dims=3, **kw)])
def test_self_attention_equals_flax_module(attention_fn):
  x = jax.random.normal(jax.random.key(0), (2, 12, 16))
  fast = self_attention.MultiHeadSelfAttention(
      num_heads=4, attention_fn=attention_fn)
  reference = _flax_attention(4, jnp.float32, 0.0, attention_fn, None)
  params = fast.init(jax.random.key(1), x)
  # The same parameter tree, names, shapes and initial values.
  _close(params, reference.init(jax.random.key(1), x), 0, 0)

  def loss(module):
    return lambda p, x: jnp.sum(jnp.sin(module.apply(p, x)))

  _close(fast.apply(params, x), reference.apply(params, x))
  _close(jax.grad(loss(fast), argnums=(0, 1))(params, x),
         jax.grad(loss(reference), argnums=(0, 1))(params, x))


def test_self_attention_dropout_equals_flax_module():
  x = jax.random.normal(jax.random.key(0), (2, 12, 16))
  fast = self_attention.MultiHeadSelfAttention(num_heads=4, dropout_rate=0.3)
  reference = _flax_attention(4, jnp.float32, 0.3,
                              attention.dot_product_attention, None)
  params = fast.init(jax.random.key(1), x)
  rngs = {'dropout': jax.random.key(2)}
  _close(fast.apply(params, x, deterministic=False, rngs=rngs),
         reference.apply(params, x, deterministic=False, rngs=rngs))


def test_heads_first_attention_equals_xla():
  q, k, v = jax.random.normal(jax.random.key(0), (3, 2, 50, 4, 8))

  def loss(f):
    return lambda q, k, v: jnp.sum(jnp.cos(f(q, k, v)))

  _close(blocked_attention.dot_product_attention(q, k, v),
         jax.nn.dot_product_attention(q, k, v))
  _close(jax.grad(loss(blocked_attention.dot_product_attention),
                  argnums=(0, 1, 2))(q, k, v),
         jax.grad(loss(jax.nn.dot_product_attention),
                  argnums=(0, 1, 2))(q, k, v))


def _vivit():
  config = tiny_config(classifier='gap', size=12, num_frames=8,
                       patch_size=(4, 4, 4), num_classes=5)
  config.model.update(hidden_size=32, mlp_dim=64,
                      positional_embedding='sinusoidal_1d')
  return models.create_model(config)


def test_vivit_model1_equals_reference_path(monkeypatch):
  """Model 1 with the speed paths against Flax's attention module and
  LayerNorm and XLA's attention and convolution, forward and gradients."""
  model = _vivit()
  clip = jax.random.normal(jax.random.key(0), (2, 8, 12, 12, 1))
  params = jax.jit(lambda x: model.init(jax.random.key(1), x,
                                        train=False))(clip)
  # Off the initial values: the head starts at zero, where every other
  # parameter's gradient is zero too.
  params = jax.tree.map(
      lambda p: p + 0.1 * jax.random.normal(jax.random.key(2), p.shape),
      params)

  def loss(p, x):
    return jnp.sum(jnp.sin(model.apply(p, x, train=True)))

  # A new jitted function each time: traced under the paths set at the call.
  def run():
    return jax.jit(lambda p, x: (model.apply(p, x, train=False),
                                 jax.grad(loss, argnums=(0, 1))(p, x)))(
                                     params, clip)

  fast = run()
  monkeypatch.setattr(encoder, '_self_attention', _flax_attention)
  monkeypatch.setattr(embedding, 'FAST_PATCHES', False, raising=False)
  with attention.xla_attention(), cpu_kernels.xla_ops():
    reference = run()
  _close(fast, reference)


@pytest.mark.parametrize('module,shape', [
    (embedding.TubeletEmbedding(16, (4, 2, 3)), (2, 6, 8, 6, 3)),
    (embedding.FrameSamplingEmbedding(16, (4, 2), 3), (2, 6, 8, 6, 3))])
def test_patch_matmul_equals_convolution(monkeypatch, module, shape):
  clip = jax.random.normal(jax.random.key(0), shape)
  params = module.init(jax.random.key(1), clip)

  def run(p, x):
    y = module.apply(p, x)
    return y, jax.grad(lambda p, x: jnp.sum(jnp.sin(module.apply(p, x))),
                       argnums=(0, 1))(p, x)

  fast = run(params, clip)
  monkeypatch.setattr(embedding, 'FAST_PATCHES', False)
  _close(fast, run(params, clip))


@pytest.mark.parametrize('kernels', [True, False])
def test_cnn3d_equals_reference_path(monkeypatch, kernels):
  """The 3D CNN's train-mode forward pass, batch statistics and gradients
  (convolutions by the CPU kernels, or unfolded) against
  `lax.conv_general_dilated` and `nn.max_pool`."""
  if not kernels:
    monkeypatch.setattr(cpu_kernels, 'used', lambda: False)
  model = cnn3d.CNN3D(num_classes=3, features=(4, 8), axis_name=None,
                      dtype=jnp.float32)
  clip = jax.random.normal(jax.random.key(0), (2, 9, 8, 10, 1))
  variables = jax.jit(lambda x: model.init(jax.random.key(1), x,
                                           train=False))(clip)

  def run():
    def loss(params, x):
      logits, updates = model.apply(
          {**variables, 'params': params}, x, train=True,
          mutable=['batch_stats'])
      return jnp.sum(jnp.sin(logits)), (logits, updates)

    return jax.jit(jax.grad(loss, argnums=(0, 1), has_aux=True))(
        variables['params'], clip)

  fast = run()
  monkeypatch.setattr(cnn3d, 'FAST_PATHS', False)
  _close(fast, run())


def test_conv3_is_flax_conv(monkeypatch):
  """`cnn3d.Conv3`'s parameters are `nn.Conv`'s, initialised alike, and it
  computes what `nn.Conv` computes on every path."""
  x = jax.random.normal(jax.random.key(0), (2, 5, 6, 4, 3))
  reference = nn.Conv(8, (3, 3, 3), padding=1)
  params = reference.init(jax.random.key(1), x)
  _close(cnn3d.Conv3(8, jnp.float32).init(jax.random.key(1), x), params, 0, 0)
  expected = reference.apply(params, x)
  _close(cnn3d.Conv3(8, jnp.float32).apply(params, x), expected)
  monkeypatch.setattr(cpu_kernels, 'used', lambda: False)
  _close(cnn3d.Conv3(8, jnp.float32).apply(params, x), expected)
  monkeypatch.setattr(cnn3d, 'FAST_PATHS', False)
  _close(cnn3d.Conv3(8, jnp.float32).apply(params, x), expected)


@pytest.mark.parametrize('shape,window,padding', [
    ((2, 6, 5, 7, 3), (3, 3, 3), ((1, 1),) * 3),
    ((2, 6, 5, 7, 1), (3, 2, 3), ((0, 0), (1, 0), (2, 1))),
    ((3, 9, 8, 2), (3, 3), ((1, 1), (1, 1)))])
def test_unfolded_conv_equals_lax(shape, window, padding):
  x = jax.random.normal(jax.random.key(0), shape)
  w = jax.random.normal(jax.random.key(1), (*window, shape[-1], 4))
  _close(*conv_and_grads([cnn3d.unfolded_conv, lax_conv], x, w,
                         padding=padding))


@pytest.mark.parametrize('config_arg', ['medmnist3d.py:adrenalmnist3d',
                                        'adrenal.py:cnn3d'])
def test_train_steps_give_the_same_bits_every_time(config_arg):
  """The recipe (a BatchNorm stem before Model 1) and the 3D CNN, 3 steps
  from the same state twice: the same parameters and metrics, bit for bit
  (the parallel kernels sum in a fixed order)."""
  config = vivit_jax.load_config(str(REPO / 'configs' / config_arg))
  config.batch_size = 8
  spec = spec_lib.check_config(config, mode='model')
  model = models.create_model(spec.config)
  runs = []
  for _ in range(2):
    run_step, _ = bench.compile_train_step(spec, model)
    for _ in range(3):
      state, metrics = run_step()
    runs.append(jax.tree.leaves((state.params, metrics)))
  for again, first in zip(*runs):
    np.testing.assert_array_equal(again, first)
