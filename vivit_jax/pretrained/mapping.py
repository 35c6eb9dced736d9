"""Initialising a model from a pretrained checkpoint (paper Section 3.4).

  config.init_from = config_builders.init_from('ViT-B_16.npz')
  variables, report = pretrained.load_pretrained(config, variables)
  logging.info('%s', report)

The checkpoint (read by `readers`) is an image ViT or a trained ViViT.
Its parameters map into every model:
  - a convolutional stem (a hybrid ViViT) is loaded from a run that has
    one, with its BatchNorm statistics, and otherwise left at
    initialisation;
  - the patch embedding E: a 2D kernel becomes a tubelet kernel by
    `adapt.inflate_kernel` ('central_frame', Eq. 9, or 'average_frame', Eq. 8) or
    is left at initialisation ('random'); RGB kernels are summed over the
    channels for 1-channel volumes and other patch sizes are reached by
    `adapt.resize_patch_kernel`;
  - positional embeddings are repeated over time (Section 3.4), or
    interpolated over time when a video checkpoint has another number of
    time steps, and resized over space when the token grids differ; the
    class token's position is kept for 'token' models and dropped for 'gap'
    ones;
  - Models 1 and 4 take the ViT's encoder; Model 2's spatial encoder takes
    it, and its temporal encoder takes the ViT's first layers too when
    `init_from.init_temporal_transformer` is set (else it stays at its
    initialisation); Model 3's spatial attention takes the ViT's attention,
    and its temporal attention is copied too when `init_temporal_transformer`
    is set, or else zeroed at the output, so that Eq. 5 is a residual;
  - the output layer is loaded when the class counts match;
  - VTN and VidTr map as `vtn_vidtr` describes.
Every parameter of the model is loaded, reshaped or deliberately left at
initialisation, and every array of the checkpoint is used or reported unused
(`plan.LoadReport`); a checkpoint that cannot map raises `CheckpointError` naming
the file and the parameters, before anything is returned.
"""

import functools
import math
import re
from typing import Collection, Optional, Sequence

import flax.linen as nn
import jax.numpy as jnp
import ml_collections
import numpy as np

from vivit_jax import spec as spec_lib
from vivit_jax.pretrained import adapt
from vivit_jax.pretrained import checkpoint as checkpoint_lib
from vivit_jax.pretrained import plan as plan_lib
from vivit_jax.pretrained import readers

KERNEL_INIT_METHODS = ('central_frame', 'average_frame', 'random')
POSITIONAL_EMBED_SIZE_CHANGES = ('tile', 'resize_tile')


def load_pretrained(config: ml_collections.ConfigDict, variables: dict
                    ) -> tuple[dict, plan_lib.LoadReport]:
  """Loads the checkpoint of `config.init_from` into `variables`.

  Args:
    config: the experiment config; `config.init_from` comes from
      `config_builders.init_from`.
    variables: the model's freshly initialised variables ({'params': ...}
      and, with a BatchNorm stem, {'batch_stats': ...}), whose values stay
      wherever the checkpoint has none.

  Returns:
    New variables with the same collections (the input is not modified)
    and the `LoadReport`.

  Raises:
    readers.CheckpointError: the checkpoint is missing, unreadable, or
      does not map into the model; the message names the file and the
      parameters.
    ValueError: `config.init_from` names an unknown choice.
  """
  init = config.init_from
  if config.get('model_name', 'vivit') == 'cnn3d':
    raise ValueError('config.init_from: the 3D CNN has no transformer to '
                     "initialise. Remove init_from or use model_name 'vit' or "
                     "'vivit'.")
  if not init.checkpoint_path:
    raise ValueError('config.init_from.checkpoint_path is not set.')
  _check_choice('config.init_from.kernel_init_method',
                init.kernel_init_method, KERNEL_INIT_METHODS)
  _check_choice('config.init_from.positional_embed_size_change',
                init.positional_embed_size_change,
                POSITIONAL_EMBED_SIZE_CHANGES)
  checkpoint = readers.read_checkpoint(init.checkpoint_path,
                                             init.checkpoint_format)
  target = checkpoint_lib.flatten_variables(variables)
  plan = plan_lib.Plan(checkpoint, target)
  name = config.get('model_name', 'vivit')
  if name in ('vtn', 'vidtr'):
    # It builds on this module's functions, so it is imported here.
    from vivit_jax.pretrained import vtn_vidtr  # pylint: disable=g-import-not-at-top
    {'vtn': vtn_vidtr.map_vtn, 'vidtr': vtn_vidtr.map_vidtr}[name](plan,
                                                                   config)
  else:
    map_stem(plan)
    map_embedding(plan, init.kernel_init_method)
    for encoder, grid in _token_grids(config).items():
      map_encoder(plan, encoder, grid, init)
    map_head(plan, init.restore_output_projection)
  report = plan.finish()
  report.notes = _notes(config, checkpoint)
  values = {name: jnp.asarray(plan.values.get(name, value), dtype=value.dtype)
            for name, value in target.items()}
  return checkpoint_lib.unflatten_variables(
      values, set(variables) - {'params'}), report


