"""Initialisation from pretrained checkpoints (paper Section 3.4).

The static-clip identity: a ViViT initialised from a ViT computes, on a clip
that repeats one image, the ViT's logits on that image when
  - Model 1 has a class token and one time step (n_t = 1), with either
    kernel inflation: each tubelet embeds the image's patch;
  - Model 1 pools by GAP (any n_t): each query's attention over n_t copies of
    every key gives each copy 1/n_t of the ViT's weight on that key;
  - Model 3 (GAP) has its temporal attention zeroed at the output: Eq. 5 is
    a residual, and the spatial attention is the ViT's on every frame;
  - Model 2 has a class token and no temporal layers: it averages n_t equal
    frame representations, each the ViT's.
With a class token and n_t > 1, Model 1 is not the ViT: the class token is
the only key that is not repeated, so its attention weight shrinks by about
n_t (DeiT-Tiny's logits, of size up to 6, move by 0.4 to 1.0 on our test
images for n_t = 2).

Parity with Hugging Face runs against live `transformers` models when the
'parity' extra is installed, and against tests/fixtures otherwise.
"""

import functools
import sys

from flax import traverse_util
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vivit_jax import config_builders
from tests.conftest import tiny_config
from tests.fixtures import make_parity_fixtures as fixtures
from vivit_jax.pretrained import readers
from vivit_jax import checkpoints
from vivit_jax import models
from vivit_jax import pretrained
from vivit_jax import spec

jax.config.update('jax_default_matmul_precision', 'highest')

try:
  import torch  # pylint: disable=g-import-not-at-top,unused-import
  import transformers  # pylint: disable=g-import-not-at-top,unused-import
  HAS_TRANSFORMERS = True
except ImportError:
  HAS_TRANSFORMERS = False

needs_deit = pytest.mark.skipif(not fixtures.DEIT.exists(),
                                reason=f'{fixtures.DEIT} is not here')
needs_transformers = pytest.mark.skipif(
    not HAS_TRANSFORMERS, reason="needs the 'parity' extra")
CHECKPOINT_CLASSES = 5


def _flat(params) -> dict:
  return {'/'.join(name): np.asarray(value)
          for name, value in traverse_util.flatten_dict(params).items()}


def _noise(shape, seed=0, scale=1.0):
  return (scale * np.random.default_rng(seed).normal(size=shape)).astype(
      np.float32)


def _randomize(params, seed=0):
  """Replaces every parameter by noise: zero-initialised ones hide bugs."""
  leaves, tree = jax.tree.flatten(params)
  return jax.tree.unflatten(tree, [_noise(x.shape, seed + i, 0.3)
                                   for i, x in enumerate(leaves)])


def _init(config):
  """The model and stand-in initial parameters: noise in the shapes of
  `model.init`'s, which takes seconds per model on a CPU."""
  model = models.create_model(config)
  clip = jnp.zeros((1,) + spec.check_config(config, mode='model').input_shape)
  shapes = jax.eval_shape(
      lambda: model.init(jax.random.key(0), clip, train=False))['params']
  return model, _randomize(shapes, seed=100)


def _load(config):
  """(model, initial params, loaded params, report)."""
  model, params = _init(config)
  loaded, report = pretrained.load_pretrained(config, {'params': params})
  return model, params, loaded['params'], report


def _logits(model, params, inputs):
  return np.asarray(model.apply({'params': params}, inputs, train=False))


@pytest.fixture(scope='module')
def random_vit(tmp_path_factory) -> str:
  """A random ViT with tiny_config's shapes (16 x 16 images, 4 x 4 patches),
  saved as a vision_transformer .npz."""
  config = tiny_config(model_name='vit', size=16,
                       num_classes=CHECKPOINT_CLASSES)
  config.dataset_configs.num_channels = 3
  _, params = _init(config)
  path = tmp_path_factory.mktemp('checkpoints') / 'random_vit.npz'
  np.savez(path, **_flat(params))
  return str(path)


def _config(checkpoint, model_name='vivit', attention_type='spacetime',
            classifier='token', *, size=16, num_frames=4, patch_size=(4, 4, 2),
            num_classes=CHECKPOINT_CLASSES, num_channels=3, **init_from):
  """A model with tiny_config's shapes, initialised from `checkpoint`."""
  config = tiny_config(attention_type, classifier, size=size,
                       num_frames=num_frames, patch_size=patch_size,
                       num_classes=num_classes, model_name=model_name)
  config.dataset_configs.num_channels = num_channels
  config.init_from = config_builders.init_from(checkpoint, **init_from)
  return config


