"""Tokenisation of clips (paper Section 3.2) and positional embeddings (Eq. 1).

Clips are channels-last arrays of shape (batch, T, H, W, C). Both tokenisers
return a token grid of shape (batch, n_t, n_h, n_w, d).
"""

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

# Patch projections as one matmul over unfolded patches instead of a strided
# convolution: the same function; False gives the convolution (for tests).
FAST_PATCHES = True


def _patch_projection(module: nn.Module, x: jnp.ndarray,
                      patch: Sequence[int], hidden_size: int,
                      kernel_init: nn.initializers.Initializer,
                      dtype: jnp.dtype) -> jnp.ndarray:
  """Linear projection E of non-overlapping patches: a convolution with
  kernel = stride = `patch`, VALID padding, and parameters `kernel`
  (*patch, C, d) and `bias` (d,) owned by `module`.

  x: (batch, *spatial, C) -> (batch, *spatial / patch, d).
  """
  kernel = module.param('kernel', kernel_init,
                        (*patch, x.shape[-1], hidden_size))
  bias = module.param('bias', nn.initializers.zeros, (hidden_size,))
  if FAST_PATCHES:
    # The patches as rows of one matmul: (batch, n_1, p_1, ..., n_k, p_k, C)
    # contracted with the kernel over (p_1, ..., p_k, C). XLA:CPU runs this
    # several times faster than the strided convolution, same sums.
    batch, *spatial, channels = x.shape
    split = [d for size, p in zip(spatial, patch) for d in (size // p, p)]
    x = x.astype(dtype).reshape(batch, *split, channels)
    k = len(patch)
    grid, inner = 'PQR'[:k], 'pqr'[:k]
    tiled = ''.join(g + i for g, i in zip(grid, inner))
    y = jnp.einsum(f'n{tiled}c,{inner}co->n{grid}o', x, kernel.astype(dtype))
    return y + bias.astype(dtype)
  spec = 'N' + 'DHW'[-len(patch):] + 'C'
  y = jax.lax.conv_general_dilated(
      x.astype(dtype), kernel.astype(dtype), window_strides=tuple(patch),
      padding='VALID',
      dimension_numbers=(spec, spec[1:-1] + 'IO', spec))
  return y + bias.astype(dtype)


def sample_frames_uniformly(clip: jnp.ndarray, num_frames: int) -> jnp.ndarray:
  """Takes `num_frames` evenly spaced frames from a (batch, T, H, W, C) clip.

  Frame i is the centre of the i-th of `num_frames` equal segments of the
  clip, so all T frames are kept when num_frames == T.
  """
  total = clip.shape[1]
  if not 0 < num_frames <= total:
    raise ValueError(f'Cannot sample {num_frames} frames from a clip of {total}.')
  indices = ((2 * np.arange(num_frames) + 1) * total) // (2 * num_frames)
  return clip[:, indices]


class TubeletEmbedding(nn.Module):
  """Tubelet embedding: a 3D convolution with kernel = stride = t x h x w.

  Parameters: `kernel` (t, h, w, C, d) and `bias` (d,).

  Attributes:
    hidden_size: token width d.
    patch_size: (h, w, t), Scenic's `patches.size` order.
  """
  hidden_size: int
  patch_size: Sequence[int]
  kernel_init: nn.initializers.Initializer = nn.linear.default_kernel_init
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, clip: jnp.ndarray) -> jnp.ndarray:
    """(batch, T, H, W, C) -> (batch, T/t, H/h, W/w, d)."""
    fh, fw, ft = self.patch_size
    _, t, h, w, _ = clip.shape
    if t % ft or h % fh or w % fw:
      raise ValueError(
          f'Tubelet {fh}x{fw}x{ft} (patches.size, h x w x t) does not divide '
          f'the clip of T x H x W = {t}x{h}x{w}.')
    return _patch_projection(self, clip, (ft, fh, fw), self.hidden_size,
                             self.kernel_init, self.dtype)


class FrameSamplingEmbedding(nn.Module):
  """Uniform frame sampling: n_t frames, each embedded by ViT's 2D patches.

  Parameters: `kernel` (h, w, C, d), as in a ViT image checkpoint, and
  `bias` (d,).

  Attributes:
    hidden_size: token width d.
    patch_size: (h, w) or (h, w, t); t is ignored.
    num_frames: n_t, the number of frames sampled from the clip.
  """
  hidden_size: int
  patch_size: Sequence[int]
  num_frames: int
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, clip: jnp.ndarray) -> jnp.ndarray:
    """(batch, T, H, W, C) -> (batch, n_t, H/h, W/w, d)."""
    fh, fw = self.patch_size[:2]
    frames = sample_frames_uniformly(clip, self.num_frames)
    b, t, h, w, c = frames.shape
    if h % fh or w % fw:
      raise ValueError(f'Patch {fh}x{fw} (patches.size) does not divide the '
                       f'frame of H x W = {h}x{w}.')
    tokens = _patch_projection(self, frames.reshape(b * t, h, w, c),
                               (fh, fw), self.hidden_size,
                               nn.linear.default_kernel_init, self.dtype)
    return tokens.reshape(b, t, *tokens.shape[1:])


class AddPositionEmbs(nn.Module):
  """Adds a learned positional embedding p of shape (1, N, d) (Eq. 1)."""
  posemb_init: nn.initializers.Initializer = nn.initializers.normal(stddev=0.02)

  @nn.compact
  def __call__(self, tokens: jnp.ndarray) -> jnp.ndarray:
    """(batch, N, d) -> (batch, N, d)."""
    pos_embedding = self.param('pos_embedding', self.posemb_init,
                               (1,) + tokens.shape[1:])
    return tokens + pos_embedding.astype(tokens.dtype)


def sinusoidal_embedding(num_tokens: int, width: int) -> np.ndarray:
  """Fixed 1D sine/cosine positional embedding (Vaswani et al.), (N, d)."""
  position = np.arange(num_tokens)[:, None]
  frequency = 1.0 / 10000 ** (np.arange(0, width, 2) / width)
  embedding = np.zeros((num_tokens, width), np.float32)
  embedding[:, 0::2] = np.sin(position * frequency)
  embedding[:, 1::2] = np.cos(position * frequency[:width // 2])
  return embedding
