"""`run.py --mode=summary`: parameters, FLOPs and tokens of a config's model.

Nothing is computed on real arrays: parameters come from `jax.eval_shape`
and FLOPs from XLA's cost analysis of the lowered forward pass.
"""

import json

from clu import parameter_overview
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from vivit_jax.models import attention
from vivit_jax import models
from vivit_jax import spec


def abstract_variables(model, config: ml_collections.ConfigDict):
  """The model's variables as `jax.ShapeDtypeStruct`s, for a batch of 1."""
  clip = jnp.zeros((1,) + spec.input_shape(config), jnp.float32)
  return jax.eval_shape(
      lambda: model.init(jax.random.key(0), clip, train=False))


def forward_gflops(model, variables, config: ml_collections.ConfigDict
                   ) -> float:
  """Multiply-adds of one forward pass on one clip, / 1e9.

  XLA's cost analysis counts a multiply-add as 2 FLOPs; the paper's Table 2
  counts it as one, so this is XLA's count / 2.
  """
  clip = jax.ShapeDtypeStruct((1,) + spec.input_shape(config), jnp.float32)
  with attention.xla_attention():  # Whose FLOPs the analysis counts.
    lowered = jax.jit(lambda v, x: model.apply(v, x, train=False)).lower(
        variables, clip)
  return lowered.cost_analysis()['flops'] / 2 / 1e9


def num_tokens(config: ml_collections.ConfigDict) -> int:
  """Tokens the encoder sees per clip (all frames), class tokens excluded."""
  model, data = config.model, config.dataset_configs
  if config.get('model_name', 'vivit') == 'cnn3d':
    return 0
  fh, fw = model.patches.size[:2]
  spatial = (data.crop_size // fh) * (data.crop_size // fw)
  if config.get('model_name', 'vivit') == 'vit':
    return spatial
  if config.model_name in ('vtn', 'vidtr'):  # Every frame's patches.
    return data.num_frames * spatial
  encoding = model.temporal_encoding_config
  temporal = (encoding.n_sampled_frames if encoding.method == 'temporal_sampling'
              else data.num_frames // model.patches.size[2])
  return temporal * spatial


def summarize(config: ml_collections.ConfigDict) -> dict:
  """Prints the parameter overview and returns the summary figures."""
  model = models.create_model(config)
  variables = abstract_variables(model, config)
  print(parameter_overview.get_parameter_overview(variables['params'],
                                                  include_stats=False))
  name = config.get('model_name', 'vivit')
  return {
      'model': name,
      'params': int(sum(np.prod(p.shape)
                        for p in jax.tree.leaves(variables['params']))),
      'gflops': round(forward_gflops(model, variables, config), 3),
      'tokens': num_tokens(config),
      'attention': (config.model.attention_config.type if name == 'vivit'
                    else None),
  }


def print_summary(config: ml_collections.ConfigDict) -> None:
  print(json.dumps(summarize(config)))