def _deit_config(model_name='vivit', attention_type='spacetime',
                 classifier='token', *, checkpoint=str(fixtures.DEIT),
                 size=224, patch_size=(16, 16, 2), num_classes=1000,
                 **kwargs):
  """A model with DeiT-Tiny's shapes, initialised from `checkpoint`."""
  config = _config(checkpoint, model_name, attention_type, classifier,
                   size=size, patch_size=patch_size, num_classes=num_classes,
                   **kwargs)
  config.model.update(hidden_size=192, num_layers=12, num_heads=3,
                      mlp_dim=768, gelu_approximate=False)
  config.model.temporal_transformer.update(num_heads=3, mlp_dim=768)
  return config


def _weights_config(weights, random_vit, *args, **kwargs):
  """`_config` from `random_vit` or `_deit_config` from DeiT-Tiny."""
  if weights == 'deit':
    return _deit_config(*args, **kwargs)
  return _config(random_vit, *args, **kwargs)


def _image(weights):
  size = 224 if weights == 'deit' else 16
  return jnp.asarray(np.sin(0.9 * np.arange(size * size * 3)).reshape(
      1, size, size, 3), jnp.float32)


@functools.cache
def _vit_logits(weights, random_vit, classifier):
  config = _weights_config(weights, random_vit, 'vit', classifier=classifier)
  model, _, params, _ = _load(config)
  return _logits(model, params, _image(weights))


# (attention type, classifier, kernel_init_method, n_t); DeiT-Tiny checks
# the first three, random weights all.
STATIC_CLIP_CASES = (
    ('spacetime', 'token', 'central_frame', 1),
    ('spacetime', 'token', 'average_frame', 1),
    ('factorized_self_attention_block', 'gap', 'central_frame', 2),
    ('spacetime', 'gap', 'central_frame', 2),
    ('spacetime', 'gap', 'average_frame', 2),
    ('factorized_encoder', 'token', 'average_frame', 2),
)


@pytest.mark.parametrize(
    'weights,attention_type,classifier,method,time_steps',
    [('random',) + case for case in STATIC_CLIP_CASES] +
    [pytest.param('deit', *case, marks=needs_deit)
     for case in STATIC_CLIP_CASES[:3]])
def test_static_clip_gives_the_image_logits(random_vit, weights,
                                            attention_type, classifier,
                                            method, time_steps):
  config = _weights_config(weights, random_vit, 'vivit', attention_type,
                           classifier, num_frames=2 * time_steps,
                           kernel_init_method=method)
  config.model.temporal_transformer.num_layers = 0  # Model 2: frames' mean.
  model, _, params, _ = _load(config)
  image = _image(weights)
  clip = jnp.repeat(image[:, None], 2 * time_steps, axis=1)
  np.testing.assert_allclose(
      _logits(model, params, clip),
      _vit_logits(weights, random_vit, classifier),
      atol=1e-4, rtol=0)


def test_inflated_kernels_follow_eqs_8_and_9():
  kernel = jax.random.normal(jax.random.key(0), (2, 2, 1, 4))
  central = pretrained.inflate_kernel(kernel, 3, 'central_frame')
  average = pretrained.inflate_kernel(kernel, 3, 'average_frame')
  assert central.shape == average.shape == (3, 2, 2, 1, 4)
  assert not jnp.any(central[0]) and not jnp.any(central[2])  # Eq. 9.
  np.testing.assert_array_equal(central[1], kernel)
  for frame in range(3):  # Eq. 8.
    np.testing.assert_allclose(average[frame], kernel / 3, rtol=1e-6)


def _tokens(patches, kernel):
  return jnp.einsum('...hwc,hwcd->...d', patches, kernel)


def test_patch_resize_keeps_tokens_when_enlarging():
  kernel, patch = _noise((4, 4, 3, 5)), _noise((4, 4, 3), seed=1)
  enlarged = pretrained.resize_patch_kernel(kernel, (8, 8))
  bigger = jax.image.resize(patch, (8, 8, 3), 'bilinear')
  np.testing.assert_allclose(_tokens(bigger, enlarged),
                             _tokens(patch, kernel), rtol=1e-4, atol=1e-4)


