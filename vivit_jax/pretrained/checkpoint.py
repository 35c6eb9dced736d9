"""What every checkpoint reader returns, the error they raise, and the
block names they share."""

import dataclasses
from typing import Optional

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
      checkpoints) or `models.ViViT` (video checkpoints).
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
