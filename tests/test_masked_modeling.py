"""Masked volume modelling (`config.masked_pretraining`): the masks, the
hidden voxels and their targets written out with loops, the loss on masked
tokens only, the model's mask token, no leak of hidden voxels through the
stem, pre-training on 4 devices as on one, and before training end to end,
stopped by a signal and run again."""

import dataclasses
import itertools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import vivit_jax
from tests.conftest import REPO, SHARED, run_on_host_devices
from tests.conftest import sigterm_at_step, tiny_config
from vivit_jax import checkpoints
from vivit_jax import masked_modeling
from vivit_jax import models
from vivit_jax import spec as spec_lib
from vivit_jax import steps
from vivit_jax import train

GRID, REGION = (2, 3, 2), (2, 4, 3)


@pytest.mark.parametrize('tube', [False, True])
def test_masks_hide_an_exact_share_of_units(tube):
  mask = np.asarray(masked_modeling.draw_mask(jax.random.key(1), 16, GRID,
                                              0.5, tube))
  assert mask.shape == (16,) + GRID and mask.dtype == bool
  if tube:
    assert (mask == mask[:, :1]).all()  # The same (h, w) in every t.
    assert (mask[:, 0].reshape(16, -1).sum(-1) == 3).all()
  else:
    assert (mask.reshape(16, -1).sum(-1) == 6).all()
  assert len({row.tobytes() for row in mask}) > 1  # Drawn per example.


def _token_slices(index):
  return tuple(slice(i * r, (i + 1) * r) for i, r in zip(index, REGION))


def test_hide_zeroes_the_voxels_of_masked_tokens_only():
  volumes = np.random.default_rng(0).random((3, 5, 13, 7, 2), np.float32)
  mask = np.random.default_rng(1).random((3,) + GRID) < 0.5
  hidden = np.asarray(masked_modeling.hide(jnp.asarray(volumes),
                                           jnp.asarray(mask), REGION))
  expected = volumes.copy()  # Depth 4 of 5, height 12 of 13: one left over.
  for b, index in itertools.product(range(3), np.ndindex(*GRID)):
    if mask[(b,) + index]:
      expected[(b,) + _token_slices(index)] = 0
  np.testing.assert_array_equal(hidden, expected)


def test_region_voxels_follow_the_token_order():
  volumes = np.random.default_rng(0).random((2, 5, 13, 7, 2), np.float32)
  voxels = np.asarray(masked_modeling.region_voxels(jnp.asarray(volumes),
                                                    GRID, REGION))
  assert voxels.shape == (2, 12, 2 * 4 * 3 * 2)
  for b, (n, index) in itertools.product(range(2),
                                         enumerate(np.ndindex(*GRID))):
    np.testing.assert_array_equal(
        voxels[b, n].reshape(REGION + (2,)),
        volumes[(b,) + _token_slices(index)])


def test_the_loss_reads_masked_tokens_only():
  rng = np.random.default_rng(2)
  volumes = rng.random((2,) + tuple(g * r for g, r in zip(GRID, REGION))
                       + (1,), np.float32)
  mask = rng.random((2,) + GRID) < 0.5
  predicted = rng.random((2, 12, 24), np.float32)
  loss = masked_modeling.reconstruction_loss(predicted, volumes, mask, REGION)
  target = np.asarray(masked_modeling.region_voxels(volumes, GRID, REGION))
  errors = ((predicted - target) ** 2).mean(-1)[mask.reshape(2, 12)]
  np.testing.assert_allclose(loss, errors.mean(), rtol=1e-6)
  changed = np.where(mask.reshape(2, 12, 1), predicted, predicted + 5)
  np.testing.assert_allclose(masked_modeling.reconstruction_loss(
      changed, volumes, mask, REGION), loss, rtol=1e-6)


def _model_and_variables(config):
  """(spec, model, variables with the mask token) of a ViViT config."""
  spec = spec_lib.check_config(config, mode='model')
  model = models.create_model(spec)
  clip = jnp.zeros((2,) + spec.input_shape)
  variables = model.init(jax.random.key(0), clip, train=False,
                         token_mask=jnp.zeros((2,) + spec.token_grid, bool))
  return spec, model, variables


def test_without_masked_tokens_the_model_is_unchanged():
  spec, model, variables = _model_and_variables(tiny_config())
  clip = jax.random.normal(jax.random.key(1), (2,) + spec.input_shape)
  plain = {'params': {name: value for name, value in
                      variables['params'].items() if name != 'mask_token'}}
  np.testing.assert_array_equal(
      model.apply(variables, clip, train=False,
                  token_mask=jnp.zeros((2,) + spec.token_grid, bool)),
      model.apply(plain, clip, train=False))


