"""The models compute what the paper's equations say (Sections 3.2-3.3)."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vivit_jax.models import attention
from vivit_jax.models import embedding
from vivit_jax.models import encoder
from vivit_jax.models import stem
from vivit_jax import models
from tests.conftest import tiny_config

jax.config.update('jax_default_matmul_precision', 'highest')


def _normal(seed, shape):
  return jax.random.normal(jax.random.key(seed), shape)


def _randomize(params, seed=0):
  """Replaces every parameter by noise: zero-initialised ones hide bugs."""
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(seed), len(leaves))
  return jax.tree.unflatten(tree, [
      0.3 * jax.random.normal(k, x.shape) for k, x in zip(keys, leaves)])


# Explicit reference implementations of the paper's equations.

def _layer_norm(p, x, eps=1e-6):
  mean = x.mean(-1, keepdims=True)
  var = ((x - mean) ** 2).mean(-1, keepdims=True)
  return (x - mean) / jnp.sqrt(var + eps) * p['scale'] + p['bias']


def _msa(p, x, mask=None):
  """Multi-head self-attention with Eq. 7; mask (heads, N, N) or None."""
  q, k, v = (jnp.einsum('bnd,dhk->bnhk', x, p[n]['kernel']) + p[n]['bias']
             for n in ('query', 'key', 'value'))
  logits = jnp.einsum('bqhk,bnhk->bhqn', q, k) / np.sqrt(q.shape[-1])
  if mask is not None:
    logits = jnp.where(mask, logits, -jnp.inf)
  y = jnp.einsum('bhqn,bnhk->bqhk', jax.nn.softmax(logits, axis=-1), v)
  return jnp.einsum('bqhk,hkd->bqd', y, p['out']['kernel']) + p['out']['bias']


def _mlp(p, x):
  h = nn.gelu(x @ p['Dense_0']['kernel'] + p['Dense_0']['bias'])
  return h @ p['Dense_1']['kernel'] + p['Dense_1']['bias']


def test_tubelet_embedding_is_patch_extraction_and_matrix_product():
  b, t, h, w, c, d = 2, 4, 8, 12, 3, 5
  ft, fh, fw = 2, 4, 3
  clip = _normal(0, (b, t, h, w, c))
  module = embedding.TubeletEmbedding(d, (fh, fw, ft))
  params = _randomize(module.init(jax.random.key(0), clip))
  tokens = module.apply(params, clip)

  patches = clip.reshape(b, t // ft, ft, h // fh, fh, w // fw, fw, c)
  patches = patches.transpose(0, 1, 3, 5, 2, 4, 6, 7)
  patches = patches.reshape(b, t // ft, h // fh, w // fw, ft * fh * fw * c)
  kernel = params['params']['kernel'].reshape(-1, d)
  expected = patches @ kernel + params['params']['bias']
  assert tokens.shape == (b, t // ft, h // fh, w // fw, d)
  np.testing.assert_allclose(tokens, expected, atol=1e-5)


def test_conv_stem_is_convolution_layer_norm_gelu_max_pool():
  clip = _normal(0, (2, 4, 8, 8, 3))
  module = stem.ConvStem((5, 6))
  params = _randomize(module.init(jax.random.key(0), clip))
  x = clip
  for level in range(2):
    conv = params['params'][f'Conv_{level}']
    x = jax.lax.conv_general_dilated(
        x, conv['kernel'], (1, 1, 1), [(1, 1)] * 3,
        dimension_numbers=('NDHWC', 'DHWIO', 'NDHWC')) + conv['bias']
    x = nn.gelu(_layer_norm(params['params'][f'LayerNorm_{level}'], x),
                approximate=False)
    x = nn.max_pool(x, (2, 2, 2), strides=(2, 2, 2))
  assert x.shape == (2, 1, 2, 2, 6)
  np.testing.assert_allclose(module.apply(params, clip), x, atol=1e-5)


@pytest.mark.parametrize('train', [False, True])
def test_batch_norm_stem_is_convolution_batch_norm_relu_max_pool(train):
  clip = _normal(0, (3, 4, 8, 8, 2))
  module = stem.ConvStem((5, 6), norm='batch')
  variables = _randomize(module.init(jax.random.key(0), clip))
  variables['batch_stats'] = jax.tree.map(jnp.abs, variables['batch_stats'])
  params, stats = variables['params'], variables['batch_stats']
  x, expected_stats = clip, {}
  for level in range(2):
    conv, norm = params[f'Conv_{level}'], params[f'BatchNorm_{level}']
    running = stats[f'BatchNorm_{level}']
    x = jax.lax.conv_general_dilated(
        x, conv['kernel'], (1, 1, 1), [(1, 1)] * 3,
        dimension_numbers=('NDHWC', 'DHWIO', 'NDHWC')) + conv['bias']
    if train:
      mean, var = x.mean((0, 1, 2, 3)), x.var((0, 1, 2, 3))
      expected_stats[f'BatchNorm_{level}'] = {
          'mean': 0.9 * running['mean'] + 0.1 * mean,
          'var': 0.9 * running['var'] + 0.1 * var}
    else:
      mean, var = running['mean'], running['var']
    x = (x - mean) / jnp.sqrt(var + 1e-5) * norm['scale'] + norm['bias']
    x = nn.max_pool(nn.relu(x), (2, 2, 2), strides=(2, 2, 2))
  assert x.shape == (3, 1, 2, 2, 6)
  if train:
    out, updates = module.apply(variables, clip, train=True,
                                mutable=['batch_stats'])
    jax.tree.map(functools.partial(np.testing.assert_allclose, rtol=1e-4,
                                   atol=1e-5),
                 updates['batch_stats'], expected_stats)
  else:
    out = module.apply(variables, clip)
  np.testing.assert_allclose(out, x, rtol=1e-4, atol=1e-4)


def test_vivit_with_a_batch_norm_stem_keeps_its_statistics():
  config = tiny_config(size=16, num_frames=8)
  config.model.stem_features = (4,)
  config.model.stem_norm = 'batch'
  model = models.create_model(config)
  clip = _normal(0, (2, 8, 16, 16, 1))
  variables = model.init(jax.random.key(0), clip, train=False)
  assert set(variables['params']['stem']) == {'Conv_0', 'BatchNorm_0'}
  logits, updates = model.apply(variables, clip, train=True,
                                mutable=['batch_stats'])
  assert logits.shape == (2, 3)
  assert not np.allclose(updates['batch_stats']['stem']['BatchNorm_0']['mean'],
                         variables['batch_stats']['stem']['BatchNorm_0']['mean'])


def test_vivit_with_a_stem_tokenises_the_stem_output():
  config = tiny_config(size=16, num_frames=8)
  config.model.stem_features = (4,)
  model = models.create_model(config)
  clip = _normal(0, (2, 8, 16, 16, 1))
  params = model.init(jax.random.key(0), clip, train=False)['params']
  assert params['embedding']['kernel'].shape == (2, 4, 4, 4, 16)
  # (8 / 2 / 2) x (16 / 2 / 4)^2 tokens and the class token.
  assert params['Transformer']['posembed_input']['pos_embedding'].shape == (
      1, 1 + 2 * 2 * 2, 16)
  assert model.apply({'params': params}, clip, train=False).shape == (2, 3)


def test_a_stem_rounds_odd_sizes_down_as_the_cnn():
  config = tiny_config(size=10, num_frames=6, patch_size=(1, 1, 1))
  config.model.stem_features = (4, 4)
  config.model.stem_norm = 'batch'
  model = models.create_model(config)
  clip = _normal(0, (2, 6, 10, 10, 1))
  variables = model.init(jax.random.key(0), clip, train=False)
  # 6 -> 3 -> 1 frames, 10 -> 5 -> 2 rows and columns: 1 x 2 x 2 tokens.
  assert variables['params']['Transformer']['posembed_input'][
      'pos_embedding'].shape == (1, 1 + 1 * 2 * 2, 16)
  assert model.apply(variables, clip, train=False).shape == (2, 3)


def test_uniform_frame_sampling_is_per_frame_patch_embedding():
  b, t, h, w, c, d, n_t = 2, 8, 8, 8, 1, 6, 3
  clip = _normal(1, (b, t, h, w, c))
  module = embedding.FrameSamplingEmbedding(d, (4, 4), num_frames=n_t)
  params = _randomize(module.init(jax.random.key(0), clip))
  tokens = module.apply(params, clip)

  frames = [1, 4, 6]  # Centres of 3 equal segments of 8 frames.
  np.testing.assert_array_equal(
      embedding.sample_frames_uniformly(clip, n_t), clip[:, frames])
  kernel = params['params']['kernel'].reshape(-1, d)
  for i, f in enumerate(frames):
    patches = clip[:, f].reshape(b, 2, 4, 2, 4, c).transpose(0, 1, 3, 2, 4, 5)
    expected = patches.reshape(b, 2, 2, -1) @ kernel + params['params']['bias']
    np.testing.assert_allclose(tokens[:, i], expected, atol=1e-5)


@pytest.mark.parametrize('order', ['space_time', 'time_space'])
def test_model3_block_is_reshape_msa_reshape(order):
  """Eqs. 4-6 written out: z_s is (b*n_t, n_h*n_w, d), z_t (b*n_h*n_w, n_t, d)."""
  b, t, hw, d = 2, 3, 4, 8
  z = _normal(2, (b, t * hw, d))
  block = encoder.FactorizedSelfAttentionBlock(
      mlp_dim=16, num_heads=2, temporal_dims=t, attention_order=order)
  params = _randomize(block.init(jax.random.key(0), z, deterministic=True))
  p = params['params']

  def spatial(x):  # Eq. 4
    zs = x.reshape(b * t, hw, d)
    ys = _msa(p['MultiHeadDotProductAttention_space'],
              _layer_norm(p['LayerNorm_space'], zs)) + zs
    return ys.reshape(b, t * hw, d)

  def temporal(x):  # Eq. 5
    zt = x.reshape(b, t, hw, d).transpose(0, 2, 1, 3).reshape(b * hw, t, d)
    yt = _msa(p['MultiHeadDotProductAttention_time'],
              _layer_norm(p['LayerNorm_time'], zt)) + zt
    return yt.reshape(b, hw, t, d).transpose(0, 2, 1, 3).reshape(b, t * hw, d)

  y = temporal(spatial(z)) if order == 'space_time' else spatial(temporal(z))
  expected = _mlp(p['MlpBlock'], _layer_norm(p['LayerNorm_mlp'], y)) + y  # Eq. 6
  np.testing.assert_allclose(block.apply(params, z, deterministic=True),
                             expected, atol=1e-5)


def test_model4_attention_is_masked_full_attention():
  """Eq. 7 and Fig. 6: temporal heads (the first half, as in Scenic) see
  their spatial position, spatial heads their frame, evaluated as full
  attention with masks."""
  b, t, hw, d, heads = 2, 3, 4, 16, 4
  x = _normal(3, (b, t * hw, d))
  msa = nn.MultiHeadDotProductAttention(
      num_heads=heads, attention_fn=functools.partial(
          attention.factorized_dot_product_attention, temporal_dims=t))
  params = _randomize(msa.init(jax.random.key(0), x))

  frame, position = np.divmod(np.arange(t * hw), hw)
  same_frame = frame[:, None] == frame[None, :]
  same_position = position[:, None] == position[None, :]
  mask = np.stack([same_position] * (heads // 2) + [same_frame] * (heads // 2))
  np.testing.assert_allclose(msa.apply(params, x),
                             _msa(params['params'], x, mask), atol=1e-5)


def test_model4_first_half_of_heads_attends_over_time():
  """Scenic's head order, written out for one query: head 0 attends over
  the n_t tokens at the query's spatial position, head 1 over its frame."""
  t, hw, head_dim = 3, 4, 8
  q, k, v = (np.asarray(_normal(seed, (1, t * hw, 2, head_dim)))
             for seed in (4, 5, 6))
  y = attention.factorized_dot_product_attention(q, k, v, temporal_dims=t)
  frame, position = 1, 2
  query = frame * hw + position
  for head, keys in ((0, position + hw * np.arange(t)),
                     (1, frame * hw + np.arange(hw))):
    logits = k[0, keys, head] @ q[0, query, head] / np.sqrt(head_dim)
    weights = np.exp(logits - logits.max())
    expected = weights / weights.sum() @ v[0, keys, head]
    np.testing.assert_allclose(y[0, query, head], expected, atol=1e-5)


