"""Sharpness-aware minimisation (`config.sam_rho`): the train step against
SAM's update written out, for a ViViT and for the recipe's ViViT, whose
BatchNorm stem keeps the statistics of the unperturbed pass."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import vivit_jax
from tests.conftest import REPO, SHARED
from vivit_jax import bench
from vivit_jax import models
from vivit_jax import spec as spec_lib
from vivit_jax import steps

RHO = 0.05


def _config(config_arg: str, sam_rho: float):
  """The config with SAM and plain SGD at a constant rate of 1, so that a
  step moves the parameters by minus the gradient it took, and without
  dropout or stochastic depth, so that a pass is a function of the
  parameters."""
  config = vivit_jax.load_config(str(REPO / config_arg))
  config.dataset_configs.data_dir = str(SHARED / 'data')
  config.batch_size = 4
  config.sam_rho = sam_rho
  config.model.dropout_rate = 0.0
  config.model.stochastic_droplayer_rate = 0.0
  config.optimizer = 'sgd'
  config.optimizer_configs = {'momentum': 0.0, 'weight_decay': 0.0}
  config.lr_configs.learning_rate_schedule = 'constant'
  config.lr_configs.base_learning_rate = 1.0
  config.lr_configs.warmup_epochs = 0.0
  return config


@pytest.mark.parametrize('config_arg', ['configs/tiny.py',
                                        'configs/medmnist3d.py'])
def test_train_step_takes_the_gradient_at_the_perturbed_point(config_arg):
  spec = spec_lib.check_config(_config(config_arg, RHO), mode='model')
  model = models.create_model(spec, axis_name=steps.AXIS)
  state = steps.create_train_state(spec, model, jax.random.key(0))
  batch = bench.synthetic_batch(spec, spec.config.batch_size, seed=1)
  inputs, targets = batch['inputs'][0], batch['targets'][0]
  with_stats = bool(state.batch_stats)
  single_device_model = models.create_model(spec)

  def loss_and_stats(params):
    variables = {'params': params}
    if with_stats:
      variables['batch_stats'] = state.batch_stats
      logits, updates = single_device_model.apply(
          variables, inputs, train=True, mutable=['batch_stats'])
    else:
      logits = single_device_model.apply(variables, inputs, train=True)
      updates = {}
    return optax.softmax_cross_entropy(logits, targets).mean(), updates

  grads, updates = jax.grad(loss_and_stats, has_aux=True)(state.params)
  norm = jnp.sqrt(sum(jnp.sum(g ** 2) for g in jax.tree.leaves(grads)))
  perturbed = jax.tree.map(lambda p, g: p + RHO * g / norm, state.params,
                           grads)
  sam_grads, _ = jax.grad(loss_and_stats, has_aux=True)(perturbed)
  expected = state.apply_gradients(grads=sam_grads)
  plain = state.apply_gradients(grads=grads)

  new_state, _ = steps.make_train_step(model, spec)(
      steps.replicate(state), batch, steps.replicate(jax.random.key(2)))
  params = jax.tree.map(lambda x: np.asarray(x[0]), new_state.params)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5),
               params, expected.params)
  assert not all(np.allclose(a, b, atol=1e-6) for a, b in zip(
      jax.tree.leaves(params), jax.tree.leaves(plain.params)))
  if with_stats:
    stats = jax.tree.map(lambda x: np.asarray(x[0]), new_state.batch_stats)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6),
                 stats, updates['batch_stats'])


def test_a_negative_radius_is_refused():
  with pytest.raises(spec_lib.ConfigError,
                     match=r'config\.sam_rho: -0\.1 is negative'):
    spec_lib.check_config(_config('configs/tiny.py', -0.1), mode='train')
