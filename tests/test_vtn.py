"""VTN (Neimark et al., 2021): Longformer attention, linear memory in the
number of frames, the frozen backbone, ViT initialisation, config checks."""

import functools
import re

from flax import traverse_util
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vivit_jax import config_builders
from tests.conftest import tiny_config
from tests.test_pretrained import _flat
from tests.test_pretrained import _init
from tests.test_pretrained import _load
from tests.test_pretrained import _randomize
from tests.test_pretrained import random_vit  # pylint: disable=unused-import
from vivit_jax.models import attention
from vivit_jax.models import encoder
from vivit_jax.models import longformer
from vivit_jax.models import vit
from vivit_jax import spec

jax.config.update('jax_default_matmul_precision', 'highest')


def vtn_config(*, size=8, num_frames=6, window=4, temporal_num_layers=2,
               num_classes=3, position_embedding='learned'):
  """A tiny VTN: 4 x 4 patches, width 16."""
  config = tiny_config(size=size, num_frames=num_frames,
                       num_classes=num_classes, model_name='vtn')
  config.model = config_builders.vtn_model(
      16, 2, 4, 32, (4, 4), temporal_num_layers=temporal_num_layers,
      attention_window=window, max_frames=num_frames, head_mlp_dim=16)
  config.model.temporal_transformer.position_embedding = position_embedding
  return config


def _normal(seed, shape):
  return jax.random.normal(jax.random.key(seed), shape)


def _masked_attention(q, k, v, mask):
  logits = jnp.einsum('bqhd,bkhd->bhqk', q, k) / np.sqrt(q.shape[-1])
  weights = jax.nn.softmax(jnp.where(mask, logits, -jnp.inf), axis=-1)
  return jnp.einsum('bhqk,bkhd->bqhd', weights, v)


@pytest.mark.parametrize('frames,window', [(1, 2), (17, 6), (9, 32)])
def test_sliding_window_is_full_attention_with_the_band_mask(frames, window):
  """Frames see frames within w/2 and [CLS]; [CLS] sees all (row and
  column 0 of the mask). Frames that do not fill the last block too."""
  q, k, v = (_normal(i, (2, 1 + frames, 3, 5)) for i in range(3))
  mask = longformer.band_mask(1 + frames, window)
  assert mask[0].all() and mask[:, 0].all()
  np.testing.assert_allclose(
      jax.jit(functools.partial(longformer.sliding_window_attention,
                                window=window))(q, k, v),
      jax.jit(_masked_attention)(q, k, v, mask), atol=1e-5)


def test_a_window_over_all_frames_is_a_plain_transformer_encoder():
  frames, width = 9, 16
  x = _normal(0, (2, 1 + frames, width))
  module = longformer.LongformerEncoder(
      num_layers=2, mlp_dim=32, num_heads=4, window=2 * frames,
      position_embedding='none')
  params = _randomize(jax.eval_shape(
      lambda: module.init(jax.random.key(0), x, train=False)))

  @jax.jit
  def plain(params, y):
    for layer in range(2):
      y = encoder.EncoderBlock(mlp_dim=32, num_heads=4).apply(
          {'params': params['params'][f'encoderblock_{layer}']}, y, True)
    return y

  longformer_apply = jax.jit(lambda p, x: module.apply(p, x, train=False))
  np.testing.assert_allclose(longformer_apply(params, x), plain(params, x),
                             atol=1e-5)


def _square_shapes(hlo: str, frames: int) -> list[str]:
  """Array shapes in HLO text with two dimensions of at least `frames`."""
  shapes = re.findall(r'[fsu]\d+\[([\d,]+)\]', hlo)
  return [s for s in shapes
          if sum(int(d) >= frames for d in s.split(',') if d) >= 2]


def _compiled_gradient(frames: int, width: int = 8):
  module = longformer.LongformerEncoder(
      num_layers=1, mlp_dim=16, num_heads=2, window=32,
      position_embedding='sinusoidal')
  x = jax.ShapeDtypeStruct((1, 1 + frames, width), jnp.float32)
  params = jax.eval_shape(lambda: module.init(
      jax.random.key(0), jnp.zeros(x.shape), train=False))

  def loss(params, x):
    return jnp.sum(module.apply(params, x, train=False) ** 2)

  return jax.jit(jax.value_and_grad(loss)).lower(params, x).compile()


