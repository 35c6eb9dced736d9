"""Spatial and colour augmentation of video clips, as in ViViT's Table 7.

Every random choice is drawn once per clip and applied to all of its frames,
so a static video stays static. Clips are (T, H, W, 3): uint8 RGB as
decoded; `color_augment` turns them into float32 in [0, 1].

  augmentation_config(...)          `config.augmentation` for videos.
  resized_size(height, width, shorter)        (h, w), shorter side resized.
  train_geometry(rng, height, width, ...)     scale jitter, crop, flip.
  eval_crops(height, width, crop_size, num_crops)    fixed crop corners.
  crop(frames, top, left, crop_size)          (T, crop, crop, 3).
  color_augment(rng, frames, ...)             to [0, 1], colour jitter, drop.

The pipeline of a training clip (see `video_source`): the frames are
decoded straight to the jittered size, `min_resize` x U(scale_min_factor,
scale_max_factor) on the shorter side (Scenic and DMVR's scale jitter);
randomly cropped to `crop_size`, flipped left-right with probability
`prob_flip`; RandAugment (`video_randaugment`) when num_layers > 0; then,
with probability `prob_color_augment`, brightness, contrast, saturation and
hue jitter in random order, and with probability `prob_color_drop`,
greyscale. Evaluation resizes the shorter side to `min_resize` and takes 1
(centre) or 3 (both ends and centre of the longer side) crops.
"""

from typing import Optional

import ml_collections
import numpy as np

# ITU-R BT.601 luma, as PIL's and TensorFlow's greyscale.
_LUMA = np.array([0.299, 0.587, 0.114], np.float32)
# RGB -> YIQ; a hue shift is a rotation of the (I, Q) plane.
_YIQ = np.array([[0.299, 0.587, 0.114],
                 [0.596, -0.274, -0.322],
                 [0.211, -0.523, 0.312]], np.float32)


def augmentation_config(*, scale_min_factor: float = 0.9,
                        scale_max_factor: float = 1.33,
                        prob_scale_jitter: float = 1.0,
                        prob_flip: float = 0.5,
                        prob_color_augment: float = 0.8,
                        prob_color_drop: float = 0.1,
                        color_jitter: tuple[float, ...] = (0.4, 0.4, 0.4, 0.1),
                        rand_augment_num_layers: int = 0,
                        rand_augment_magnitude: float = 0.0,
                        mixup_alpha: float = 0.0,
                        label_smoothing: float = 0.0
                        ) -> ml_collections.ConfigDict:
  """`config.augmentation` of a video data set; defaults: Table 7, K400.

  Args:
    scale_min_factor, scale_max_factor: the range of the scale jitter of the
      shorter side, relative to `dataset_configs.min_resize`.
    prob_scale_jitter: the probability of jittering (else min_resize).
    prob_flip: of a left-right flip.
    prob_color_augment: of colour jitter; 0 for none.
    prob_color_drop: of greyscale.
    color_jitter: (brightness, contrast, saturation, hue) amplitudes: the
      first three scale by U(1 - a, 1 + a), hue turns by U(-a, a) turns.
    rand_augment_num_layers: RandAugment's N; 0 for none (Table 7: 2 for
      EK and SSv2).
    rand_augment_magnitude: RandAugment's M, on TensorFlow's scale of 10
      (Table 7: 15, 20).
    mixup_alpha: Eq. 12's alpha; 0 for none.
    label_smoothing: Eq. 11's lambda.
  """
  return ml_collections.ConfigDict(dict(
      scale_min_factor=scale_min_factor, scale_max_factor=scale_max_factor,
      prob_scale_jitter=prob_scale_jitter, prob_flip=prob_flip,
      prob_color_augment=prob_color_augment, prob_color_drop=prob_color_drop,
      color_jitter=tuple(color_jitter),
      rand_augment_num_layers=rand_augment_num_layers,
      rand_augment_magnitude=rand_augment_magnitude,
      mixup_alpha=mixup_alpha, label_smoothing=label_smoothing))


def resized_size(height: int, width: int, shorter: int) -> tuple[int, int]:
  """(h, w) with the shorter side `shorter` and the aspect ratio kept."""
  scale = shorter / min(height, width)
  return (max(shorter, round(height * scale)),
          max(shorter, round(width * scale)))