def test_model4_has_model1_parameters():
  shapes = {}
  for attention_type in ('spacetime', 'factorized_dot_product_attention'):
    config = tiny_config(attention_type, 'gap')
    model = models.create_model(config)
    variables = jax.eval_shape(lambda m=model: m.init(
        jax.random.key(0), jnp.zeros((1, 4, 8, 8, 1)), train=False))
    shapes[attention_type] = jax.tree.map(lambda a: a.shape, variables)
  assert shapes['spacetime'] == shapes['factorized_dot_product_attention']


def test_model2_spatial_encoder_is_vit_encoder_on_each_frame():
  config = tiny_config('factorized_encoder', 'token', patch_size=(4, 4, 1))
  model = models.create_model(config)
  clip = _normal(4, (2, 4, 8, 8, 1))
  params = _randomize(model.init(jax.random.key(0), clip, train=False))
  is_encoder = lambda module, _: module.name in ('SpatialTransformer',
                                                 'Transformer')
  _, state = model.apply(params, clip, train=False,
                         capture_intermediates=is_encoder)
  spatial = state['intermediates']['SpatialTransformer']['__call__'][0]

  vit_config = tiny_config(model_name='vit')
  vit = models.create_model(vit_config)
  p = params['params']
  vit_params = {'params': {
      'embedding': {'kernel': p['embedding']['kernel'][0],
                    'bias': p['embedding']['bias']},
      'cls': p['cls_SpatialTransformer'],
      'Transformer': p['SpatialTransformer'],
      'head': {'kernel': jnp.zeros((16, 3)), 'bias': jnp.zeros(3)}}}
  for frame in range(4):
    _, vit_state = vit.apply(vit_params, clip[:, frame], train=False,
                             capture_intermediates=is_encoder)
    expected = vit_state['intermediates']['Transformer']['__call__'][0]
    np.testing.assert_allclose(spatial.reshape(2, 4, 5, 16)[:, frame],
                               expected, atol=1e-5)