def test_memory_is_linear_in_frames():
  """At 2,048 frames the compiled encoder, forward and backward, holds no
  (frames x frames) array, and twice the frames take twice the temporary
  memory (4.6 MB here; one 2 x 2048 x 2048 score array would be 34 MB)."""
  frames = 2048
  compiled = _compiled_gradient(frames)
  assert not _square_shapes(compiled.as_text(), frames)
  temp = compiled.memory_analysis().temp_size_in_bytes
  half = _compiled_gradient(frames // 2).memory_analysis().temp_size_in_bytes
  assert temp < 2.5 * half  # Quadratic memory: 4 times.

  # The check catches a dense layer: plain attention has such arrays.
  x = jax.ShapeDtypeStruct((1, 1 + frames, 8), jnp.float32)
  dense = encoder.EncoderBlock(mlp_dim=16, num_heads=2)
  dense_params = jax.eval_shape(lambda: dense.init(
      jax.random.key(0), jnp.zeros(x.shape), True))
  with attention.xla_attention():
    hlo = jax.jit(lambda p, x: dense.apply(p, x, True)).lower(
        dense_params, x).compile().as_text()
  assert _square_shapes(hlo, frames)


def test_cost_analysis_counts_the_whole_band():
  """Summary's GFLOPs come from XLA's cost analysis, which counts a loop's
  body once; the band has no loop, so all its products are counted: the
  scores and weighted sums of 3 w/2 band keys and [CLS] per frame, and of
  all tokens for [CLS] (plus the softmax's element-wise work)."""
  frames, heads, head_dim, window = 64, 2, 8, 8
  q = jax.ShapeDtypeStruct((1, 1 + frames, heads, head_dim), jnp.float32)
  flops = jax.jit(functools.partial(
      longformer.sliding_window_attention, window=window)).lower(
          q, q, q).cost_analysis()['flops']
  keys = frames * (3 * window // 2 + 1) + (1 + frames)
  products = 2 * 2 * keys * heads * head_dim  # Q K^T and A V, 2 FLOPs each.
  assert products <= flops < 1.5 * products


@pytest.mark.parametrize('position_embedding,invariant', [
    ('none', True), ('sinusoidal', False)])
def test_frame_positions(position_embedding, invariant):
  """Table 3's choices: without positions, and a window over all frames,
  VTN's output does not depend on the order of the frames."""
  config = vtn_config(window=12, position_embedding=position_embedding)
  model, params = _init(config)
  clip = _normal(1, (2,) + spec.check_config(config, mode='model').input_shape)
  apply = jax.jit(lambda x: model.apply({'params': params}, x, train=False))
  logits, shuffled = apply(clip), apply(clip[:, ::-1])
  assert np.allclose(logits, shuffled, atol=1e-5) == invariant


@pytest.mark.parametrize('freeze', [True, False])
def test_frozen_backbone_gets_no_gradient(freeze):
  config = vtn_config()
  config.model.freeze_backbone = freeze
  model, params = _init(config)
  clip = _normal(1, (2,) + spec.check_config(config, mode='model').input_shape)
  grads = jax.jit(jax.grad(lambda p: jnp.sum(model.apply(
      {'params': p}, clip, train=False) ** 2)))(params)
  backbone = max(float(jnp.abs(g).max())
                 for g in jax.tree.leaves(grads['Backbone']))
  temporal = max(float(jnp.abs(g).max())
                 for g in jax.tree.leaves(grads['TemporalTransformer']))
  assert temporal > 0 and (backbone == 0) == freeze


def test_static_clip_backbone_features_are_the_vits(random_vit):
  """Initialised from a ViT, the backbone's feature of every frame of a
  clip that repeats one image is the ViT's [CLS] output on that image: the
  ViT's logits are its head applied to it. (The Longformer and the MLP head
  are new, so VTN's logits are not the ViT's.)"""
  config = vtn_config(size=16)
  config.dataset_configs.num_channels = 3
  config.init_from = config_builders.init_from(random_vit)
  model, _, params, report = _load(config)
  image = jnp.asarray(np.sin(0.9 * np.arange(16 * 16 * 3)).reshape(
      1, 16, 16, 3), jnp.float32)
  clip = jnp.repeat(image[:, None], 6, axis=1)
  _, state = jax.jit(lambda p, x: model.apply(
      {'params': p}, x, train=False,
      capture_intermediates=lambda module, _: module.name == 'Backbone'))(
          params, clip)
  features = state['intermediates']['Backbone']['__call__'][0]  # (6, d).
  vit_params = {name: np.asarray(value) for name, value in
                np.load(random_vit).items()}
  head = {'kernel': vit_params['head/kernel'],
          'bias': vit_params['head/bias']}
  vit_model = vit.ViT(num_classes=5, patch_size=(4, 4), hidden_size=16,
                      num_layers=2, num_heads=4, mlp_dim=32, classifier='token',
                      representation_size=None, dropout_rate=0.0,
                      attention_dropout_rate=0.0,
                      stochastic_droplayer_rate=0.0, gelu_approximate=True,
                      remat=False, dtype=jnp.float32)
  tree = {tuple(name.split('/')): value for name, value in vit_params.items()}
  vit_logits = vit_model.apply(
      {'params': traverse_util.unflatten_dict(tree)}, image, train=False)
  np.testing.assert_allclose(features @ head['kernel'] + head['bias'],
                             np.repeat(vit_logits, 6, axis=0), atol=1e-5)
  assert sorted(report.loaded) == sorted(
      name for name in _flat(params) if name.startswith('Backbone/'))
  assert set(report.kept) == {
      name for name in _flat(params) if not name.startswith('Backbone/')}
  assert set(report.unused) == {'head/kernel', 'head/bias'}


@pytest.mark.parametrize('field,value,message', [
    ('model.temporal_transformer.attention_window', 5, 'attention_window'),
    ('model.temporal_transformer.position_embedding', 'rope',
     'position_embedding'),
    ('model.temporal_transformer.max_frames', 3, 'max_frames'),
    ('model.temporal_transformer.num_heads', 3,
     'temporal_transformer.num_heads'),
    ('model.temporal_transformer.num_layers', 0, 'num_layers'),
])
def test_config_errors_name_the_field(field, value, message):
  config = vtn_config()
  *path, leaf = field.split('.')
  node = config
  for part in path:
    node = node[part]
  node[leaf] = value
  with pytest.raises(ValueError, match=f'config.[a-z_.]*{message}'):
    spec.check_config(config, mode='model')


def test_frozen_backbone_refuses_weight_decay():
  config = vtn_config()
  config.update(config_builders.training('adamw', 1e-3, 8, 1, weight_decay=1e-4))
  config.model.freeze_backbone = True
  with pytest.raises(ValueError, match='config.model.freeze_backbone'):
    spec.check_config(config, mode='model')
