"""Arrays of a checkpoint reshaped for a model: patch kernels inflated into
tubelets (Eqs. 8-9) and resized (FlexiViT), positional embeddings resized
over space, repeated or interpolated over time."""

import math
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from vivit_jax.pretrained.plan import Unmappable


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


def adapt_kernel(kernel: np.ndarray, shape: tuple[int, ...], method: str
                  ) -> tuple[np.ndarray, str]:
  """A checkpoint's patch kernel in the model's `shape`, and how."""
  steps = []
  channels = shape[-2]
  if kernel.shape[-2] != channels:
    if channels != 1:
      raise Unmappable(f'{kernel.shape[-2]} input channels in the '
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
    raise Unmappable('a tubelet kernel cannot initialise a 2D patch '
                      'embedding')
  return kernel, '; '.join(steps)


def adapt_posemb(posemb: np.ndarray, *,
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
  source_grid = source_grid or infer_grid(len(tokens), grid, source_is_image)
  if source_grid is None or math.prod(source_grid) != len(tokens):
    raise Unmappable(
        f'its {len(tokens)} positions are not on a token grid the file '
        f'records or the model has ({grid}); set '
        'config.init_from.restore_positional_embedding=False')
  (t_source, *space_source), (t, *space) = source_grid, grid
  positions = tokens.reshape(*source_grid, width)
  steps = []
  if space_source != space:
    if size_change == 'tile':
      raise Unmappable(
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


def infer_grid(tokens: int, grid: tuple[int, int, int], image: bool
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