def test_model2_without_temporal_layers_averages_frame_representations():
  """L_t = 0 is the paper's average-pooling baseline."""
  config = tiny_config('factorized_encoder', 'gap', patch_size=(4, 4, 1))
  config.model.temporal_transformer.num_layers = 0
  model = models.create_model(config)
  clip = _normal(5, (2, 4, 8, 8, 1))
  params = _randomize(model.init(jax.random.key(0), clip, train=False))
  assert 'TemporalTransformer' not in params['params']
  per_frame = [model.apply(params, jnp.repeat(clip[:, f:f + 1], 4, axis=1),
                           train=False) for f in range(4)]
  # The head is linear, so averaging frame representations averages logits.
  np.testing.assert_allclose(model.apply(params, clip, train=False),
                             np.mean(per_frame, axis=0), atol=1e-5)


def test_droplayer_rate_grows_linearly_with_depth():
  """Eq. 10: p_drop(l) = l / L * p_drop."""
  config = tiny_config()
  config.model.num_layers = 4
  config.model.stochastic_droplayer_rate = 0.4
  model = models.create_model(config)
  clip = _normal(6, (2, 4, 8, 8, 1))
  params = model.init(jax.random.key(0), clip, train=False)
  rates = {}

  def record(next_fun, args, kwargs, context):
    if isinstance(context.module, encoder.StochasticDepth):
      rates[context.module.path[1]] = context.module.rate
    return next_fun(*args, **kwargs)

  with nn.intercept_methods(record):
    model.apply(params, clip, train=True, rngs={'dropout': jax.random.key(1)})
  assert rates == pytest.approx(
      {f'encoderblock_{l - 1}': l / 4 * 0.4 for l in range(1, 5)})


