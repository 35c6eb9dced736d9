"""Scenic checkpoints initialise the models, which then compute Scenic's
logits (tests/fixtures/make_scenic_fixtures.py made the fixtures with
Scenic's own code)."""

import re
import shutil

from flax import serialization
from flax import traverse_util
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vivit_jax import config_builders
from tests.conftest import tiny_config
from tests.fixtures import make_scenic_fixtures as fixtures
from vivit_jax import models
from vivit_jax import pretrained
from vivit_jax import spec
from vivit_jax.pretrained import readers

jax.config.update('jax_default_matmul_precision', 'highest')

OUTPUTS = np.load(fixtures.FIXTURES / 'outputs.npz')
CASES = {case[0]: case[1:4] for case in fixtures.CASES}
POSEMB = 'Transformer/posembed_input/pos_embedding'


def _flat(params) -> dict:
  return {'/'.join(name): np.asarray(value)
          for name, value in traverse_util.flatten_dict(params).items()}


def _config(case, checkpoint, num_frames=fixtures.CLIP_SHAPE[1], **init_from):
  """Our config of the fixture `case`, initialised from `checkpoint`."""
  attention_type, classifier, order = CASES[case]
  config = tiny_config(attention_type, classifier,
                       size=fixtures.CLIP_SHAPE[2], num_frames=num_frames,
                       patch_size=fixtures.PATCH_SIZE,
                       num_classes=fixtures.NUM_CLASSES)
  config.dataset_configs.num_channels = fixtures.CLIP_SHAPE[-1]
  if order:
    config.model.attention_config.attention_order = order
  config.init_from = config_builders.init_from(str(checkpoint), **init_from)
  return config


def _load(config):
  """(model, loaded parameters, report); the initial parameters are zeros
  in the shapes of `model.init`'s, which takes seconds on a CPU."""
  model = models.create_model(config)
  clip = jnp.zeros((1,) + spec.check_config(config, mode='model').input_shape)
  shapes = jax.eval_shape(
      lambda: model.init(jax.random.key(0), clip, train=False))['params']
  params = jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), shapes)
  loaded, report = pretrained.load_pretrained(config, {'params': params})
  return model, loaded['params'], report


@pytest.mark.parametrize('case', list(CASES))
def test_scenic_checkpoints_give_scenic_logits(case):
  """Models 1-4 (Model 3 in both orders), from Scenic's params and
  optimizer/target layouts and both block namings of fixtures.CASES."""
  model, params, report = _load(_config(case, fixtures.FIXTURES / case))
  assert report.checkpoint.endswith(f'{case}/checkpoint_{fixtures.STEP} '
                                    '(scenic, a video model)')
  assert not report.reshaped and not report.kept and not report.zeroed
  assert set(report.unused.values()) == {'training state, not a parameter'}
  logits = model.apply({'params': params}, OUTPUTS['clip'], train=False)
  np.testing.assert_allclose(logits, OUTPUTS[case], atol=1e-5, rtol=0)


def test_output_layer_is_dropped_for_other_classes_or_on_request():
  checkpoint = fixtures.FIXTURES / 'model4'
  config = _config('model4', checkpoint)
  config.dataset_configs.num_classes = 2
  _, _, report = _load(config)
  assert report.kept == {
      name: '3 classes in the checkpoint, 2 in the model'
      for name in ('output_projection/bias', 'output_projection/kernel')}
  _, _, report = _load(_config('model4', checkpoint,
                               restore_output_projection=False))
  assert set(report.kept) == {'output_projection/bias',
                              'output_projection/kernel'}
  assert 'Transformer/encoderblock_1/MlpBlock_3/Dense_1/kernel' in (
      report.loaded)


def test_finds_the_latest_checkpoint_and_honours_the_format(tmp_path):
  source = fixtures.FIXTURES / 'model1' / f'checkpoint_{fixtures.STEP}'
  shutil.copy(source, tmp_path / 'checkpoint_10')
  (tmp_path / 'checkpoint_9').write_bytes(b'older, and not read')
  assert readers.read_checkpoint(str(tmp_path)).path == str(
      tmp_path / 'checkpoint_10')
  assert readers.detect_format(str(source)) == 'scenic'
  shutil.copy(source, tmp_path / 'vivit.msgpack')
  read = readers.read_checkpoint(str(tmp_path / 'vivit.msgpack'), 'scenic')
  np.testing.assert_equal(read.params, readers.read_checkpoint(
      str(source)).params)


