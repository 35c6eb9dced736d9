"""Reading Scenic checkpoints: the `checkpoint_<step>` files (Flax msgpack)
that `flax.training.checkpoints.save_checkpoint` writes of a Scenic train
state, for ViViT Models 1-4 (scenic/projects/vivit) and ViT
(scenic/projects/baselines).

Scenic's parameter names are this project's, except in encoder blocks:
current Flax numbers a block's modules per type in call order (LayerNorm_0,
MultiHeadDotProductAttention_0, LayerNorm_1, MlpBlock_0), old Flax and this
project across the block (LayerNorm_0, MultiHeadDotProductAttention_1,
LayerNorm_2, MlpBlock_3). Model 3's blocks (`*_space`, `*_time`,
`LayerNorm_mlp`, `MlpBlock`) and Model 2's `SpatialTransformer`,
`TemporalTransformer` and `cls_*` tokens are named as here.
"""

import os
import re
from typing import Optional

from flax import serialization
from flax import traverse_util
import msgpack
import numpy as np

from vivit_jax.pretrained.checkpoint import CALL_ORDER_BLOCK_MODULES
from vivit_jax.pretrained.checkpoint import Checkpoint
from vivit_jax.pretrained.checkpoint import CheckpointError

_CHECKPOINT_FILE = re.compile(r'checkpoint_(\d+)')


def is_checkpoint_file(path: str) -> bool:
  """Whether `path` is named as Flax names checkpoints, checkpoint_<step>."""
  return bool(_CHECKPOINT_FILE.fullmatch(os.path.basename(path)))


def latest_checkpoint(folder: str) -> Optional[str]:
  """The checkpoint_<step> file of `folder` with the highest step, or None."""
  steps = {int(match.group(1)): name for name in os.listdir(folder)
           if (match := _CHECKPOINT_FILE.fullmatch(name)) and
           os.path.isfile(os.path.join(folder, name))}
  return os.path.join(folder, steps[max(steps)]) if steps else None


def read_scenic(path: str) -> Checkpoint:
  """A Scenic checkpoint file, or the latest checkpoint_<step> in a folder.

  The parameters are the train state's `params` (Scenic's TrainState) or
  `optimizer/target` (older ones, with a flax.optim optimizer); everything
  else in it (optimiser state, step, rng) is reported unused. Scenic's ViT
  names its head output_projection, which becomes `models.ViT`'s head.
  Scenic's MLPs use the tanh GELU and Flax's LayerNorm epsilon, 1e-6.

  A video checkpoint is one with a tubelet kernel or Model 2's or 3's
  modules. Models 1 and 4 with uniform frame sampling have a 2D kernel, as
  an image ViT, and read as one: their positional embeddings, of n_t
  frames, then do not map.
  """
  file = latest_checkpoint(path) if os.path.isdir(path) else path
  if file is None:
    raise CheckpointError(f'{path} holds no checkpoint_<step> file.')
  try:
    with open(file, 'rb') as f:
      state = serialization.msgpack_restore(f.read())
  except (OSError, ValueError, msgpack.UnpackException) as e:
    raise CheckpointError(f'{file} is not a Flax msgpack checkpoint: '
                          f'{type(e).__name__}: {e}') from e
  if not isinstance(state, dict):
    raise CheckpointError(f'{file} holds a {type(state).__name__}, not a '
                          'Flax train state.')
  if isinstance(state.get('params'), dict) and state['params']:
    params, where = state['params'], ('params',)
  elif isinstance(state.get('optimizer'), dict) and isinstance(
      state['optimizer'].get('target'), dict):
    params, where = state['optimizer']['target'], ('optimizer', 'target')
  else:
    raise CheckpointError(
        f'{file} holds no parameters: a Scenic train state has params or '
        f'optimizer/target, this one {sorted(state)[:8]}.')

  params = {'/'.join(_our_name(name)): np.asarray(value) for name, value in
            traverse_util.flatten_dict(params).items()}
  if 'embedding/kernel' not in params:
    raise CheckpointError(
        f'{file} is not a ViT or ViViT checkpoint: its {"/".join(where)} have '
        f'no embedding/kernel (they start {sorted(params)[:4]}).')
  is_video = (params['embedding/kernel'].ndim == 5 or
              any(name.startswith('SpatialTransformer/') or
                  '/MultiHeadDotProductAttention_time/' in name
                  for name in params))
  if not is_video:
    params = {re.sub('^output_projection/', 'head/', name): value
              for name, value in params.items()}
  unused = {'/'.join(name): 'training state, not a parameter'
            for name in traverse_util.flatten_dict(state)
            if name[:len(where)] != where}
  return Checkpoint(file, 'scenic', params, is_video=is_video,
                    gelu_approximate=True, layer_norm_epsilon=1e-6,
                    unused=unused)


def _our_name(name: tuple[str, ...]) -> tuple[str, ...]:
  """A parameter's path, with block modules renamed (see the module doc)."""
  return tuple(
      CALL_ORDER_BLOCK_MODULES.get(part, part)
      if i and name[i - 1].startswith('encoderblock_') else part
      for i, part in enumerate(name))
