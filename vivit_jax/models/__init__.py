"""The model families: `ViT` (images), `ViViT` (Models 1-4), `VTN`,
`VidTr` (and C-VidTr) and the term project's `CNN3D`; `create_model(config)`
builds the one a config names.

All take channels-last inputs, clips (batch, T, H, W, C) or images
(batch, H, W, C), return float32 logits (batch, num_classes) and take
`train` to switch dropout, stochastic depth and batch statistics.
"""

from typing import Optional, TYPE_CHECKING, Union

import flax.linen as nn
import jax.numpy as jnp
import ml_collections

from vivit_jax.models.cnn3d import CNN3D
from vivit_jax.models.vit import ViT
from vivit_jax.models import vidtr
from vivit_jax.models import vtn
from vivit_jax.models.vivit import ViViT

if TYPE_CHECKING:
  from vivit_jax import spec  # pylint: disable=g-bad-import-order


def create_model(config: Union[ml_collections.ConfigDict, 'spec.Spec'],
                 axis_name: Optional[str] = None) -> nn.Module:
  """The model of a config (checked first) or of a checked `Spec`.

  Args:
    config: an experiment config, e.g. `configs/vivit_b.py`'s, or its Spec.
    axis_name: `pmap` axis for the batch statistics of the 3D CNN and of a
      ViViT's BatchNorm stem.
  Raises:
    spec.ConfigError: the config cannot build a model.
  """
  from vivit_jax import spec as spec_lib  # pylint: disable=g-import-not-at-top
  spec = (config if isinstance(config, spec_lib.Spec)
          else spec_lib.check_config(config, mode='model'))
  config, model = spec.config, spec.config.model
  dtype = jnp.dtype(config.model_dtype_str)
  if spec.model_name == 'cnn3d':
    return CNN3D(spec.num_classes, features=tuple(model.features),
                 axis_name=axis_name, dtype=dtype)
  if spec.model_name in ('vtn', 'vidtr'):
    return {'vtn': vtn, 'vidtr': vidtr}[spec.model_name].create(config)
  common = dict(
      num_classes=spec.num_classes, hidden_size=model.hidden_size,
      num_layers=model.num_layers, num_heads=model.num_heads,
      mlp_dim=model.mlp_dim, classifier=model.classifier,
      representation_size=model.representation_size,
      dropout_rate=model.dropout_rate,
      attention_dropout_rate=model.attention_dropout_rate,
      stochastic_droplayer_rate=model.stochastic_droplayer_rate,
      gelu_approximate=model.gelu_approximate, remat=model.remat, dtype=dtype)
  if spec.model_name == 'vit':
    return ViT(patch_size=tuple(model.patches.size[:2]), **common)
  temporal = model.temporal_transformer
  return ViViT(
      patch_size=tuple(model.patches.size),
      attention_type=model.attention_config.type,
      attention_order=model.attention_config.attention_order,
      stem_features=tuple(model.stem_features),
      stem_norm=model.stem_norm, axis_name=axis_name,
      temporal_encoding=model.temporal_encoding_config.method,
      n_sampled_frames=model.temporal_encoding_config.n_sampled_frames,
      temporal_num_layers=temporal.num_layers,
      temporal_num_heads=temporal.num_heads,
      temporal_mlp_dim=temporal.mlp_dim,
      positional_embedding=model.positional_embedding,
      **common)