def test_stochastic_depth_drops_whole_examples_in_training_only():
  rate, batch = 0.3, 20000
  branch = jnp.ones((batch, 3, 2))
  layer = encoder.StochasticDepth(rate)
  out = layer.apply({}, branch, deterministic=False,
                    rngs={'dropout': jax.random.key(0)})
  kept = np.asarray(out[:, 0, 0] != 0)
  np.testing.assert_allclose(out[kept], 1 / (1 - rate), rtol=1e-6)  # Whole examples.
  np.testing.assert_array_equal(out[~kept], 0)
  assert abs((~kept).mean() - rate) < 4 * np.sqrt(rate * (1 - rate) / batch)
  np.testing.assert_array_equal(layer.apply({}, branch, deterministic=True),
                                branch)


def test_evaluation_ignores_stochastic_depth_and_dropout():
  config = tiny_config()
  clip = _normal(7, (2, 4, 8, 8, 1))
  model = models.create_model(config)
  params = _randomize(model.init(jax.random.key(0), clip, train=False))
  config.model.stochastic_droplayer_rate = 0.5
  config.model.dropout_rate = 0.5
  config.model.attention_dropout_rate = 0.5
  regularised = models.create_model(config)
  np.testing.assert_array_equal(regularised.apply(params, clip, train=False),
                                model.apply(params, clip, train=False))
  rngs = {'dropout': jax.random.key(1)}
  assert not np.allclose(regularised.apply(params, clip, train=True, rngs=rngs),
                         model.apply(params, clip, train=False))