def test_patch_resize_keeps_tokens_of_unblurred_patches_when_shrinking():
  """16 x 16 -> 4 x 4: exact on the patches B^T z, z any 4 x 4 patch, that
  the downsampling B does not blur; B^T comes from autodiff."""
  kernel = _noise((16, 16, 3, 5))
  shrink = lambda x: jax.image.resize(x, (4, 4, 3), 'bilinear')
  _, transpose = jax.vjp(shrink, jnp.zeros((16, 16, 3)))
  patches = jax.vmap(lambda z: transpose(z)[0])(_noise((6, 4, 4, 3), seed=1))
  shrunk = pretrained.resize_patch_kernel(kernel, (4, 4))
  np.testing.assert_allclose(_tokens(jax.vmap(shrink)(patches), shrunk),
                             _tokens(patches, kernel), rtol=1e-4, atol=1e-4)


def test_rgb_checkpoint_reads_grey_volumes_like_grey_rgb_images(random_vit):
  grey = jnp.asarray(np.cos(np.arange(16 * 16)).reshape(1, 16, 16, 1),
                     jnp.float32)
  model, _, params, report = _load(_config(random_vit, 'vit', num_channels=1))
  assert 'summed over its 3 input channels' in report.reshaped[
      'embedding/kernel']
  rgb_model, _, rgb_params, _ = _load(_config(random_vit, 'vit'))
  np.testing.assert_allclose(
      _logits(model, params, grey),
      _logits(rgb_model, rgb_params, jnp.repeat(grey, 3, axis=-1)),
      atol=1e-5)


@pytest.mark.parametrize('weights,size,patch', [
    ('random', 12, 2), pytest.param('deit', 28, 4, marks=needs_deit)])
def test_loads_into_small_one_channel_volumes(random_vit, weights, size,
                                              patch):
  """A 3-channel checkpoint with larger patches and a larger grid into a
  1-channel volume (28^3 with 4 x 4 x 4 tubelets for DeiT-Tiny)."""
  config = _weights_config(weights, random_vit, size=size, num_frames=size,
                           num_channels=1, patch_size=(patch, patch, patch),
                           num_classes=2)
  model, _, params, report = _load(config)
  source_patch, source_grid = (16, 14) if weights == 'deit' else (4, 4)
  grid = size // patch  # Tubelets are cubes: also the time steps.
  assert report.reshaped['embedding/kernel'].endswith(
      f'summed over its 3 input channels; patch resized from '
      f'{source_patch}x{source_patch} to {patch}x{patch} (pseudo-inverse); '
      'central frame (Eq. 9)')
  assert report.reshaped['Transformer/posembed_input/pos_embedding'].endswith(
      f'resized from {source_grid}x{source_grid} to {grid}x{grid} '
      f'(bilinear); repeated over {grid} time steps')
  classes = 1000 if weights == 'deit' else CHECKPOINT_CLASSES
  assert report.kept == {
      name: f'{classes} classes in the checkpoint, 2 in the model'
      for name in ('output_projection/bias', 'output_projection/kernel')}
  volume = jnp.ones((2, size, size, size, 1))
  assert np.all(np.isfinite(_logits(model, params, volume)))


def test_positional_embedding_choices(random_vit):
  with pytest.raises(readers.CheckpointError, match='resize_tile'):
    _load(_config(random_vit, size=8, positional_embed_size_change='tile'))
  _, initial, params, report = _load(
      _config(random_vit, size=8, restore_positional_embedding=False))
  name = 'Transformer/posembed_input/pos_embedding'
  np.testing.assert_array_equal(_flat(params)[name], _flat(initial)[name])
  assert report.kept[name] == (
      'config.init_from.restore_positional_embedding=False')
  assert report.unused[name] == report.kept[name]


def test_model_2_temporal_encoder_is_initialised_or_left(random_vit):
  source = _flat(readers.read_vit_npz(random_vit).params)
  config = _config(random_vit, attention_type='factorized_encoder')
  _, initial, params, report = _load(config)
  initial, params = _flat(initial), _flat(params)
  temporal = [name for name in params if 'TemporalTransformer' in name]
  for name in temporal:
    np.testing.assert_array_equal(params[name], initial[name])
    assert report.kept[name].startswith(
        'config.init_from.init_temporal_transformer=False')

  config.init_from.init_temporal_transformer = True
  _, _, params, report = _load(config)
  params = _flat(params)
  block = 'TemporalTransformer/encoderblock_0/MlpBlock_3/Dense_0/kernel'
  np.testing.assert_array_equal(
      params[block], source[block.replace('TemporalTransformer',
                                          'Transformer')])
  np.testing.assert_array_equal(params['cls_TemporalTransformer'],
                                source['cls'])
  assert report.kept == {
      'TemporalTransformer/posembed_input/pos_embedding':
          "the checkpoint's positions are spatial"}


