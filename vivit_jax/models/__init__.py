"""The model families: `ViT` (images), `ViViT` (Models 1-4), `VTN`,
`VidTr`, the term project's `CNN3D`; `create_model(config)` builds the one a
config names."""

from typing import Optional

import flax.linen as nn
import jax.numpy as jnp
import ml_collections

from vivit_jax.models.cnn3d import CNN3D
from vivit_jax.models.vit import ViT
from vivit_jax.models.vivit import ViViT
from vivit_jax.models import vidtr
from vivit_jax.models import vtn
from vivit_jax import spec

MODEL_NAMES = ('vivit', 'vit', 'cnn3d', 'vtn', 'vidtr')


def create_model(config: ml_collections.ConfigDict,
                 axis_name: Optional[str] = None) -> nn.Module:
  """Checks `config` (see `validate_config`) and builds its model.

  Args:
    config: an experiment config, e.g. `configs/vivit_b.py`'s.
    axis_name: `pmap` axis for the 3D CNN's batch statistics.
  """
  spec.validate_config(config)
  model, name = config.model, config.get('model_name', 'vivit')
  num_classes = config.dataset_configs.num_classes
  dtype = jnp.dtype(config.get('model_dtype_str', 'float32'))
  if name == 'cnn3d':
    return CNN3D(num_classes, axis_name=axis_name, dtype=dtype)
  if name in ('vtn', 'vidtr'):
    return {'vtn': vtn, 'vidtr': vidtr}[name].create(config)
  common = dict(
      num_classes=num_classes, hidden_size=model.hidden_size,
      num_layers=model.num_layers, num_heads=model.num_heads,
      mlp_dim=model.mlp_dim, classifier=model.classifier,
      representation_size=model.get('representation_size'),
      dropout_rate=model.get('dropout_rate', 0.0),
      attention_dropout_rate=model.get('attention_dropout_rate', 0.0),
      stochastic_droplayer_rate=model.get('stochastic_droplayer_rate', 0.0),
      gelu_approximate=model.get('gelu_approximate', True),
      remat=model.get('remat', False),
      dtype=dtype)
  if name == 'vit':
    return ViT(patch_size=tuple(model.patches.size[:2]), **common)
  temporal = model.get('temporal_transformer', ml_collections.ConfigDict())
  return ViViT(
      patch_size=tuple(model.patches.size),
      attention_type=model.attention_config.type,
      attention_order=model.attention_config.get('attention_order',
                                                 'space_time'),
      temporal_encoding=model.temporal_encoding_config.method,
      n_sampled_frames=model.temporal_encoding_config.get(
          'n_sampled_frames', 0),
      temporal_num_layers=temporal.get('num_layers', 4),
      temporal_num_heads=temporal.get('num_heads', model.num_heads),
      temporal_mlp_dim=temporal.get('mlp_dim', model.mlp_dim),
      positional_embedding=model.get('positional_embedding', 'learned_1d'),
      **common)
