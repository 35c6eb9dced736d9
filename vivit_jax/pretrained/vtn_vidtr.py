"""Initialising VTN and VidTr from an image ViT checkpoint, with
`mapping`'s functions and `plan.Plan`.

VTN (Neimark et al., Section 4.1): the backbone takes the whole ViT but its
head (and pre_logits): patch embedding (channels summed and patch resized
as for ViViT), class token, positional embedding (resized if the grids
differ), blocks and final norm. The Longformer and the MLP head keep their
initialisation, as the paper's random N(0, 0.02) ones.

VidTr (Zhang et al., Section 3.3): the 2D patch embedding; the class token,
at every class-token position of the grid; the ViT's positional embedding
(class-token position first) repeated over the T + 1 rows of the token
grid; in each layer both the temporal and the spatial attention (and their
LayerNorms) from the ViT's attention, the MLP from its MLP; the final norm;
the output layer when the class counts match. C-VidTr's convolutions keep
their initialisation, an average.
"""

import functools

import ml_collections
import numpy as np

from vivit_jax.pretrained import adapt
from vivit_jax.pretrained import mapping
from vivit_jax.pretrained import plan as plan_lib

_FROM_SCRATCH = 'not in an image ViT: random, as the paper (Section 4.1)'


def _spatial_grid(config: ml_collections.ConfigDict) -> tuple[int, int, int]:
  """(1, n_h, n_w): the token grid of one frame."""
  fh, fw = config.model.patches.size[:2]
  size = config.dataset_configs.crop_size
  return (1, size // fh, size // fw)


def _needs_image_checkpoint(plan: plan_lib.Plan) -> bool:
  if plan.checkpoint.is_video:
    plan.errors.append('VTN and VidTr initialise from image ViTs, and this '
                       'is a video checkpoint')
  return not plan.checkpoint.is_video


def _merge(plan: plan_lib.Plan, sub: plan_lib.Plan, prefix: str) -> None:
  """Moves what `sub` (a plan for the parameters under `prefix`, named
  without it) decided into `plan`."""
  plan.values.update({prefix + name: v for name, v in sub.values.items()})
  plan.report.loaded += [prefix + name for name in sub.report.loaded]
  for field in ('reshaped', 'zeroed', 'kept'):
    getattr(plan.report, field).update({
        prefix + name: why for name, why in getattr(sub.report,
                                                    field).items()})
  plan.report.unused.update(sub.report.unused)
  plan.used |= sub.used
  plan.errors += [prefix + error for error in sub.errors]


def map_vtn(plan: plan_lib.Plan, config: ml_collections.ConfigDict) -> None:
  """The ViT into VTN's `Backbone`; see the module doc."""
  if not _needs_image_checkpoint(plan):
    return
  init, prefix = config.init_from, 'Backbone/'
  backbone = plan_lib.Plan(plan.checkpoint, {
      name[len(prefix):]: value for name, value in plan.target.items()
      if name.startswith(prefix)})
  mapping.map_embedding(backbone, init.kernel_init_method)
  mapping.map_encoder(backbone, 'Transformer', _spatial_grid(config), init)
  backbone.skip('pre_logits', "VTN's frame feature is the [CLS] output")
  backbone.skip('head', 'VTN classifies with its MLP head')
  _merge(plan, backbone, prefix)
  for module in ('cls_TemporalTransformer', 'TemporalTransformer',
                 'MlpHead'):
    plan.keep(module, _FROM_SCRATCH)


def _repeated_over_rows(adapt, rows: int):
  """`adapt`, whose (1, 1 + S, d) result is then repeated over `rows` rows:
  (1, rows, 1 + S, d)."""

  def repeated(posemb):
    positions, how = adapt(posemb)
    steps = [how] if how else []
    steps.append(f'repeated over the {rows} rows (T + 1) of the token grid')
    return np.repeat(positions[:, None], rows, axis=1), '; '.join(steps)

  return repeated


def map_vidtr(plan: plan_lib.Plan, config: ml_collections.ConfigDict
              ) -> None:
  """The ViT into VidTr; see the module doc."""
  if not _needs_image_checkpoint(plan):
    return
  init = config.init_from
  mapping.map_embedding(plan, init.kernel_init_method)
  if 'cls' in plan.source:
    plan.load('cls', 'cls')
  else:
    plan.keep('cls', 'the checkpoint has no class token')

  name = 'Transformer/posembed_input/pos_embedding'
  source_name = 'Transformer/posembed_input/pos_embedding'
  if not init.restore_positional_embedding:
    why = 'config.init_from.restore_positional_embedding=False'
    plan.keep(name, why)
    plan.skip(source_name, why)
  elif source_name not in plan.source:
    plan.keep(name, 'the checkpoint has no positional embedding')
  else:
    initial = np.asarray(plan.target[name])
    plan.load(name, source_name, _repeated_over_rows(functools.partial(
        adapt.adapt_posemb, source_grid=plan.checkpoint.grid,
        source_is_image=True, source_cls='cls' in plan.source,
        initial=initial[:, 0], grid=_spatial_grid(config), cls=True,
        size_change=init.positional_embed_size_change), initial.shape[1]))

  layers = mapping.num_layers(plan.target, 'Transformer')
  source_layers = mapping.num_layers(plan.source, 'Transformer')
  if layers != source_layers:
    plan.errors.append(f'Transformer: {layers} layers in the model, '
                       f'{source_layers} in the checkpoint')
    return
  for layer in range(layers):
    block = f'Transformer/encoderblock_{layer}'
    mapping.map_block(plan, block, block, init_temporal=True)
    plan.keep(f'{block}/TemporalPool',
              "C-VidTr's temporal convolution, an average at initialisation")
  plan.load_tree('Transformer/encoder_norm', 'Transformer/encoder_norm')
  mapping.map_head(plan, init.restore_output_projection)