def test_model_3_temporal_attention_starts_as_residual_and_trains(random_vit):
  config = _config(random_vit, attention_type='factorized_self_attention_block',
                   classifier='gap')
  model, initial, params, report = _load(config)
  time = 'Transformer/encoderblock_0/MultiHeadDotProductAttention_time'
  flat = _flat(params)
  assert not np.any(flat[f'{time}/out/kernel'])
  np.testing.assert_array_equal(flat[f'{time}/query/kernel'],
                                _flat(initial)[f'{time}/query/kernel'])
  assert report.zeroed[f'{time}/out/kernel'] == (
      'Eq. 5 is a residual at initialisation')
  clip = jnp.asarray(np.sin(np.arange(2 * 4 * 16 * 16 * 3)).reshape(
      2, 4, 16, 16, 3), jnp.float32)
  grads = jax.jit(jax.grad(lambda p: jnp.sum(
      model.apply({'params': p}, clip, train=False) ** 2)))(params)
  assert np.any(_flat(grads)[f'{time}/out/kernel'])

  config.init_from.init_temporal_transformer = True
  _, _, params, _ = _load(config)
  source = readers.read_vit_npz(random_vit).params
  np.testing.assert_array_equal(
      _flat(params)[f'{time}/query/kernel'],
      source['Transformer/encoderblock_0/MultiHeadDotProductAttention_1/'
             'query/kernel'])


@pytest.mark.parametrize('attention_type,classifier', [
    ('spacetime', 'token'), ('factorized_encoder', 'token'),
    ('factorized_self_attention_block', 'gap'),
    ('factorized_dot_product_attention', 'gap')])
def test_report_accounts_for_every_parameter(random_vit, attention_type,
                                             classifier):
  config = _config(random_vit, attention_type=attention_type,
                   classifier=classifier, num_classes=3)
  _, params, _, report = _load(config)
  decided = (report.loaded + list(report.reshaped) + list(report.zeroed) +
             list(report.kept))
  assert sorted(decided) == sorted(_flat(params))
  unused = {'head/bias': '5 classes in the checkpoint, 3 in the model',
            'head/kernel': '5 classes in the checkpoint, 3 in the model'}
  if classifier == 'gap':
    unused['cls'] = "the model pools by 'gap'"
  assert report.unused == unused
  assert len(str(report).splitlines()) < 16, str(report)


def test_report_is_short_and_names_what_it_did(random_vit):
  config = _config(random_vit, attention_type='factorized_self_attention_block',
                   classifier='gap', num_classes=3)
  report = str(_load(config)[3])
  block = 'Transformer/encoderblock_{0..1}'
  assert f'{block}/MultiHeadDotProductAttention_time/out: Eq. 5' in report
  assert (f'{block}/{{LayerNorm_mlp,LayerNorm_space,MlpBlock,'
          'MultiHeadDotProductAttention_space}') in report
  assert 'head: 5 classes in the checkpoint, 3 in the model' in report


