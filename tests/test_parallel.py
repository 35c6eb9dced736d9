"""Every model gives the same outputs under `jit` and under `pmap`."""

import json

from tests.conftest import run_on_host_devices

_SCRIPT = r'''
import json
import flax
import jax
import jax.numpy as jnp
import numpy as np
from tests.conftest import VIVIT_MODELS, tiny_config
from vivit_jax import models
from vivit_jax import spec

jax.config.update('jax_default_matmul_precision', 'highest')
assert jax.local_device_count() == 4
configs = {f'{t}-{c}': tiny_config(t, c) for t, c in VIVIT_MODELS}
configs['vit'] = tiny_config(model_name='vit')
configs['cnn3d'] = tiny_config(model_name='cnn3d', size=16, num_frames=16)
errors = {}
for name, config in configs.items():
  model = models.create_model(config)
  shape = spec.check_config(config, mode='model').input_shape
  inputs = jax.random.normal(jax.random.key(0), (8,) + shape)
  variables = jax.jit(lambda x: model.init(jax.random.key(1), x,
                                          train=False))(inputs)
  variables = jax.tree.map(
      lambda x: x + 0.1 * jax.random.normal(jax.random.key(2), x.shape),
      variables)
  apply = lambda v, x: model.apply(v, x, train=False)
  single = jax.jit(apply)(variables, inputs)
  sharded = jax.pmap(apply)(flax.jax_utils.replicate(variables),
                            inputs.reshape((4, 2) + shape))
  errors[name] = float(np.abs(np.asarray(sharded).reshape(single.shape)
                              - np.asarray(single)).max())
  assert np.abs(single).max() > 1e-3, name  # Outputs are not trivially zero.
print(json.dumps(errors))
'''


def test_jit_and_pmap_on_four_devices_agree():
  errors = json.loads(run_on_host_devices(_SCRIPT).splitlines()[-1])
  assert set(errors) == {
      'spacetime-token', 'factorized_encoder-token',
      'factorized_self_attention_block-gap',
      'factorized_dot_product_attention-gap', 'vit', 'cnn3d'}
  assert max(errors.values()) < 1e-5, errors
