"""What every checkpoint reader returns, the error they raise, the block
names they share, and the flat names of a model's variables."""

import dataclasses
from typing import Any, Collection, Optional

from flax import traverse_util
import numpy as np

# Current Flax (big_vision, Scenic) numbers an encoder block's modules per
# type in call order; old Flax (vision_transformer, old Scenic) and this
# project across the block. Old names never use these keys, so renaming by
# this table leaves them unchanged.
CALL_ORDER_BLOCK_MODULES = {
    'MultiHeadDotProductAttention_0': 'MultiHeadDotProductAttention_1',
    'LayerNorm_1': 'LayerNorm_2',
    'MlpBlock_0': 'MlpBlock_3',
}

class CheckpointError(ValueError):
  """A checkpoint that cannot be read, or cannot initialise the model."""


@dataclasses.dataclass(frozen=True)
class Checkpoint:
  """Parameters read from a checkpoint, and what the file says about them.

  Attributes:
    path: the file or folder read.
    format: 'vit_npz', 'huggingface', 'orbax' or 'scenic'.
    params: {'/'-joined name: array}, named as in `models.ViT` (image
      checkpoints) or `models.ViViT` (video checkpoints); a vivit-jax run's
      BatchNorm statistics too, as `flatten_variables` names them.
    is_video: whether `params` are a ViViT's.
    grid: (n_t, n_h, n_w), the token grid of the positional embedding, when
      the file records it; None otherwise.
    gelu_approximate: whether the MLPs use the tanh GELU; None if unknown.
    layer_norm_epsilon: the LayerNorms' epsilon; None if unknown.
    unused: {name in the file: why `params` has no place for it}.
  """
  path: str
  format: str
  params: dict[str, np.ndarray]
  is_video: bool
  grid: Optional[tuple[int, int, int]] = None
  gelu_approximate: Optional[bool] = None
  layer_norm_epsilon: Optional[float] = None
  unused: dict[str, str] = dataclasses.field(default_factory=dict)


def flatten_variables(variables: dict[str, Any]) -> dict[str, Any]:
  """{'/'-joined name: array} of a model's variables: its parameters by
  their own names ('stem/Conv_0/kernel'), the variables of its other
  collections under the collection's name ('batch_stats/stem/...')."""
  return {'/'.join(path[1:] if path[0] == 'params' else path): value
          for path, value in traverse_util.flatten_dict(variables).items()}


def unflatten_variables(flat: dict[str, Any],
                        collections: Collection[str]) -> dict[str, Any]:
  """The inverse of `flatten_variables`, for a model whose collections
  other than 'params' are `collections`."""
  nested = {}
  for name, value in flat.items():
    path = tuple(name.split('/'))
    if path[0] not in collections:
      path = ('params',) + path
    nested[path] = value
  return traverse_util.unflatten_dict(nested)