def _check_choice(field: str, value: str, choices: Sequence[str]) -> None:
  if value not in choices:
    raise ValueError(f'{field}: unknown value {value!r}. Use one of '
                     f'{choices}.')


def _token_grids(config: ml_collections.ConfigDict
                 ) -> dict[str, tuple[int, int, int]]:
  """The (n_t, n_h, n_w) token grid each encoder of the model sees."""
  grid = spec_lib.check_config(config, mode='model').token_grid
  if len(grid) == 2:  # A ViT.
    return {'Transformer': (1,) + grid}
  if config.model.attention_config.type == 'factorized_encoder':
    return {'SpatialTransformer': (1,) + grid[1:],
            'TemporalTransformer': (grid[0], 1, 1)}
  return {'Transformer': grid}


def map_stem(plan: plan_lib.Plan) -> None:
  """A convolutional stem: a run's own, with its BatchNorm statistics (its
  convolutions and norms do not depend on the input size), else its
  initialisation."""
  statistics = 'batch_stats/stem'
  if plan.has_target('stem') and plan.has_source('stem'):
    plan.load_tree('stem', 'stem')
    plan.load_tree(statistics, statistics)
  else:
    plan.keep('stem', 'the checkpoint has no convolutional stem')
    plan.keep(statistics, 'the checkpoint has no convolutional stem')


def map_embedding(plan: plan_lib.Plan, method: str) -> None:
  shape = tuple(plan.target['embedding/kernel'].shape)
  source = plan.source.get('embedding/kernel')
  if (plan.has_target('stem') and not plan.has_source('stem') and
      method != 'random'):
    plan.errors.append(
        "embedding/kernel: the model's convolutional stem replaces the pixels "
        "that the checkpoint's patch embedding reads; set "
        "config.init_from.kernel_init_method='random'")
    return
  if source is not None and source.ndim == 4 and len(shape) == 5 and (
      method == 'random'):
    why = "config.init_from.kernel_init_method='random'"
    plan.keep('embedding/kernel', why)
    plan.skip('embedding/kernel', why)
  else:
    plan.load('embedding/kernel', 'embedding/kernel',
              functools.partial(adapt.adapt_kernel, shape=shape, method=method))
  plan.load('embedding/bias', 'embedding/bias')


def _class_token(encoder: str) -> str:
  return 'cls' if encoder == 'Transformer' else f'cls_{encoder}'


def _source_encoder(plan: plan_lib.Plan, encoder: str, init_temporal: bool
                    ) -> Optional[str]:
  """The checkpoint's encoder that initialises the model's `encoder`."""
  if plan.has_source(encoder):
    return encoder
  if encoder == 'TemporalTransformer' and not init_temporal:
    return None
  return next(name for name in ('Transformer', 'SpatialTransformer')
              if plan.has_source(name))


def map_encoder(plan: plan_lib.Plan, encoder: str, grid: tuple[int, int, int],
                 init: ml_collections.ConfigDict) -> None:
  """Class token, positional embedding, blocks and final norm of `encoder`."""
  source = _source_encoder(plan, encoder, init.init_temporal_transformer)
  if source is None:
    why = ('config.init_from.init_temporal_transformer=False, and the '
           'checkpoint has no temporal encoder')
    plan.keep(encoder, why)
    plan.keep(_class_token(encoder), why)
    return
  temporal_from_spatial = encoder != source and encoder == 'TemporalTransformer'

  cls = _class_token(encoder)
  if not plan.has_target(cls):
    plan.skip(_class_token(source), "the model pools by 'gap'")
  elif _class_token(source) in plan.source:
    plan.load(cls, _class_token(source))
  else:
    plan.keep(cls, 'the checkpoint has no class token')

  if plan.has_target(f'{encoder}/posembed_input'):
    _map_positional_embedding(plan, encoder, source, grid, init)

  layers = num_layers(plan.target, encoder)
  source_layers = num_layers(plan.source, source)
  if layers > source_layers or (
      layers < source_layers and not temporal_from_spatial):
    plan.errors.append(f'{encoder}: {layers} layers in the model, '
                       f'{source_layers} in the checkpoint ({source})')
    return
  for layer in range(layers):
    map_block(plan, f'{encoder}/encoderblock_{layer}',
               f'{source}/encoderblock_{layer}',
               init.init_temporal_transformer)
  plan.load_tree(f'{encoder}/encoder_norm', f'{source}/encoder_norm')


