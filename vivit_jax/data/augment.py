"""Label-preserving augmentation of volumes and the label transforms of the
paper's Appendix: label smoothing (Eq. 11) and mixup (Eq. 12).

`config.augmentation` holds max_shift (voxels, per axis), crop_min_scale
(random resized crops: the smallest side of a crop as a share of the
volume's; 1 for none), rotation_plane (two of FLIP_AXES, of equal size, in
whose plane each volume turns by a random multiple of 90 degrees; () for
none), intensity_jitter (brightness offset and contrast factor amplitude),
flip_axes (a subset of FLIP_AXES along which a flip keeps the label),
eval_flips (evaluate every example as the mean of its logits over all
combinations of those flips), mixup_alpha (0: no mixup; the paper uses 0.1
to 0.3, Table 7) and label_smoothing (lambda of Eq. 11); see
`vivit_jax.data.dataset_configs.augmentation`.
"""

import itertools
from typing import Optional

import ml_collections
import numpy as np

FLIP_AXES = ('depth', 'height', 'width')  # Axes 1, 2, 3 of (B, D, H, W, C).


def _coordinates(rng: np.random.Generator, batch: int, size: int,
                 max_shift: int, flip: bool, scale: Optional[np.ndarray]
                 ) -> np.ndarray:
  """(batch, size) source coordinates along one axis: with `scale` (batch,),
  a window of scale x size voxels at a random place stretched over the
  axis; a random shift with the edge replicated; then, if `flip`, a
  reflection with probability 1/2. Whole numbers unless cropped."""
  coordinates = np.arange(size, dtype=np.float64)[None]
  if scale is not None:
    length = scale[:, None] * size
    start = rng.random((batch, 1)) * (size - length)
    coordinates = start + (coordinates + 0.5) * length / size - 0.5
  shift = rng.integers(-max_shift, max_shift + 1, (batch, 1))
  coordinates = np.clip(coordinates + shift, 0, size - 1)
  if flip:
    coordinates = np.where(rng.random((batch, 1)) < 0.5,
                           size - 1 - coordinates, coordinates)
  return coordinates


def _resample(volume: np.ndarray, axis: int, coordinates: np.ndarray
              ) -> np.ndarray:
  """`volume` read at (fractional) `coordinates` along `axis`, linearly
  interpolated between the two nearest voxels."""
  low = np.floor(coordinates).astype(np.int64)
  weight = (coordinates - low).astype(np.float32)
  if not weight.any():
    return volume.take(low, axis=axis)
  high = np.minimum(low + 1, volume.shape[axis] - 1)
  weight = weight.reshape([-1 if a == axis else 1
                           for a in range(volume.ndim)])
  return (volume.take(low, axis=axis) * (1 - weight) +
          volume.take(high, axis=axis) * weight)


def augment(rng: np.random.Generator, volumes: np.ndarray,
            augmentation: ml_collections.ConfigDict,
            rows: Optional[np.ndarray] = None) -> np.ndarray:
  """Label-preserving augmentation, drawn independently for each volume.

  With `augmentation.crop_min_scale` < 1, crops a cube whose sides are
  s ~ U(crop_min_scale, 1) of the volume's at a random place and resizes it
  to the volume's size (trilinear); shifts each axis by up to
  `augmentation.max_shift` voxels (edges replicated); flips each axis of
  `flip_axes` with probability 1/2; turns the volume by k x 90 degrees, k
  uniform in 0..3, in `rotation_plane`; then scales the contrast around the
  volume's mean by U(1 - j, 1 + j) and adds U(-j, j),
  j = `intensity_jitter`, clipping to [0, 1].

  Args:
    rng: the only source of randomness.
    volumes: (N, D, H, W, C) in [0, 1].
    augmentation: `config.augmentation`.
    rows: (B,) the volumes to augment, in batch order; None: all N.
  Returns:
    (B, D, H, W, C) float32 in [0, 1].
  """
  rows = np.arange(len(volumes)) if rows is None else rows
  batch, spatial = len(rows), volumes.shape[1:4]
  scale = (rng.uniform(augmentation.crop_min_scale, 1.0, batch)
           if augmentation.crop_min_scale < 1 else None)
  coordinates = [
      _coordinates(rng, batch, size, augmentation.max_shift,
                   axis in augmentation.flip_axes, scale)
      for axis, size in zip(FLIP_AXES, spatial)]
  plane = tuple(FLIP_AXES.index(axis) for axis in augmentation.rotation_plane)
  turns = rng.integers(0, 4, batch) if plane else np.zeros(batch, int)
  jitter = augmentation.intensity_jitter
  contrast = rng.uniform(1 - jitter, 1 + jitter, batch).astype(np.float32)
  brightness = rng.uniform(-jitter, jitter, batch).astype(np.float32)

  out = np.empty((batch,) + volumes.shape[1:], np.float32)
  # One volume at a time: `take` copies whole planes and rows, twice as fast
  # as one fancy index over the batch, and the volume stays in cache.
  for i, row in enumerate(rows):
    volume = volumes[row]
    for axis, axis_coordinates in enumerate(coordinates):
      volume = _resample(volume, axis, axis_coordinates[i])
    if turns[i]:
      volume = np.rot90(volume, turns[i], axes=plane)
    offset = volume.mean() * (1 - contrast[i]) + brightness[i]
    volume *= contrast[i]
    volume += offset
    np.clip(volume, 0, 1, out=out[i])
  return out


def eval_views(augmentation: ml_collections.ConfigDict
               ) -> list[tuple[int, ...]]:
  """The axes of (N, D, H, W, C) each evaluation view flips: [()] (the
  volume as it is) unless `augmentation.eval_flips`; then every subset of
  `flip_axes`, 2^len(flip_axes) views."""
  if not augmentation.get('eval_flips'):
    return [()]
  axes = [1 + FLIP_AXES.index(axis) for axis in augmentation.flip_axes]
  return [subset for size in range(len(axes) + 1)
          for subset in itertools.combinations(axes, size)]


def smooth_labels(one_hot: np.ndarray, lam: float) -> np.ndarray:
  """Eq. 11: (1 - lam) y + lam u, u uniform over the K classes. (B, K)."""
  return ((1 - lam) * one_hot + lam / one_hot.shape[-1]).astype(np.float32)


def balanced_class_weights(labels: np.ndarray, num_classes: int
                           ) -> np.ndarray:
  """(K,) weights N / (K n_k) for the cross-entropy of each class, n_k the
  number of class k among the N `labels` (scikit-learn's 'balanced'): every
  class then weighs as much in the loss as any other, and the mean weight
  over the N examples is 1 when every class has some. A class without
  examples gets 0."""
  counts = np.bincount(labels, minlength=num_classes)
  return np.where(counts > 0, len(labels) / (num_classes * np.maximum(
      counts, 1)), 0.0).astype(np.float32)


def mixup(rng: np.random.Generator, volumes: np.ndarray, targets: np.ndarray,
          alpha: float) -> tuple[np.ndarray, np.ndarray]:
  """Eq. 12: mixes each example with a random partner from the batch.

  One lam ~ Beta(alpha, alpha) for the batch; partners are a permutation.
  volumes (B, ...), targets (B, K) one-hot or soft -> the same shapes.
  """
  lam = rng.beta(alpha, alpha)
  partner = rng.permutation(len(volumes))
  mixed = volumes[partner]
  mixed *= 1 - lam
  mixed += lam * volumes
  return mixed, lam * targets + (1 - lam) * targets[partner]