def test_big_vision_layout_reads_as_vision_transformer(random_vit, tmp_path):
  """big_vision numbers block modules in call order, may stack layers for
  nn.scan, and adds positions before the class token (a zero position)."""
  ours = readers.read_vit_npz(random_vit).params
  renames = {'MultiHeadDotProductAttention_1': 'MultiHeadDotProductAttention_0',
             'LayerNorm_2': 'LayerNorm_1', 'MlpBlock_3': 'MlpBlock_0'}
  blocks = {}
  big_vision = {}
  for name, value in ours.items():
    parts = name.split('/')
    if parts[1:2] and parts[1].startswith('encoderblock_'):
      parts[2] = renames.get(parts[2], parts[2])
      blocks.setdefault('/'.join(parts[:1] + ['encoderblock'] + parts[2:]),
                        []).append(value)
    elif name == 'Transformer/posembed_input/pos_embedding':
      big_vision['pos_embedding'] = value[:, 1:]
    else:
      big_vision[name] = value
  big_vision.update({name: np.stack(values) for name, values in blocks.items()})
  np.savez(tmp_path / 'big_vision.npz',
           **{f'params/{name}': value for name, value in big_vision.items()},
           **{'opt/step': np.int32(0)})
  read = readers.read_vit_npz(str(tmp_path / 'big_vision.npz'))
  expected = dict(ours)
  posemb = expected['Transformer/posembed_input/pos_embedding'].copy()
  posemb[:, 0] = 0
  expected['Transformer/posembed_input/pos_embedding'] = posemb
  assert sorted(read.params) == sorted(expected)
  for name, value in expected.items():
    np.testing.assert_array_equal(read.params[name], value, err_msg=name)
  assert read.unused == {'opt/step': 'not a parameter (optimiser state or '
                                     'metadata)'}


def test_fine_tunes_from_a_vivit_run_dropping_the_output_layer(random_vit,
                                                               tmp_path):
  _, _, trained, _ = _load(_config(random_vit))
  trained = _randomize(trained, seed=1)
  manager = checkpoints.create_manager(str(tmp_path))
  checkpoints.save(manager, 10, {'params': jax.tree.map(np.asarray, trained),
                                   'step': np.int32(10)},
                     {'acc': 0.5, 'auc': 0.5, 'loss': 1.0})
  config = _config(str(tmp_path), num_classes=2)
  _, initial, params, report = _load(config)
  trained, initial, params = _flat(trained), _flat(initial), _flat(params)
  for name, value in params.items():
    expected = (initial if name.startswith('output_projection/')
                else trained)[name]
    np.testing.assert_array_equal(value, expected, err_msg=name)
  assert report.checkpoint == f'{tmp_path} (orbax, a video model)'
  assert report.unused['output_projection/kernel'] == (
      '5 classes in the checkpoint, 2 in the model')


def test_errors_name_the_file(random_vit, tmp_path):
  error = readers.CheckpointError
  with pytest.raises(error, match='nowhere.npz does not exist'):
    _load(_config(str(tmp_path / 'nowhere.npz')))
  (tmp_path / 'notes.npz').write_text('not an archive')
  with pytest.raises(error, match='notes.npz is not a .npz file'):
    _load(_config(str(tmp_path / 'notes.npz')))
  np.savez(tmp_path / 'other.npz', weights=np.zeros(3))
  with pytest.raises(error, match=r"other.npz is not a ViT checkpoint.*\['weights'\]"):
    _load(_config(str(tmp_path / 'other.npz')))
  (tmp_path / 'empty').mkdir()
  with pytest.raises(error, match='empty is a folder with neither config.json'):
    _load(_config(str(tmp_path / 'empty')))
  (tmp_path / 'bert').mkdir()
  (tmp_path / 'bert' / 'config.json').write_text('{"model_type": "bert"}')
  with pytest.raises(error, match="model_type 'bert' in config.json"):
    _load(_config(str(tmp_path / 'bert')))
  with pytest.raises(error, match="looks like a 'vit_npz' checkpoint, not "
                     "'huggingface'"):
    _load(_config(random_vit, checkpoint_format='huggingface'))


def test_pytorch_pickle_needs_pytorch(tmp_path, monkeypatch):
  (tmp_path / 'config.json').write_text(
      '{"model_type": "vit", "num_attention_heads": 4}')
  (tmp_path / 'pytorch_model.bin').write_bytes(b'')
  monkeypatch.setitem(sys.modules, 'torch', None)  # `import torch` fails.
  with pytest.raises(readers.CheckpointError,
                     match='pytorch_model.bin is a PyTorch pickle'):
    readers.read_checkpoint(str(tmp_path))


def test_unmappable_shapes_load_nothing_and_name_the_keys(random_vit):
  config = _config(random_vit)
  config.model.update(hidden_size=32, mlp_dim=64)
  model, params = _init(config)
  before = _flat(params)
  with pytest.raises(readers.CheckpointError) as error:
    pretrained.load_pretrained(config, {'params': params})
  message = str(error.value)
  assert message.startswith(f'{random_vit} (vit_npz) cannot initialise the '
                            'model')
  assert "The checkpoint's width is 16 (embedding/bias), " in message
  assert ('Transformer/encoderblock_0/LayerNorm_0/bias: (32,) in the model, '
          '(16,) in the checkpoint') in message
  assert all(np.array_equal(value, before[name])
             for name, value in _flat(params).items())

  config = _config(random_vit)
  config.model.num_layers = 3
  with pytest.raises(readers.CheckpointError,
                     match='Transformer: 3 layers in the model, 2 in the '
                     'checkpoint'):
    _load(config)


