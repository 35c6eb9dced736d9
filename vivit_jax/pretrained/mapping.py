"""Initialising a model from a pretrained checkpoint (paper Section 3.4).

  config.init_from = config_builders.init_from('ViT-B_16.npz')
  params, report = pretrained.load_pretrained(config, params)
  logging.info('%s', report)

The checkpoint (read by `checkpoint_io`) is an image ViT or a trained ViViT.
Its parameters map into every model:
  - the patch embedding E: a 2D kernel becomes a tubelet kernel by
    `inflate_kernel` ('central_frame', Eq. 9, or 'average_frame', Eq. 8) or
    is left at initialisation ('random'); RGB kernels are summed over the
    channels for 1-channel volumes and other patch sizes are reached by
    `resize_patch_kernel`;
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
(`LoadReport`); a checkpoint that cannot map raises `CheckpointError` naming
the file and the parameters, before anything is returned.
"""

import collections
import dataclasses
import functools
import math
import re
from typing import Collection, Optional, Sequence

from flax import traverse_util
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from vivit_jax import spec as spec_lib
from vivit_jax.pretrained import readers

KERNEL_INIT_METHODS = ('central_frame', 'average_frame', 'random')
POSITIONAL_EMBED_SIZE_CHANGES = ('tile', 'resize_tile')


class _Unmappable(Exception):
  """A checkpoint array that cannot take a parameter's shape."""


