"""VidTr and C-VidTr (Zhang et al., 2021): Eqs. 1-8 written out, topK_std
pooling (Eqs. 9-11), the pooling schedule, ViT initialisation, and
training under jit and pmap for VTN and VidTr alike."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import vivit_jax
from vivit_jax import config_builders
from tests.conftest import REPO
from tests.conftest import run_on_host_devices
from tests.conftest import tiny_config
from tests.test_models import _layer_norm
from tests.test_models import _mlp
from tests.test_models import _msa
from tests.test_pretrained import _flat
from tests.test_pretrained import _init
from tests.test_pretrained import _load
from tests.test_pretrained import _randomize
from tests.test_pretrained import random_vit  # pylint: disable=unused-import
from vivit_jax.models import vidtr
from vivit_jax import spec

jax.config.update('jax_default_matmul_precision', 'highest')


def vidtr_config(*, size=8, num_frames=8, num_layers=2, pooling='topk_std',
                 pool_layers=(), pool_frames=(), num_classes=3):
  """A tiny VidTr: 4 x 4 patches, width 16, 4 heads."""
  config = tiny_config(size=size, num_frames=num_frames,
                       num_classes=num_classes, model_name='vidtr')
  config.model = config_builders.vidtr_model(
      16, num_layers, 4, 32, (4, 4), pooling=pooling,
      pool_layers=pool_layers, pool_frames=pool_frames)
  return config


def _config(file_and_arg: str):
  return vivit_jax.load_config(str(REPO / 'configs' / file_and_arg))


def _normal(seed, shape):
  return jax.random.normal(jax.random.key(seed), shape)


def _topk_std_reference(weights: np.ndarray, k: int) -> np.ndarray:
  """Row 0, then the k rows of 1..T with the largest row standard deviation
  (mean over heads), in temporal order."""
  std = np.std(weights[:, :, 1:], axis=-1).mean(axis=1)  # (batch, T)
  top = np.sort(np.argsort(-std, axis=-1)[:, :k], axis=-1) + 1
  return np.concatenate([np.zeros((len(top), 1), int), top], axis=-1)


def test_topk_std_keeps_the_rows_of_largest_std_and_the_class_token():
  logits = 3.0 * _normal(0, (5, 2, 9, 9))
  logits = logits.at[:, :, 0].set(100.0 * jnp.eye(9)[0])  # Row 0: peaked.
  weights = jax.nn.softmax(logits, axis=-1)
  for k in (1, 3, 8):
    rows = np.asarray(vidtr.topk_std_rows(weights, k))
    np.testing.assert_array_equal(rows, _topk_std_reference(
        np.asarray(weights), k))
    assert (rows[:, 0] == 0).all() and (rows[:, 1:] > 0).all()


def _block_reference(p, x, pooling=None, frames_out=0):
  """Eqs. 2-8 (pre-LN) on the grid x (b, 1+T, 1+S, d): temporal MSA on
  S^(:, i, .) for each location i, pooling, spatial MSA on each row, MLP."""
  b, t, s, d = x.shape
  zt = x.transpose(0, 2, 1, 3).reshape(b * s, t, d)
  p_t = p['MultiHeadDotProductAttention_time']
  y = _layer_norm(p['LayerNorm_time'], zt)
  zt = zt + _msa(p_t, y)  # Eqs. 2-5.
  if pooling == 'topk_std':
    q, k = (jnp.einsum('bnd,dhk->bnhk', y, p_t[n]['kernel']) + p_t[n]['bias']
            for n in ('query', 'key'))
    weights = jax.nn.softmax(jnp.einsum('bqhk,bnhk->bhqn', q, k) /
                             np.sqrt(q.shape[-1]), axis=-1)
    rows = _topk_std_reference(np.asarray(weights), frames_out)
    zt = zt[np.arange(b * s)[:, None], rows]
  elif pooling == 'avg':
    groups = zt[:, 1:].reshape(b * s, frames_out, -1, d).mean(axis=2)
    zt = jnp.concatenate([zt[:, :1], groups], axis=1)
  t = zt.shape[1]
  zs = zt.reshape(b, s, t, d).transpose(0, 2, 1, 3).reshape(b * t, s, d)
  zs = zs + _msa(p['MultiHeadDotProductAttention_space'],
                 _layer_norm(p['LayerNorm_space'], zs))  # Eqs. 6-8.
  zs = zs + _mlp(p['MlpBlock'], _layer_norm(p['LayerNorm_mlp'], zs))
  return zs.reshape(b, t, s, d)


@pytest.mark.parametrize('pooling,frames_out', [
    (None, 0), ('topk_std', 2), ('avg', 2)])
def test_separable_block_is_reshape_msa_reshape(pooling, frames_out):
  x = _normal(1, (2, 5, 3, 16))  # T = 4 frames, S = 2 patches.
  block = vidtr.SeparableBlock(mlp_dim=32, num_heads=4, frames_out=frames_out,
                               pooling=pooling or 'topk_std')
  params = _randomize(jax.eval_shape(
      lambda: block.init(jax.random.key(0), x, True)))
  expected = _block_reference(params['params'], x, pooling, frames_out)
  got = jax.jit(lambda p, x: block.apply(p, x, True))(params, x)
  assert got.shape == (2, 1 + (frames_out or 4), 3, 16)
  np.testing.assert_allclose(got, expected, atol=1e-5)


def test_conv_pooling_starts_as_average_pooling():
  x = _normal(2, (3, 8, 16))
  module = vidtr.TemporalConvPool(4)
  params = module.init(jax.random.key(0), x)
  np.testing.assert_allclose(module.apply(params, x),
                             x.reshape(3, 4, 2, 16).mean(axis=2), atol=1e-6)
  np.testing.assert_allclose(
      vidtr.average_pooling_matrix(8, 6).sum(axis=1), np.ones(6), atol=1e-6)


def test_compact_vidtr_follows_the_pooling_schedule():
  """C-VidTr-S's schedule (Table 1): layers 1, 2, 4 keep 6, 4, 2 of 8
  frames. ('avg' and 'conv' shapes: the block and convolution tests.)"""
  config = vidtr_config(num_layers=5, pool_layers=(1, 2, 4),
                        pool_frames=(6, 4, 2))
  model, params = _init(config)
  clip = _normal(3, (2,) + spec.check_config(config, mode='model').input_shape)
  logits, state = jax.jit(lambda p, x: model.apply(
      {'params': p}, x, train=False,
      capture_intermediates=lambda m, _: (m.name or '').startswith(
          'encoderblock')))(
          params, clip)
  frames = [state['intermediates']['Transformer'][f'encoderblock_{layer}'][
      '__call__'][0].shape[1] - 1 for layer in range(5)]
  assert frames == [8, 6, 4, 4, 2]
  assert logits.shape == (2, 3) and np.isfinite(logits).all()


def _two_row_reference(vit, clip_frames, image, patch=4):
  """What a ViT-initialised VidTr computes on a clip repeating `image`.

  All T frame rows of the grid stay equal (same tokens, same positions),
  so every layer holds two distinct rows: the temporal class-token row r
  and the frame row f. At location i the temporal attention (the ViT's
  attention) sees r_i once and f_i T times, which is attention over the
  two with log T added to f_i's logit; the spatial attention and the MLP
  are the ViT's, on each row. The logits are the ViT's head on r_0.
  """
  d = vit['cls'].shape[-1]
  n = image.shape[1] // patch
  patches = image.reshape(n, patch, n, patch, -1).transpose(0, 2, 1, 3, 4)
  tokens = patches.reshape(n * n, -1) @ vit['embedding/kernel'].reshape(
      -1, d) + vit['embedding/bias']
  pos = vit['Transformer/posembed_input/pos_embedding'][0]
  cls = vit['cls'][0, 0]
  f = jnp.concatenate([cls[None], tokens]) + pos
  r = jnp.broadcast_to(cls, f.shape) + pos
  bias = jnp.array([0.0, np.log(clip_frames)])
  layer = 0
  while f'Transformer/encoderblock_{layer}/LayerNorm_0/scale' in vit:
    p = _layer_tree(vit, f'Transformer/encoderblock_{layer}/')
    pair = jnp.stack([r, f], axis=1)  # (1 + S, 2, d): per location.
    y = _layer_norm(p['LayerNorm_0'], pair)
    a = p['MultiHeadDotProductAttention_1']
    q, k, v = (jnp.einsum('bnd,dhk->bnhk', y, a[m]['kernel']) + a[m]['bias']
               for m in ('query', 'key', 'value'))
    logits = jnp.einsum('bqhk,bnhk->bhqn', q, k) / np.sqrt(q.shape[-1])
    weights = jax.nn.softmax(logits + bias, axis=-1)
    out = jnp.einsum('bhqn,bnhk->bqhk', weights, v)
    pair = pair + jnp.einsum('bqhk,hkd->bqd', out, a['out']['kernel']) + (
        a['out']['bias'])
    rows = pair.transpose(1, 0, 2)  # (2, 1 + S, d): r and f.
    rows = rows + _msa(a, _layer_norm(p['LayerNorm_0'], rows))
    rows = rows + _mlp(p['MlpBlock_3'], _layer_norm(p['LayerNorm_2'], rows))
    r, f = rows
    layer += 1
  final = _layer_norm(_layer_tree(vit, 'Transformer/encoder_norm/'), r[0])
  return final @ vit['head/kernel'] + vit['head/bias']


def _layer_tree(flat, prefix):
  tree = {}
  for name, value in flat.items():
    if name.startswith(prefix):
      *path, leaf = name[len(prefix):].split('/')
      node = tree
      for part in path:
        node = node.setdefault(part, {})
      node[leaf] = value
  return tree


def test_static_clip_is_the_two_row_vit_recursion(random_vit):
  """Initialised from a ViT (both attentions from the ViT's, positions
  repeated over time), VidTr on a static clip equals `_two_row_reference`;
  and since all rows share positions it ignores the order of frames."""
  config = vidtr_config(size=16, num_frames=3, num_classes=5)
  config.dataset_configs.num_channels = 3
  config.init_from = config_builders.init_from(random_vit)
  model, _, params, report = _load(config)
  image = jnp.asarray(np.sin(0.9 * np.arange(16 * 16 * 3)).reshape(
      16, 16, 3), jnp.float32)
  apply = jax.jit(lambda x: model.apply({'params': params}, x, train=False))
  vit = {name: jnp.asarray(v) for name, v in np.load(random_vit).items()}
  np.testing.assert_allclose(
      apply(jnp.repeat(image[None, None], 3, axis=1))[0],
      _two_row_reference(vit, 3, image), atol=1e-4)

  clip = _normal(4, (1,) + spec.check_config(config, mode='model').input_shape)
  np.testing.assert_allclose(apply(clip), apply(clip[:, ::-1]), atol=1e-5)
  decided = report.loaded + list(report.reshaped) + list(report.kept)
  assert sorted(decided) == sorted(_flat(params))
  assert not report.kept and not report.unused
  assert 'repeated over the 4 rows' in str(report)


@pytest.mark.parametrize('field,value,message', [
    ('model.temporal_pooling.method', 'max', 'method'),
    ('model.temporal_pooling.layers', (2, 1), 'layers'),
    ('model.temporal_pooling.frames', (4, 8), 'frames'),
    ('model.num_heads', 3, 'num_heads'),
])
def test_config_errors_name_the_field(field, value, message):
  config = vidtr_config(pool_layers=(0, 1), pool_frames=(4, 2))
  *path, leaf = field.split('.')
  node = config
  for part in path:
    node = node[part]
  node[leaf] = value
  with pytest.raises(ValueError, match=f'config.model.[a-z_.]*{message}'):
    spec.check_config(config, mode='model')


@pytest.mark.parametrize('config,frames', [
    (_config('vtn.py:1layer'), 250),
    (_config('vtn.py:3layer'), 250),
    (_config('vidtr.py:s'), 8), (_config('vidtr.py:m'), 16),
    (_config('vidtr.py:l'), 32),
    (_config('vidtr.py:compact_s'), 8),
    (_config('vidtr.py:compact_m'), 16),
    (_config('adrenal.py:vtn'), 28), (_config('adrenal.py:vidtr'), 28)])
def test_configs_are_valid(config, frames):
  """The paper's and AdrenalMNIST3D's VTN and VidTr configs pass the check;
  their patch tokens are all frames' patches."""
  spec.check_config(config, mode='model')
  size, patch = config.dataset_configs.crop_size, config.model.patches.size
  assert spec.check_config(config, mode='model').num_tokens == (
      frames * (size // patch[0]) ** 2)


_PARALLEL_SCRIPT = r'''
import json
import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
import vivit_jax
from vivit_jax import config_builders
from vivit_jax import models
from vivit_jax import spec

jax.config.update('jax_default_matmul_precision', 'highest')
assert jax.local_device_count() == 4
errors = {}
for arg in ('vtn', 'vidtr'):
  config = vivit_jax.load_config(f'configs/adrenal.py:{arg}')  # Narrowed.
  config.model.update(hidden_size=16, num_layers=1, num_heads=2, mlp_dim=32)
  if arg == 'vtn':
    config.model.temporal_transformer.update(
        num_layers=1, num_heads=2, mlp_dim=32,
        attention_dropout_rate=0.0)  # Dropout draws differ per device.
    config.model.head.mlp_dim = 16
  else:
    config.model.temporal_pooling.update(layers=(0,), frames=(7,))
  model = models.create_model(config)
  shape = spec.check_config(config, mode='model').input_shape
  assert shape == (28, 28, 28, 1), shape
  volumes = jax.random.normal(jax.random.key(0), (4,) + shape)
  labels = jnp.arange(4) % 2
  params = jax.jit(lambda x: model.init(jax.random.key(1), x, train=False))(
      volumes[:1])['params']
  optimizer = optax.sgd(0.1, momentum=0.9)

  def loss_fn(params, x, y):
    logits = model.apply({'params': params}, x, train=True)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

  def train(params, x, y, axis=None):
    """Two steps; returns the parameters and the two losses."""
    def step(state, _):
      params, opt_state = state
      loss, grads = jax.value_and_grad(loss_fn)(params, x, y)
      if axis:
        loss, grads = jax.lax.pmean((loss, grads), axis)
      updates, opt_state = optimizer.update(grads, opt_state, params)
      return (optax.apply_updates(params, updates), opt_state), loss

    (params, _), losses = jax.lax.scan(
        step, (params, optimizer.init(params)), None, length=2)
    return params, losses

  p1, loss1 = jax.jit(train)(params, volumes, labels)
  p4, loss4 = jax.pmap(lambda *a: train(*a, axis='batch'), axis_name='batch')(
      flax.jax_utils.replicate(params), volumes.reshape((4, 1) + shape),
      labels.reshape(4, 1))
  flat = lambda tree: np.concatenate(
      [np.ravel(x) for x in jax.tree.leaves(jax.device_get(tree))])
  start, single = flat(params), flat(p1)
  sharded = flat(jax.tree.map(lambda x: x[0], p4))
  errors[arg] = {
      'loss': float(np.abs(np.asarray(loss1) - np.asarray(loss4)[0]).max()),
      'params': float(np.abs(single - sharded).max()),
      'moved': float(np.abs(single - start).max())}
print(json.dumps(errors))
'''


def test_vtn_and_vidtr_train_alike_under_jit_and_pmap():
  """Two SGD steps on AdrenalMNIST3D-shaped volumes (28^3, 1 channel, 2
  classes; random values) with the adrenal configs, narrowed: one device
  and the batch, or 4 forced host devices with a quarter each and averaged
  gradients, give the same losses and parameters."""
  errors = json.loads(run_on_host_devices(_PARALLEL_SCRIPT).splitlines()[-1])
  for arg in ('vtn', 'vidtr'):
    assert errors[arg]['loss'] < 1e-5, errors
    assert errors[arg]['params'] < 1e-5, errors
    assert errors[arg]['moved'] > 1e-4, errors  # Training changed them.