def test_eight_frame_checkpoint_runs_on_sixteen_frames():
  """4 time steps -> 8: each spatial position's embedding is interpolated
  linearly, end points kept (np.interp on Scenic's zoom grid)."""
  checkpoint = fixtures.FIXTURES / 'model1'
  model, params, report = _load(_config('model1', checkpoint, num_frames=16))
  source = readers.read_checkpoint(str(checkpoint)).params[POSEMB]
  assert report.reshaped[POSEMB].endswith(
      '(1, 17, 16) -> (1, 33, 16): interpolated linearly from 4 to 8 time '
      'steps')
  t, hw, width = 4, 4, source.shape[-1]
  grid = source[0, 1:].reshape(t, hw * width)
  steps = np.linspace(0, t - 1, 2 * t)
  expected = np.stack([np.interp(steps, np.arange(t), grid[:, i])
                       for i in range(hw * width)], axis=1)
  loaded = _flat(params)[POSEMB]
  np.testing.assert_array_equal(loaded[:, 0], source[:, 0])
  np.testing.assert_allclose(loaded[0, 1:], expected.reshape(-1, width),
                             atol=1e-6, rtol=0)
  clip = np.concatenate([OUTPUTS['clip']] * 2, axis=1)
  assert np.all(np.isfinite(model.apply({'params': params}, clip,
                                        train=False)))


def test_model2_temporal_embedding_is_interpolated_as_scenic_does():
  _, params, _ = _load(_config('model2', fixtures.FIXTURES / 'model2',
                               num_frames=16))
  loaded = _flat(params)['TemporalTransformer/posembed_input/pos_embedding']
  np.testing.assert_allclose(loaded[:, 1:],
                             OUTPUTS['model2_temporal_posemb_x2'],
                             atol=1e-6, rtol=0)


def test_scenic_vit_reads_as_an_image_model(tmp_path):
  """Scenic's ViT: current Flax block names, head output_projection."""
  config = tiny_config(model_name='vit', size=8, num_classes=3)
  model = models.create_model(config)
  shapes = jax.eval_shape(lambda: model.init(
      jax.random.key(0),
      jnp.zeros((1,) + spec.check_config(config, mode='model').input_shape),
      train=False))['params']
  rng = np.random.default_rng(0)
  ours = {name: rng.normal(size=x.shape).astype(np.float32)
          for name, x in _flat(shapes).items()}
  renames = {'MultiHeadDotProductAttention_1': 'MultiHeadDotProductAttention_0',
             'LayerNorm_2': 'LayerNorm_1', 'MlpBlock_3': 'MlpBlock_0',
             'head': 'output_projection'}
  theirs = {tuple(renames.get(part, part) for part in name.split('/')): value
            for name, value in ours.items()}
  (tmp_path / 'checkpoint_1').write_bytes(serialization.msgpack_serialize(
      {'params': traverse_util.unflatten_dict(theirs), 'global_step': 1}))
  read = readers.read_checkpoint(str(tmp_path))
  assert not read.is_video
  np.testing.assert_equal(read.params, ours)


def _msgpack(path, state):
  path.write_bytes(serialization.msgpack_serialize(state))
  return path


@pytest.mark.parametrize('contents,message', [
    (lambda path: path.write_text('not msgpack'),
     'is not a Flax msgpack checkpoint'),
    (lambda path: _msgpack(path, [1, 2]), 'holds a list, not a Flax train'),
    (lambda path: _msgpack(path, {'step': 1}),
     r"holds no parameters: a Scenic train state has params or "
     r"optimizer/target, this one \['step'\]"),
    (lambda path: _msgpack(path, {'params': {'dense': {'kernel': np.ones(2)}}}),
     'is not a ViT or ViViT checkpoint: its params have no embedding/kernel'),
])
def test_reader_errors_are_one_line_naming_the_file(tmp_path, contents,
                                                    message):
  contents(tmp_path / 'checkpoint_3')
  with pytest.raises(readers.CheckpointError) as error:
    readers.read_checkpoint(str(tmp_path))
  assert str(error.value).startswith(f'{tmp_path / "checkpoint_3"} ')
  assert re.search(message, str(error.value))
  assert '\n' not in str(error.value)