def _map_positional_embedding(plan: plan_lib.Plan, encoder: str, source: str,
                              grid: tuple[int, int, int],
                              init: ml_collections.ConfigDict) -> None:
  name = f'{encoder}/posembed_input/pos_embedding'
  source_name = f'{source}/posembed_input/pos_embedding'
  if not init.restore_positional_embedding:
    why = 'config.init_from.restore_positional_embedding=False'
    plan.keep(name, why)
    plan.skip(source_name, why)
  elif source != encoder and encoder == 'TemporalTransformer':
    plan.keep(name, "the checkpoint's positions are spatial")
  elif source_name not in plan.source:
    plan.keep(name, 'the checkpoint has no positional embedding')
  else:
    plan.load(name, source_name, functools.partial(
        adapt.adapt_posemb,
        source_grid=plan.checkpoint.grid if source == 'Transformer' else None,
        source_is_image=(not plan.checkpoint.is_video or
                         source == 'SpatialTransformer'),
        source_cls=_class_token(source) in plan.source,
        initial=np.asarray(plan.target[name]), grid=grid,
        cls=plan.has_target(_class_token(encoder)),
        size_change=init.positional_embed_size_change))


def num_layers(names: Collection[str], encoder: str) -> int:
  layers = {re.match(rf'{encoder}/encoderblock_(\d+)/', name)
            for name in names}
  return len({match.group(1) for match in layers if match})


def map_block(plan: plan_lib.Plan, block: str, source_block: str,
               init_temporal: bool) -> None:
  """One encoder block; Model 3's from a standard block as in Section 3.4."""
  factorised = 'MultiHeadDotProductAttention_space'
  if plan.has_target(f'{block}/{factorised}') == plan.has_source(
      f'{source_block}/{factorised}'):
    plan.load_tree(block, source_block)
    return
  if plan.has_source(f'{source_block}/{factorised}'):
    plan.errors.append(f'{block}: a Model 3 block ({source_block}) cannot '
                       'initialise a standard block')
    return
  for ours, theirs in (
      ('LayerNorm_space', 'LayerNorm_0'),
      ('MultiHeadDotProductAttention_space', 'MultiHeadDotProductAttention_1'),
      ('LayerNorm_mlp', 'LayerNorm_2'), ('MlpBlock', 'MlpBlock_3')):
    plan.load_tree(f'{block}/{ours}', f'{source_block}/{theirs}')
  if init_temporal:
    plan.load_tree(f'{block}/LayerNorm_time', f'{source_block}/LayerNorm_0')
    plan.load_tree(f'{block}/MultiHeadDotProductAttention_time',
                   f'{source_block}/MultiHeadDotProductAttention_1')
    return
  # Zeroing the output projection W_O makes Eq. 5 a residual. The paper
  # zeroes the whole temporal MSA, but then V = 0 and W_O's gradient
  # (A V)^T g is zero too: only W_O's bias would ever train.
  plan.zero(f'{block}/MultiHeadDotProductAttention_time/out',
            'Eq. 5 is a residual at initialisation')
  plan.keep(f'{block}/MultiHeadDotProductAttention_time',
            'temporal attention, trained from its zero output')
  plan.keep(f'{block}/LayerNorm_time',
            'temporal attention, trained from its zero output')


def map_head(plan: plan_lib.Plan, restore: bool) -> None:
  """pre_logits and the output layer (head or output_projection)."""
  if plan.has_target('pre_logits'):
    if plan.has_source('pre_logits'):
      plan.load_tree('pre_logits', 'pre_logits')
    else:
      plan.keep('pre_logits', 'the checkpoint has no pre_logits layer')
  else:
    plan.skip('pre_logits', 'config.model.representation_size is None')

  head = 'head' if plan.has_target('head') else 'output_projection'
  source = 'head' if plan.has_source('head') else 'output_projection'
  if not plan.has_source(source):
    plan.keep(head, 'the checkpoint has no output layer')
    return
  classes = plan.target[f'{head}/bias'].shape[-1]
  source_classes = plan.source[f'{source}/bias'].shape[-1]
  why = ''
  if not restore:
    why = 'config.init_from.restore_output_projection=False'
  elif classes != source_classes:
    why = f'{source_classes} classes in the checkpoint, {classes} in the model'
  if why:
    plan.keep(head, why)
    plan.skip(source, why)
  else:
    plan.load_tree(head, source)


def _notes(config: ml_collections.ConfigDict,
           checkpoint: readers.Checkpoint) -> list[str]:
  """Architecture differences that change outputs but not shapes."""
  notes = []
  approximate = config.model.get('gelu_approximate', True)
  if checkpoint.gelu_approximate not in (None, approximate):
    name = {True: 'tanh', False: 'exact (erf)'}
    notes.append(
        f"the checkpoint's MLPs use the {name[checkpoint.gelu_approximate]} "
        f'GELU, the model the {name[approximate]} one; set '
        f'config.model.gelu_approximate={checkpoint.gelu_approximate} to '
        'compute what the checkpoint computed.')
  epsilon = checkpoint.layer_norm_epsilon
  if epsilon is not None and not math.isclose(epsilon, nn.LayerNorm.epsilon):
    notes.append(f"the checkpoint's LayerNorms use epsilon {epsilon:g}, the "
                 f"models {nn.LayerNorm.epsilon:g}: outputs differ slightly.")
  return notes