def test_a_hybrid_loads_the_encoder_and_keeps_its_stem(random_vit):
  """A convolutional stem before the tubelets (a hybrid ViViT) takes the
  checkpoint's encoder; the stem and the tubelet kernel, which read the
  stem's features and not pixels, keep their initialisation."""
  config = _config(random_vit, patch_size=(2, 2, 1), num_classes=3,
                   num_channels=1, kernel_init_method='random')
  config.model.stem_features = (4,)  # 4 x 16 x 16 -> 2 x 8 x 8 x 4 features.
  config.model.stem_norm = 'batch'
  _, params, loaded, report = _load(config)
  initial, loaded = _flat(params), _flat(loaded)
  source = readers.read_vit_npz(random_vit).params
  kept = [name for name in initial if name.startswith(
      ('stem/', 'embedding/kernel', 'output_projection/'))]
  assert sorted(report.kept) == sorted(kept)
  assert all(np.array_equal(loaded[name], initial[name]) for name in kept)
  positions = 'Transformer/posembed_input/pos_embedding'
  assert sorted(report.loaded) == sorted(set(initial) - {*kept, positions})
  assert all(np.array_equal(loaded[name], source[name])
             for name in report.loaded)
  # The checkpoint's 4 x 4 grid of positions, repeated over 2 time steps.
  np.testing.assert_array_equal(
      loaded[positions][0, 1:].reshape(2, 16, -1),
      np.stack([source[positions][0, 1:]] * 2))

  assert report.kept['stem/Conv_0/kernel'] == (
      'the checkpoint has no convolutional stem')

  config.init_from.kernel_init_method = 'central_frame'
  with pytest.raises(readers.CheckpointError,
                     match="convolutional stem replaces the pixels "
                     ".*kernel_init_method='random'"):
    _load(config)


def test_a_hybrid_run_initialises_a_hybrid_with_its_batch_statistics(
    random_vit, tmp_path):
  """Fine-tuning from a hybrid ViViT run takes all of it, its stem's
  BatchNorm running statistics included."""
  config = _config(random_vit, patch_size=(2, 2, 1), num_classes=3,
                   num_channels=1, kernel_init_method='random')
  config.model.stem_features = (4,)
  config.model.stem_norm = 'batch'
  model = models.create_model(config)
  clip = jnp.zeros((1,) + spec.check_config(config, mode='model').input_shape)
  shapes = jax.eval_shape(
      lambda: model.init(jax.random.key(0), clip, train=False))
  assert set(shapes) == {'params', 'batch_stats'}
  trained = jax.tree.map(np.asarray, _randomize(shapes, seed=1))
  manager = checkpoints.create_manager(str(tmp_path))
  checkpoints.save(manager, 10, {**trained, 'step': np.int32(10)},
                   {'acc': 0.5, 'auc': 0.5, 'loss': 1.0})
  config.init_from = config_builders.init_from(str(tmp_path))

  loaded, report = pretrained.load_pretrained(
      config, _randomize(shapes, seed=2))
  assert set(loaded) == {'params', 'batch_stats'}
  jax.tree.map(np.testing.assert_array_equal, loaded, trained)
  assert {'batch_stats/stem/BatchNorm_0/mean',
          'batch_stats/stem/BatchNorm_0/var'} <= set(report.loaded)
  assert not report.kept and not report.unused


def test_unknown_choices_name_the_config_field(random_vit):
  with pytest.raises(ValueError, match='config.init_from.kernel_init_method'):
    _load(_config(random_vit, kernel_init_method='inflate'))
  with pytest.raises(ValueError, match='config.init_from.checkpoint_format'):
    _load(_config(random_vit, checkpoint_format='pickle'))


def _hugging_face_model(kind, tmp_path):
  """(model folder, its logits): a live random model when `transformers` is
  installed, else the committed fixture."""
  if HAS_TRANSFORMERS:
    return tmp_path, fixtures.write_tiny_model(kind, tmp_path)
  return (fixtures.FIXTURES / f'hf_{kind}_tiny',
          np.load(fixtures.FIXTURES / 'parity_logits.npz')[kind])