def test_hidden_voxels_do_not_reach_the_encoder_through_the_stem():
  config = tiny_config(classifier='gap', size=16, num_frames=8,
                       patch_size=(2, 2, 2))
  config.model.stem_features = (4, 4)  # Tokens of 8 x 8 x 8 voxels.
  spec, model, variables = _model_and_variables(config)
  region = masked_modeling.token_region(spec)
  assert region == (8, 8, 8) and spec.token_grid == (1, 2, 2)
  mask = jnp.asarray([[[[True, False], [False, True]]]] * 2)

  def encoded(clip):
    _, state = model.apply(variables, masked_modeling.hide(clip, mask, region),
                           train=False, token_mask=mask,
                           mutable=['intermediates'])
    return state['intermediates']['encoded'][0]

  clip = jax.random.normal(jax.random.key(1), (2,) + spec.input_shape)
  noise = jax.random.normal(jax.random.key(2), clip.shape)
  visible = masked_modeling.hide(jnp.ones_like(clip), mask, region)
  np.testing.assert_array_equal(encoded(clip),
                                encoded(clip + noise * (1 - visible)))
  assert not np.allclose(encoded(clip), encoded(clip + noise * visible),
                         atol=1e-3)


def _recipe_slice(num_epochs):
  """The recipe (one model, not its ensemble) for 2 epochs of 2 steps of
  batch 8, with `num_epochs` of masked pre-training."""
  config = vivit_jax.load_config(str(REPO / 'configs/medmnist3d.py'))
  config.dataset_configs.data_dir = str(SHARED / 'data')
  config.ensemble_size = 1
  config.batch_size = 8
  config.num_training_epochs = 2
  config.num_training_steps = 4
  config.masked_pretraining.num_epochs = num_epochs
  return config


def pretrain_three_steps():
  """(initial state, pre-trained state, seconds): the recipe pre-trained for
  3 steps of batch 8, without dropout or stochastic depth."""
  config = _recipe_slice(1)
  config.model.dropout_rate = 0.0
  config.model.stochastic_droplayer_rate = 0.0
  spec = dataclasses.replace(spec_lib.check_config(config), steps_per_epoch=3)
  model = models.create_model(spec, axis_name=steps.AXIS)
  state = steps.create_train_state(spec, model, jax.random.key(0))
  source = vivit_jax.data.create_source(spec.config)
  return (state,) + masked_modeling.pretrain(spec, model, state, source,
                                             jax.random.key(1))


def test_pretraining_trains_all_but_the_classifier():
  state, pretrained, seconds = pretrain_three_steps()
  assert seconds > 0 and pretrained.params.keys() == state.params.keys()
  for name, value in state.params.items():
    moved = jax.tree.map(lambda a, b: not np.array_equal(a, b), value,
                         pretrained.params[name])
    assert all(jax.tree.leaves(moved)) == (name != 'output_projection'), name
  assert not all(jax.tree.leaves(jax.tree.map(
      np.array_equal, state.batch_stats, pretrained.batch_stats)))


def test_four_devices_pretrain_as_one(tmp_path):
  """The same masks and batch statistics on 4 devices as on one."""
  run_on_host_devices(
      'import jax, numpy as np\n'
      'from tests import test_masked_modeling\n'
      '_, state, _ = test_masked_modeling.pretrain_three_steps()\n'
      f'np.savez("{tmp_path}/four.npz", *jax.tree.leaves((state.params, '
      'state.batch_stats)))\n', num_devices=4)
  _, state, _ = pretrain_three_steps()
  four = np.load(tmp_path / 'four.npz')
  one = jax.tree_util.tree_flatten_with_path((state.params,
                                              state.batch_stats))[0]
  assert len(four.files) == len(one)
  for index, (path, leaf) in enumerate(one):
    name = jax.tree_util.keystr(path)
    # Biases with no gradient in exact arithmetic (attention keys: softmax
    # ignores a shift; convolutions before BatchNorm), which AdamW moves by
    # rounding noise, and the running means that add the latter.
    if name.endswith("['key']['bias']") or "['Conv_" in name and (
        name.endswith("['bias']")) or name.endswith("['mean']"):
      continue
    np.testing.assert_allclose(four[f'arr_{index}'], leaf, rtol=1e-5,
                               atol=1e-6, err_msg=name)


def test_a_stopped_pretraining_starts_again_and_reports_its_seconds(
    tmp_path, monkeypatch):
  sigterm_at_step(2, monkeypatch)
  with pytest.raises(train.TrainingStopped,
                     match='SIGTERM during masked pre-training'):
    train.train_and_evaluate(_recipe_slice(1), str(tmp_path))
  assert not checkpoints.saved_steps(str(tmp_path))
  monkeypatch.undo()

  results = train.train_and_evaluate(_recipe_slice(1), str(tmp_path))
  assert results['pretrain_seconds'] > 0
  assert json.loads((tmp_path / 'results.json').read_text()) == results


def test_pretraining_refuses_model_2():
  config = _recipe_slice(1)
  config.model.attention_config.type = 'factorized_encoder'
  with pytest.raises(spec_lib.ConfigError,
                     match=r'masked_pretraining\.num_epochs: .*Model 1, 3 or 4'):
    spec_lib.check_config(config)
