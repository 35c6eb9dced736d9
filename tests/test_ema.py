"""The moving average of the parameters (`config.ema_decay`): its update in
the train step against its formula, and a run that validates, checkpoints,
evaluates and restores the average instead of the parameters."""

import jax
import numpy as np
import pytest

import vivit_jax
from tests.conftest import REPO, SHARED
from vivit_jax import bench
from vivit_jax import checkpoints
from vivit_jax import evaluate
from vivit_jax import models
from vivit_jax import spec as spec_lib
from vivit_jax import steps
from vivit_jax import train
from vivit_jax import workdir as workdir_lib
from vivit_jax.data import create_source

DECAY = 0.9


def _config(ema_decay: float = DECAY):
  config = vivit_jax.load_config(str(REPO / 'configs/tiny.py'))
  config.dataset_configs.data_dir = str(SHARED / 'data')
  config.ema_decay = ema_decay
  return config


def test_train_step_updates_the_average_by_its_formula():
  spec = spec_lib.check_config(_config(), mode='model')
  model = models.create_model(spec, axis_name=steps.AXIS)
  state = steps.create_train_state(spec, model, jax.random.key(0))
  expected = jax.tree.map(np.asarray, state.params)
  train_step = steps.make_train_step(model, spec)
  state = steps.replicate(state)
  rng = steps.replicate(jax.random.key(1))
  for step in range(1, 5):
    batch = bench.synthetic_batch(spec, spec.config.batch_size, seed=step)
    state, _ = train_step(state, batch, rng)
    params = jax.tree.map(lambda x: np.asarray(x[0]), state.params)
    decay = min(DECAY, (1 + step) / (10 + step))
    expected = jax.tree.map(lambda e, p: decay * e + (1 - decay) * p,
                            expected, params)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a[0], b, atol=1e-6),
                 state.ema_params, expected)
  assert any(not np.allclose(a[0], b) for a, b in zip(
      jax.tree.leaves(state.ema_params), jax.tree.leaves(state.params)))


def test_without_decay_the_state_keeps_no_average():
  spec = spec_lib.check_config(_config(0.0), mode='model')
  model = models.create_model(spec, axis_name=steps.AXIS)
  state = steps.create_train_state(spec, model, jax.random.key(0))
  assert state.ema_params is None
  assert state.eval_variables() == state.variables()


def test_run_evaluates_and_restores_the_average(tmp_path):
  workdir = tmp_path
  results = train.train_and_evaluate(_config(), str(workdir))
  with checkpoints.open_manager(str(workdir)) as manager:
    tree = manager.restore(results['best_step'])
  restored = checkpoints.restore_params(str(workdir))
  jax.tree.map(np.testing.assert_array_equal, restored, tree['ema_params'])
  assert any(not np.allclose(a, b) for a, b in zip(
      jax.tree.leaves(tree['ema_params']), jax.tree.leaves(tree['params'])))

  evaluated = evaluate.evaluate_workdir(str(workdir))
  spec, model, variables, _ = evaluate.restore_for_eval(str(workdir))
  source = create_source(spec.config)
  of_params = evaluate.evaluate_members(model, [{'params': tree['params']}],
                                        source)
  of_average = evaluate.evaluate_members(model, [variables], source)
  for split in ('val', 'test'):
    np.testing.assert_allclose(evaluated[split]['loss'],
                               results[split]['loss'], rtol=1e-6)
    np.testing.assert_allclose(of_average[split]['loss'],
                               results[split]['loss'], rtol=1e-6)
    assert not np.isclose(of_params[split]['loss'], results[split]['loss'],
                          rtol=1e-6)


def test_a_config_saved_before_ema_still_matches():
  checked = spec_lib.check_config(_config(0.0), mode='model').config
  older = checked.to_dict()
  del older['ema_decay']
  older = type(checked)(older)
  assert workdir_lib.structural_differences(older, checked) == []
  assert workdir_lib.structural_differences(
      older, spec_lib.check_config(_config(), mode='model').config) == [
          'ema_decay 0.0 -> 0.9']


def test_decay_outside_the_unit_interval_is_one_line():
  with pytest.raises(spec_lib.ConfigError, match=r'config\.ema_decay: 1\.0 '
                     r'is not in \[0, 1\)'):
    spec_lib.check_config(_config(1.0), mode='train')
