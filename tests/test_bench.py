"""`run.py --mode=bench` reports its figures; rematerialised encoder blocks
compute what plain ones do, with the same parameters. Speed is measured by
benchmarks/, never asserted here."""

import functools
import json
import math
import os
import subprocess
import sys
import types

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from tests.conftest import REPO, VIVIT_MODELS, tiny_config
from vivit_jax import bench
from vivit_jax import models
from vivit_jax import summary
from vivit_jax import spec
import vivit_jax

BENCH_KEYS = ('train_samples_per_s', 'eval_samples_per_s', 'compile_s',
              'peak_memory_bytes', 'gflops_per_sample')


def test_bench_mode_prints_its_figures_as_the_last_line():
  result = subprocess.run(
      [sys.executable, 'run.py', '--config=configs/tiny.py', '--mode=bench',
       '--bench_warmup_steps=1', '--bench_timed_steps=2'],
      cwd=REPO, capture_output=True, text=True, timeout=180,
      env=dict(os.environ, PYTHONPATH=str(REPO)))
  assert result.returncode == 0, result.stderr[-4000:]
  figures = json.loads(result.stdout.strip().splitlines()[-1])
  for key in BENCH_KEYS:
    assert math.isfinite(figures[key]) and figures[key] > 0, (key, figures)
  assert figures['mfu'] is None  # No known peak FLOP/s for a CPU.
  expected = summary.summarize(
      vivit_jax.load_config(str(REPO / 'configs/tiny.py')))
  assert figures['params'] == expected['params']
  assert figures['gflops_per_sample'] == pytest.approx(expected['gflops'],
                                                       abs=1e-3)
  assert figures['batch_size'] == 8 and figures['device'] == 'cpu'


@pytest.mark.parametrize('device_kind,peak', [
    ('NVIDIA H100 80GB HBM3', 989e12), ('NVIDIA H100 PCIe', 756e12),
    ('NVIDIA H200', 989e12), ('NVIDIA A100-SXM4-40GB', 312e12),
    ('cpu', None)])
def test_peak_flops_by_device_kind(device_kind, peak):
  device = types.SimpleNamespace(device_kind=device_kind)
  assert bench.peak_flops_per_s(device) == peak


# Models 1 and 3: the two kinds of encoder block.
@pytest.mark.parametrize('attention_type,classifier',
                         [VIVIT_MODELS[0], VIVIT_MODELS[2]])
def test_remat_keeps_parameters_loss_and_gradients(attention_type,
                                                   classifier):
  config = tiny_config(attention_type, classifier)
  config.model.num_layers = 1  # Each block is rematerialised alike.
  # Dropout and stochastic depth check that recomputation redraws the masks.
  config.model.dropout_rate = 0.1
  config.model.stochastic_droplayer_rate = 0.2
  plain = models.create_model(config)
  config.model.remat = True
  remat = models.create_model(config)
  clips = jax.random.normal(jax.random.key(0),
                            (2,) + spec.check_config(
                                config, mode='model').input_shape)
  targets = jax.nn.one_hot(jnp.array([0, 2]), 3)
  init = lambda model: functools.partial(model.init, train=False)
  params = jax.jit(init(plain))(jax.random.key(1), clips)['params']
  # Perturbed, so that the zero-initialised head passes gradients back.
  noise = np.random.default_rng(2)
  params = jax.tree.map(lambda p: p + 0.1 * noise.standard_normal(p.shape),
                        params)
  remat_shapes = jax.eval_shape(init(remat), jax.random.key(1), clips)
  assert jax.tree.map(jnp.shape, remat_shapes['params']) == jax.tree.map(
      jnp.shape, params)

  def loss_and_grads(model):
    def loss(params):
      logits = model.apply({'params': params}, clips, train=True,
                           rngs={'dropout': jax.random.key(3)})
      return optax.softmax_cross_entropy(logits, targets).mean()

    assert ('remat' in str(jax.make_jaxpr(loss)(params))) == (model is remat)
    return jax.jit(jax.value_and_grad(loss))(params)

  loss, grads = loss_and_grads(plain)
  remat_loss, remat_grads = loss_and_grads(remat)
  np.testing.assert_allclose(remat_loss, loss, rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5),
               remat_grads, grads)
  assert max(np.abs(g).max() for g in jax.tree.leaves(grads)) > 1e-3