def inflate_kernel(kernel: jnp.ndarray, depth: int, method: str
                   ) -> jnp.ndarray:
  """A 2D patch kernel E_image (h, w, C, d) as a tubelet kernel (t, h, w, C, d).

  'central_frame' (Eq. 9): E_image at the central time step floor(t / 2),
  zeros elsewhere, so the tubelet embeds that one frame like uniform frame
  sampling. 'average_frame' (Eq. 8, filter inflation): E_image / t at every
  time step, so it embeds the mean frame. On a clip whose frames are all
  equal, both give E_image's embedding of the frame.
  """
  if method == 'central_frame':
    return jnp.zeros((depth,) + kernel.shape, kernel.dtype).at[
        depth // 2].set(kernel)
  if method == 'average_frame':
    return jnp.repeat(kernel[None] / depth, depth, axis=0)
  raise ValueError(f'Cannot inflate a kernel with method {method!r}: use '
                   "'central_frame' or 'average_frame'.")


def resize_patch_kernel(kernel: np.ndarray, patch: Sequence[int]
                        ) -> np.ndarray:
  """Resizes a patch kernel (..., h, w, C, d) to (..., h', w', C, d).

  FlexiViT's pseudo-inverse resize (Beyer et al., CVPR 2023, Section 3.4).
  Let B be the linear map that resizes an h x w patch to h' x w' (bilinear,
  antialiased when shrinking, i.e. what a lower resolution does to the
  image). The new kernel w' = pinv(B^T) w minimises |B^T w' - w|: the token
  <B x, w'> of the resized patch matches the pretrained token <x, w> for
  every patch x when enlarging, and when shrinking (16 x 16 -> 4 x 4 for
  28-voxel volumes) exactly for the patches B^T z that B does not blur and
  in the least-squares sense over all patches. Resizing the kernel like an
  image instead keeps no token: shrinking 16 x 16 -> 4 x 4 divides the
  tokens of flat patches by 16.
  """
  old = kernel.shape[-4:-2]
  basis = np.eye(math.prod(old), dtype=np.float32).reshape(-1, *old)
  resize = jax.vmap(lambda x: jax.image.resize(x, tuple(patch), 'bilinear'))
  transposed = np.asarray(resize(basis), np.float64).reshape(len(basis), -1)
  new_from_old = np.linalg.pinv(transposed)  # (h' w', h w).
  flat = kernel.reshape(kernel.shape[:-4] + (len(basis),) + kernel.shape[-2:])
  resized = np.einsum('no,...ocd->...ncd', new_from_old, flat)
  return resized.reshape(kernel.shape[:-4] + tuple(patch) +
                         kernel.shape[-2:]).astype(kernel.dtype)


@dataclasses.dataclass
class LoadReport:
  """What `load_pretrained` did with each parameter and checkpoint array.

  str() gives the short summary logged at load time: layers are merged
  (encoderblock_{0..11}) and modules named when all their arrays share a fate.

  Attributes:
    checkpoint: the file or folder read, and its kind.
    parameters: the names of all the model's parameters.
    arrays: the names of all the checkpoint's arrays.
    loaded: parameters copied unchanged.
    reshaped: {parameter: source array, shapes and how it was reshaped}.
    zeroed: {parameter: why it was set to zero}.
    kept: {parameter: why it keeps the model's initialisation}.
    unused: {checkpoint array: why no parameter takes it}.
    notes: differences between the checkpoint's architecture and the config
      that change outputs without changing shapes (GELU, LayerNorm epsilon).
  """
  checkpoint: str
  parameters: Collection[str]
  arrays: Collection[str]
  loaded: list[str] = dataclasses.field(default_factory=list)
  reshaped: dict[str, str] = dataclasses.field(default_factory=dict)
  zeroed: dict[str, str] = dataclasses.field(default_factory=dict)
  kept: dict[str, str] = dataclasses.field(default_factory=dict)
  unused: dict[str, str] = dataclasses.field(default_factory=dict)
  notes: list[str] = dataclasses.field(default_factory=list)

  def __str__(self) -> str:
    lines = [f'Initialised from {self.checkpoint}:',
             f'  loaded ({len(self.loaded)} arrays): '
             f'{_compact(self.loaded, self.parameters)}']
    if self.reshaped:
      lines.append('  reshaped:')
      lines += [f'    {name}: {how}' for name, how in self.reshaped.items()]
    for title, entries, names in (
        ('zeroed', self.zeroed, self.parameters),
        ('left at initialisation', self.kept, self.parameters),
        ('not used from the checkpoint', self.unused, self.arrays)):
      if entries:
        lines.append(f'  {title}:')
        lines += [f'    {_compact(group, names)}: {why}'
                  for why, group in _group_by_value(entries).items()]
    lines += [f'  note: {note}' for note in self.notes]
    return '\n'.join(lines)


def load_pretrained(config: ml_collections.ConfigDict, params
                    ) -> tuple[dict, LoadReport]:
  """Loads the checkpoint of `config.init_from` into `params`.

  Args:
    config: the experiment config; `config.init_from` comes from
      `configs/common.py:init_from`.
    params: the model's freshly initialised parameters (`variables['params']`),
      whose values stay wherever the checkpoint has none.

  Returns:
    New parameters (the input is not modified) and the `LoadReport`.

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
  target = {'/'.join(name): value for name, value in
            traverse_util.flatten_dict(params).items()}
  plan = _Plan(checkpoint, target)
  name = config.get('model_name', 'vivit')
  if name in ('vtn', 'vidtr'):
    # It builds on this module's functions, so it is imported here.
    from vivit_jax.pretrained import vtn_vidtr  # pylint: disable=g-import-not-at-top
    {'vtn': vtn_vidtr.map_vtn, 'vidtr': vtn_vidtr.map_vidtr}[name](plan,
                                                                   config)
  else:
    _map_embedding(plan, init.kernel_init_method)
    for encoder, grid in _token_grids(config).items():
      _map_encoder(plan, encoder, grid, init)
    _map_head(plan, init.restore_output_projection)
  report = plan.finish()
  report.notes = _notes(config, checkpoint)
  values = {tuple(name.split('/')): jnp.asarray(
      plan.values.get(name, value), dtype=value.dtype)
            for name, value in target.items()}
  return traverse_util.unflatten_dict(values), report


def _check_choice(field: str, value: str, choices: Sequence[str]) -> None:
  if value not in choices:
    raise ValueError(f'{field}: unknown value {value!r}. Use one of '
                     f'{choices}.')


class _Plan:
  """The value of every parameter, where it comes from, and the problems.

  Parameter and array names are '/'-joined paths; a `prefix` argument names
  a parameter or all those below it.
  """

  def __init__(self, checkpoint: readers.Checkpoint,
               target: dict[str, jnp.ndarray]):
    self.checkpoint = checkpoint
    self.source = checkpoint.params
    self.target = target
    self.values = {}
    self.report = LoadReport(
        f'{checkpoint.path} ({checkpoint.format}, '
        f'{"a video" if checkpoint.is_video else "an image"} model)',
        parameters=tuple(target), arrays=tuple(self.source) + tuple(
            checkpoint.unused))
    self.used = set()
    self.errors = []

  def has_target(self, prefix: str) -> bool:
    return bool(_below(prefix, self.target))

  def has_source(self, prefix: str) -> bool:
    return bool(_below(prefix, self.source))

  def load(self, name: str, source_name: str, adapt=None) -> None:
    """Sets `name` from `source_name`, through `adapt(array) -> (array,
    how)` if given."""
    if source_name not in self.source:
      self.errors.append(f'{name}: the checkpoint has no {source_name}')
      return
    self.used.add(source_name)
    value = original = self.source[source_name]
    how = ''
    if adapt:
      try:
        value, how = adapt(value)
      except _Unmappable as e:
        self.errors.append(f'{name}: {source_name} {original.shape}: {e}')
        return
    shape = tuple(self.target[name].shape)
    if value.shape != shape:
      self.errors.append(f'{name}: {shape} in the model, {original.shape} in '
                         f'the checkpoint ({source_name})')
      return
    self.values[name] = np.asarray(value)
    if how:
      origin = '' if source_name == name else f'{source_name} '
      self.report.reshaped[name] = (
          f'{origin}{original.shape} -> {shape}: {how}')
    else:
      self.report.loaded.append(name)

  def load_tree(self, prefix: str, source_prefix: str) -> None:
    for name in _below(prefix, self.target):
      self.load(name, source_prefix + name[len(prefix):])

  def zero(self, prefix: str, why: str) -> None:
    for name in _below(prefix, self.target):
      self.values[name] = np.zeros(self.target[name].shape)
      self.report.zeroed[name] = why

  def keep(self, prefix: str, why: str) -> None:
    """Leaves the parameters under `prefix` not yet decided at their
    initialisation."""
    for name in _below(prefix, self.target):
      if name not in self.values:
        self.report.kept.setdefault(name, why)

  def skip(self, source_prefix: str, why: str) -> None:
    for name in _below(source_prefix, self.source):
      self.report.unused.setdefault(name, why)

  def finish(self) -> LoadReport:
    """The report; raises CheckpointError if any parameter failed to map."""
    if self.errors:
      raise readers.CheckpointError(self._error_message())
    self.keep('', 'not in the checkpoint')
    self.report.unused.update(self.checkpoint.unused)
    for name in self.source:
      if name not in self.used:
        self.report.unused.setdefault(name, 'no counterpart in the model')
    return self.report

  def _error_message(self, shown: int = 12) -> str:
    lines = [f'{self.checkpoint.path} ({self.checkpoint.format}) cannot '
             f'initialise the model ({len(self.errors)} problems); nothing '
             'was loaded.']
    width = self.source.get('embedding/bias')
    if width is not None and width.shape != self.target['embedding/bias'].shape:
      lines.append(f"  The checkpoint's width is {width.shape[-1]} "
                   '(embedding/bias), config.model.hidden_size is '
                   f"{self.target['embedding/bias'].shape[-1]}.")
    lines += [f'  {error}' for error in self.errors[:shown]]
    if len(self.errors) > shown:
      lines.append(f'  ... and {len(self.errors) - shown} more.')
    return '\n'.join(lines)


def _below(prefix: str, names: Collection[str]) -> list[str]:
  """The names equal to `prefix` or under it ('' is the root)."""
  if not prefix:
    return list(names)
  return [name for name in names
          if name == prefix or name.startswith(prefix + '/')]


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


def _map_embedding(plan: _Plan, method: str) -> None:
  shape = tuple(plan.target['embedding/kernel'].shape)
  source = plan.source.get('embedding/kernel')
  if source is not None and source.ndim == 4 and len(shape) == 5 and (
      method == 'random'):
    why = "config.init_from.kernel_init_method='random'"
    plan.keep('embedding/kernel', why)
    plan.skip('embedding/kernel', why)
  else:
    plan.load('embedding/kernel', 'embedding/kernel',
              functools.partial(_adapt_kernel, shape=shape, method=method))
  plan.load('embedding/bias', 'embedding/bias')


def _adapt_kernel(kernel: np.ndarray, shape: tuple[int, ...], method: str
                  ) -> tuple[np.ndarray, str]:
  """A checkpoint's patch kernel in the model's `shape`, and how."""
  steps = []
  channels = shape[-2]
  if kernel.shape[-2] != channels:
    if channels != 1:
      raise _Unmappable(f'{kernel.shape[-2]} input channels in the '
                        f'checkpoint, {channels} in the model; only RGB -> '
                        '1 channel maps')
    steps.append(f'summed over its {kernel.shape[-2]} input channels')
    kernel = kernel.sum(axis=-2, keepdims=True)
  if kernel.shape[-4:-2] != shape[-4:-2]:
    steps.append('patch resized from {}x{} to {}x{} (pseudo-inverse)'.format(
        *kernel.shape[-4:-2], *shape[-4:-2]))
    kernel = resize_patch_kernel(kernel, shape[-4:-2])
  if kernel.ndim == 4 and len(shape) == 5:
    steps.append({'central_frame': 'central frame (Eq. 9)',
                  'average_frame': 'averaged over frames (Eq. 8)'}[method])
    kernel = np.asarray(inflate_kernel(kernel, shape[0], method))
  elif kernel.ndim != len(shape):
    raise _Unmappable('a tubelet kernel cannot initialise a 2D patch '
                      'embedding')
  return kernel, '; '.join(steps)


def _class_token(encoder: str) -> str:
  return 'cls' if encoder == 'Transformer' else f'cls_{encoder}'


def _source_encoder(plan: _Plan, encoder: str, init_temporal: bool
                    ) -> Optional[str]:
  """The checkpoint's encoder that initialises the model's `encoder`."""
  if plan.has_source(encoder):
    return encoder
  if encoder == 'TemporalTransformer' and not init_temporal:
    return None
  return next(name for name in ('Transformer', 'SpatialTransformer')
              if plan.has_source(name))


def _map_encoder(plan: _Plan, encoder: str, grid: tuple[int, int, int],
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

  layers = _num_layers(plan.target, encoder)
  source_layers = _num_layers(plan.source, source)
  if layers > source_layers or (
      layers < source_layers and not temporal_from_spatial):
    plan.errors.append(f'{encoder}: {layers} layers in the model, '
                       f'{source_layers} in the checkpoint ({source})')
    return
  for layer in range(layers):
    _map_block(plan, f'{encoder}/encoderblock_{layer}',
               f'{source}/encoderblock_{layer}',
               init.init_temporal_transformer)
  plan.load_tree(f'{encoder}/encoder_norm', f'{source}/encoder_norm')


def _map_positional_embedding(plan: _Plan, encoder: str, source: str,
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
        _adapt_posemb,
        source_grid=plan.checkpoint.grid if source == 'Transformer' else None,
        source_is_image=(not plan.checkpoint.is_video or
                         source == 'SpatialTransformer'),
        source_cls=_class_token(source) in plan.source,
        initial=np.asarray(plan.target[name]), grid=grid,
        cls=plan.has_target(_class_token(encoder)),
        size_change=init.positional_embed_size_change))


def _num_layers(names: Collection[str], encoder: str) -> int:
  layers = {re.match(rf'{encoder}/encoderblock_(\d+)/', name)
            for name in names}
  return len({match.group(1) for match in layers if match})


def _adapt_posemb(posemb: np.ndarray, *,
                  source_grid: Optional[tuple[int, int, int]],
                  source_is_image: bool, source_cls: bool,
                  initial: np.ndarray, grid: tuple[int, int, int], cls: bool,
                  size_change: str) -> tuple[np.ndarray, str]:
  """A checkpoint's positional embedding (1, [1 +] N, d) on the model's
  token `grid` (n_t, n_h, n_w), with a class-token row if `cls`, and how.

  `source_grid` is the checkpoint's grid if its file records it; `initial`
  is the model's embedding, whose class-token row stays if the checkpoint
  has none.

  Image embeddings are repeated over time (Section 3.4); spatial grids that
  differ are resized bilinearly, as in ViT's and Scenic's fine-tuning at
  other resolutions; video embeddings with another number of time steps are
  interpolated over time by `interpolate_over_time`.
  """
  tokens = posemb[0, 1:] if source_cls else posemb[0]
  width = tokens.shape[-1]
  source_grid = source_grid or _infer_grid(len(tokens), grid, source_is_image)
  if source_grid is None or math.prod(source_grid) != len(tokens):
    raise _Unmappable(
        f'its {len(tokens)} positions are not on a token grid the file '
        f'records or the model has ({grid}); set '
        'config.init_from.restore_positional_embedding=False')
  (t_source, *space_source), (t, *space) = source_grid, grid
  positions = tokens.reshape(*source_grid, width)
  steps = []
  if space_source != space:
    if size_change == 'tile':
      raise _Unmappable(
          'its {}x{} grid is not the model\'s {}x{}; set '
          "config.init_from.positional_embed_size_change='resize_tile'".format(
              *space_source, *space))
    positions = np.asarray(jax.image.resize(
        positions, (t_source, *space, width), 'bilinear'))
    steps.append('resized from {}x{} to {}x{} (bilinear)'.format(
        *space_source, *space))
  if t_source != t:
    positions = interpolate_over_time(positions, t)
    steps.append(f'repeated over {t} time steps' if t_source == 1 else
                 f'interpolated linearly from {t_source} to {t} time steps')
  rows = [positions.reshape(1, -1, width)]
  if cls and source_cls:
    rows.insert(0, posemb[:, :1])
  elif cls:
    rows.insert(0, initial[:, :1])
    steps.append('class-token position kept (the checkpoint has none)')
  elif source_cls:
    steps.append('class-token position dropped')
  return np.concatenate(rows, axis=1), '; '.join(steps)


def interpolate_over_time(positions: np.ndarray, steps: int) -> np.ndarray:
  """Positional embeddings (n_t, ..., d) on `steps` time steps, linearly
  interpolated at each spatial position, end points kept.

  This is what Scenic does to Model 2's temporal embedding when the number
  of frames changes (`interpolate_1d_positional_embeddings` in
  scenic/projects/vivit/model_utils.py: scipy.ndimage.zoom with order 1,
  whose grid puts step i at i (n_t - 1) / (steps - 1) of the checkpoint's);
  Scenic has no temporal resize for the other models. One time step is
  repeated.
  """
  source = np.linspace(0, len(positions) - 1, steps)
  low = np.floor(source).astype(int)
  high = np.minimum(low + 1, len(positions) - 1)
  weight = (source - low).reshape((-1,) + (1,) * (positions.ndim - 1))
  values = positions.astype(np.float64)
  return ((1 - weight) * values[low] + weight * values[high]).astype(
      positions.dtype)


def _infer_grid(tokens: int, grid: tuple[int, int, int], image: bool
                ) -> Optional[tuple[int, int, int]]:
  """The grid of `tokens` positions when the file does not record it: one
  frame of the model's grid, or a square, for images; for videos, the
  model's frames, as many as the positions fill (so a video checkpoint
  with another frame size and time steps is misread unless its file
  records its grid)."""
  t, h, w = grid
  if not image:
    return (tokens // (h * w), h, w) if tokens % (h * w) == 0 else None
  if tokens == h * w:
    return (1, h, w)
  side = math.isqrt(tokens)
  return (1, side, side) if side * side == tokens else None


def _map_block(plan: _Plan, block: str, source_block: str,
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


def _map_head(plan: _Plan, restore: bool) -> None:
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


def _group_by_value(entries: dict[str, str]) -> dict[str, list[str]]:
  groups = collections.defaultdict(list)
  for name, value in entries.items():
    groups[value].append(name)
  return groups


def _compact(names: Collection[str], universe: Collection[str]) -> str:
  """`names` as the fewest subtrees of `universe` they fill, with layers
  merged: 'Transformer/encoderblock_{0..11}/{LayerNorm_0,MlpBlock_3}'."""
  names = set(names)

  @functools.cache
  def filled(prefix):
    return all(name in names for name in _below(prefix, universe))

  roots = set()
  for name in names:
    parts = name.split('/')
    roots.add(next('/'.join(parts[:i]) for i in range(1, len(parts) + 1)
                   if filled('/'.join(parts[:i]))))
  layers = collections.defaultdict(set)
  for root in roots:
    match = re.search(r'encoderblock_(\d+)', root)
    pattern = re.sub(r'encoderblock_\d+', 'encoderblock_#', root)
    layers[pattern].add(int(match.group(1)) if match else None)
  siblings = collections.defaultdict(list)
  for pattern, indices in layers.items():
    merged = pattern.replace('#', _index_range(indices))
    parent, _, leaf = merged.rpartition('/')
    siblings[parent].append(leaf)
  groups = [f'{parent}/{{{",".join(sorted(leaves))}}}' if len(leaves) > 1
            else f'{parent}/{leaves[0]}' for parent, leaves in siblings.items()
            if parent]
  return ', '.join(sorted(groups + siblings.get('', [])))


def _index_range(indices: set) -> str:
  if indices == {None}:
    return ''
  low, high = min(indices), max(indices)
  if len(indices) == 1:
    return str(low)
  if len(indices) == high - low + 1:
    return f'{{{low}..{high}}}'
  return '{' + ','.join(map(str, sorted(indices))) + '}'