@pytest.mark.parametrize('attention_type,classifier', [
    ('spacetime', 'token'), ('spacetime', 'gap'),
    ('factorized_encoder', 'token'), ('factorized_encoder', 'gap'),
    ('factorized_self_attention_block', 'gap'),
    ('factorized_dot_product_attention', 'gap')])
def test_models_classify_clips(attention_type, classifier):
  config = tiny_config(attention_type, classifier)
  config.model.representation_size = 8
  model = models.create_model(config)
  clip = _normal(8, (2, 4, 8, 8, 1))
  params = model.init(jax.random.key(0), clip, train=False)
  assert params['params']['pre_logits']['kernel'].shape == (16, 8)
  np.testing.assert_array_equal(params['params']['output_projection']['kernel'],
                                0)  # Zero-initialised output layer.
  logits = model.apply(_randomize(params), clip, train=False)
  assert logits.shape == (2, 3) and np.isfinite(logits).all()


def test_uniform_frame_sampling_model():
  config = tiny_config()
  config.model.temporal_encoding_config.method = 'temporal_sampling'
  config.model.temporal_encoding_config.n_sampled_frames = 2
  model = models.create_model(config)
  params = model.init(jax.random.key(0), jnp.zeros((1, 4, 8, 8, 1)),
                      train=False)
  assert params['params']['embedding']['kernel'].shape == (4, 4, 1, 16)
  assert params['params']['Transformer']['posembed_input'][
      'pos_embedding'].shape == (1, 1 + 2 * 2 * 2, 16)


def test_bfloat16_computes_in_bfloat16_with_float32_parameters():
  config = tiny_config()
  clip = _normal(9, (2, 4, 8, 8, 1))
  params = _randomize(models.create_model(config).init(
      jax.random.key(0), clip, train=False), seed=1)
  config.model_dtype_str = 'bfloat16'
  model = models.create_model(config)
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(
      model.init(jax.random.key(0), clip, train=False)))
  jaxpr = str(jax.make_jaxpr(lambda x: model.apply(params, x, train=False))(
      clip))
  assert 'bf16[2,16,4,4' in jaxpr or 'bf16[2,2,2,2,16]' in jaxpr
  logits = model.apply(params, clip, train=False)
  reference = models.create_model(tiny_config()).apply(params, clip,
                                                       train=False)
  assert logits.dtype == jnp.float32
  np.testing.assert_allclose(logits, reference, atol=0.1 * np.abs(
      reference).max())


@pytest.mark.parametrize('change,field', [
    ({'patches': (3, 3, 2)}, 'config.model.patches.size'),
    ({'patches': (4, 4, 3)}, 'config.model.patches.size'),
    ({'num_heads': 3}, 'config.model.num_heads'),
    ({'type': 'factorized_self_attention_block'}, 'config.model.classifier'),
    ({'type': 'divided_space_time'}, 'config.model.attention_config.type'),
    ({'classifier': 'gmp'}, 'config.model.classifier'),
    ({'stem_features': (4, 4, 4, 4)}, 'config.model.stem_features'),
    ({'stem_features': (4, 4)}, 'config.model.patches.size'),
    ({'stem_norm': 'group'}, 'config.model.stem_norm'),
])
def test_invalid_configs_name_the_field(change, field):
  config = tiny_config()
  model = config.model
  model.patches.size = change.get('patches', model.patches.size)
  model.num_heads = change.get('num_heads', model.num_heads)
  model.hidden_size = change.get('hidden_size', model.hidden_size)
  model.classifier = change.get('classifier', model.classifier)
  model.stem_features = change.get('stem_features', ())
  model.stem_norm = change.get('stem_norm', model.stem_norm)
  model.attention_config.type = change.get('type', model.attention_config.type)
  with pytest.raises(ValueError, match=field.replace('.', r'\.')):
    models.create_model(config)


def test_odd_head_count_for_model4_is_rejected():
  config = tiny_config('factorized_dot_product_attention', 'gap')
  config.model.num_heads, config.model.hidden_size = 3, 12
  with pytest.raises(ValueError, match=r'config\.model\.num_heads.*odd'):
    models.create_model(config)