@pytest.mark.parametrize('kind', ['vit', 'vivit'])
def test_matches_hugging_face(kind, tmp_path):
  folder, expected = _hugging_face_model(kind, tmp_path)
  config = _config(str(folder), kind, num_classes=3)
  # ViTConfig's GELU is exact, VivitConfig's ('gelu_fast') the tanh one.
  config.model.gelu_approximate = kind == 'vivit'
  model, _, params, report = _load(config)
  assert not report.kept and not report.unused and not report.notes, report
  np.testing.assert_allclose(
      _logits(model, params, fixtures.parity_input(kind)), expected,
      atol=1e-4, rtol=0)


@needs_deit
def test_deit_matches_hugging_face_vit(tmp_path):
  if HAS_TRANSFORMERS:
    fixtures.write_deit_folder(tmp_path)
    expected = fixtures.deit_logits(tmp_path)
  else:
    expected = np.load(fixtures.FIXTURES / 'parity_logits.npz')['deit']
  model, _, params, _ = _load(_deit_config('vit'))
  np.testing.assert_allclose(
      _logits(model, params, fixtures.parity_input('deit')), expected,
      atol=1e-4, rtol=0)
  if HAS_TRANSFORMERS:  # The Hugging Face reader finds the same parameters.
    from_hf = _load(_deit_config('vit', checkpoint=str(tmp_path)))
    np.testing.assert_equal(_flat(from_hf[2]), _flat(params))


@needs_transformers
def test_committed_fixtures_are_hugging_face_outputs():
  expected = np.load(fixtures.FIXTURES / 'parity_logits.npz')
  for kind, model_class in (
      ('vit', transformers.ViTForImageClassification),
      ('vivit', transformers.VivitForVideoClassification)):
    model = model_class.from_pretrained(fixtures.FIXTURES / f'hf_{kind}_tiny')
    np.testing.assert_allclose(
        fixtures.hf_logits(model, fixtures.parity_input(kind)), expected[kind],
        atol=1e-5, rtol=0)


@needs_transformers
def test_reads_deit_folders_and_pytorch_pickles(tmp_path):
  import safetensors.torch  # pylint: disable=g-import-not-at-top
  deit = transformers.DeiTForImageClassificationWithTeacher(
      transformers.DeiTConfig(**fixtures.TINY_VIT))
  deit.save_pretrained(tmp_path / 'deit')
  config = _config(str(tmp_path / 'deit'), 'vit', num_classes=3)
  config.model.gelu_approximate = False
  _, _, _, report = _load(config)
  assert report.unused == {
      'deit.embeddings.distillation_token': (
          "DeiT's distillation token (and its position): the models have "
          'one class token'),
      'distillation_classifier.weight': "DeiT's distillation head",
      'distillation_classifier.bias': "DeiT's distillation head"}
  assert not report.kept and not report.reshaped

  safetensors_read = readers.read_checkpoint(str(tmp_path / 'deit'))
  (tmp_path / 'pickled').mkdir()
  (tmp_path / 'pickled' / 'config.json').write_bytes(
      (tmp_path / 'deit' / 'config.json').read_bytes())
  torch.save(safetensors.torch.load_file(tmp_path / 'deit' /
                                         'model.safetensors'),
             tmp_path / 'pickled' / 'pytorch_model.bin')
  pickle_read = readers.read_checkpoint(str(tmp_path / 'pickled'))
  np.testing.assert_equal(pickle_read.params, safetensors_read.params)


@needs_transformers
def test_reads_vit_model_pooler_as_pre_logits(tmp_path):
  vit = transformers.ViTModel(transformers.ViTConfig(**fixtures.TINY_VIT))
  vit.save_pretrained(tmp_path)
  config = _config(str(tmp_path), 'vit', num_classes=3)
  config.model.gelu_approximate = False
  config.model.representation_size = 16
  _, _, params, report = _load(config)
  np.testing.assert_allclose(
      _flat(params)['pre_logits/kernel'],
      vit.pooler.dense.weight.detach().numpy().T)
  assert report.kept == {'head/bias': 'the checkpoint has no output layer',
                         'head/kernel': 'the checkpoint has no output layer'}
  assert not report.unused