def train_geometry(rng: np.random.Generator, height: int, width: int, *,
                   min_resize: int, crop_size: int,
                   augmentation: Optional[ml_collections.ConfigDict]
                   ) -> tuple[tuple[int, int], tuple[int, int], bool]:
  """The random resize, crop and flip of one training clip.

  Without `augmentation`: the evaluation's centre crop, no flip.

  Returns:
    ((h, w) to resize the frames to, (top, left) of the crop, flip).
  """
  if augmentation is None:
    size = resized_size(height, width, min_resize)
    return size, eval_crops(*size, crop_size, 1)[0], False
  shorter = min_resize
  if rng.random() < augmentation.prob_scale_jitter:
    shorter = round(min_resize * rng.uniform(augmentation.scale_min_factor,
                                             augmentation.scale_max_factor))
  size = resized_size(height, width, max(shorter, crop_size))
  corner = (int(rng.integers(0, size[0] - crop_size + 1)),
            int(rng.integers(0, size[1] - crop_size + 1)))
  return size, corner, bool(rng.random() < augmentation.prob_flip)


def eval_crops(height: int, width: int, crop_size: int, num_crops: int
               ) -> list[tuple[int, int]]:
  """(top, left) of `num_crops` crops: 1, the centre; 3, the start, centre
  and end of the longer side (left, centre, right for landscape frames)."""
  if num_crops not in (1, 3):
    raise ValueError(f'config.dataset_configs.num_test_crops: {num_crops} '
                     'crops. Use 1 (centre) or 3.')
  top, left = (height - crop_size) // 2, (width - crop_size) // 2
  if num_crops == 1:
    return [(top, left)]
  if width >= height:
    return [(top, 0), (top, left), (top, width - crop_size)]
  return [(0, left), (top, left), (height - crop_size, left)]


def crop(frames: np.ndarray, top: int, left: int, crop_size: int
         ) -> np.ndarray:
  """(T, H, W, C) -> (T, crop_size, crop_size, C), a view."""
  return frames[:, top:top + crop_size, left:left + crop_size]


def _hue(turns: float) -> np.ndarray:
  """The 3 x 3 map of RGB that turns the hue by `turns` of a full turn."""
  angle = 2 * np.pi * turns
  rotation = np.array([[1, 0, 0],
                       [0, np.cos(angle), -np.sin(angle)],
                       [0, np.sin(angle), np.cos(angle)]])
  return np.linalg.inv(_YIQ) @ rotation @ _YIQ


def color_augment(rng: np.random.Generator, frames: np.ndarray, *,
                  prob_color_augment: float, prob_color_drop: float,
                  color_jitter: tuple[float, float, float, float]
                  ) -> np.ndarray:
  """Scales to [0, 1], then colour jitter and colour drop, the same for
  every frame.

  With probability `prob_color_augment`, brightness, contrast (around the
  clip's mean luma), saturation and hue change in a random order; with
  probability `prob_color_drop`, the clip turns grey. All are affine maps of
  RGB: they are composed into one, applied in one pass and clipped once.

  Args:
    frames: (T, H, W, 3) uint8.
  Returns:
    (T, H, W, 3) float32 in [0, 1].
  """
  pixels = frames.reshape(-1, 3).astype(np.float32)
  matrix, offset = np.eye(3) / 255, np.zeros(3)
  grey = np.outer(np.ones(3), _LUMA)  # RGB -> (luma, luma, luma).
  if rng.random() < prob_color_augment:
    brightness, contrast, saturation = (
        rng.uniform(1 - a, 1 + a) for a in color_jitter[:3])
    hue = _hue(rng.uniform(-color_jitter[3], color_jitter[3]))
    for op in rng.permutation(4):
      shift = 0.0
      if op == 0:
        step = brightness * np.eye(3)
      elif op == 1:
        # A product with ones: numpy's mean over a length-3 axis is slow.
        mean = np.ones(len(pixels), np.float32) @ pixels / len(pixels)
        shift = (1 - contrast) * (_LUMA @ (matrix @ mean + offset))
        step = contrast * np.eye(3)
      elif op == 2:
        step = saturation * np.eye(3) + (1 - saturation) * grey
      else:
        step = hue
      matrix, offset = step @ matrix, step @ offset + shift
  if rng.random() < prob_color_drop:
    matrix, offset = grey @ matrix, grey @ offset
  out = pixels @ matrix.T.astype(np.float32)
  out += offset.astype(np.float32)
  return np.clip(out, 0, 1, out=out).reshape(frames.shape)
