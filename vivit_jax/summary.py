"""`run.py --mode=summary`: a config's parameters, forward GFLOPs and
tokens, the figures of the paper's Table 2."""

import json

from clu import parameter_overview
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from vivit_jax import models
from vivit_jax import spec as spec_lib
from vivit_jax.models import attention
from vivit_jax.models import cpu_kernels


def abstract_variables(model, spec: spec_lib.Spec):
  """The model's variables as `jax.ShapeDtypeStruct`s, for a batch of 1."""
  clip = jnp.zeros((1,) + spec.input_shape, jnp.float32)
  return jax.eval_shape(
      lambda: model.init(jax.random.key(0), clip, train=False))


def num_params(variables) -> int:
  """The number of parameters in `variables['params']`."""
  return int(sum(np.prod(p.shape)
                 for p in jax.tree.leaves(variables['params'])))


def forward_gflops(model, variables, spec: spec_lib.Spec) -> float:
  """Multiply-adds of one forward pass on one clip, / 1e9.

  XLA's cost analysis counts a multiply-add as 2 FLOPs; the paper's Table 2
  counts it as one, so this is XLA's count / 2.
  """
  clip = jax.ShapeDtypeStruct((1,) + spec.input_shape, jnp.float32)
  # Ops whose FLOPs the analysis counts.
  with attention.xla_attention(), cpu_kernels.xla_ops():
    lowered = jax.jit(lambda v, x: model.apply(v, x, train=False)).lower(
        variables, clip)
  return lowered.cost_analysis()['flops'] / 2 / 1e9


def summarize(config: ml_collections.ConfigDict) -> dict:
  """Prints the parameter overview and returns the summary figures."""
  spec = spec_lib.check_config(config, mode='model')
  model = models.create_model(spec)
  variables = abstract_variables(model, spec)
  print(parameter_overview.get_parameter_overview(variables['params'],
                                                  include_stats=False))
  return {
      'model': spec.model_name,
      'params': num_params(variables),
      'gflops': round(forward_gflops(model, variables, spec), 3),
      'tokens': spec.num_tokens,
      'attention': (spec.config.model.attention_config.type
                    if spec.model_name == 'vivit' else None),
  }


def print_summary(config: ml_collections.ConfigDict) -> None:
  """`summarize`, its figures as one JSON line last."""
  print(json.dumps(summarize(config)))
