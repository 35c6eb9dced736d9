"""RandAugment (Cubuk et al., 2020) for video clips, temporally consistent.

As ViViT's Appendix A.1: `num_layers` operations drawn uniformly, each
applied with the same parameters to every frame of the clip. Magnitudes are
on TensorFlow's scale (`_MAX_LEVEL` = 10; Table 7 uses 15 and 20, beyond
it), and grow with the magnitude for every operation (as timm's
'increasing' variants; TensorFlow's Solarize and Posterize weaken instead).

  OPS                                        the operation names.
  rand_augment(rng, clip, num_layers, magnitude)   (T, H, W, 3) uint8.
  apply_op(name, clip, magnitude, sign)      one operation, for tests.

Operations (the official list less Invert, Cutout and SolarizeAdd): at
magnitude m, with f = m / 10 and a random sign s for the signed ones,
  AutoContrast   each channel stretched to [0, 255] over the clip
  Equalize       each channel's histogram over the clip equalised
  Rotate         s 30 f degrees about the centre
  ShearX/ShearY  shear s 0.3 f
  TranslateX/Y   s 0.45 f of the width / height (TF: 100 of 224 pixels)
  Posterize      keep 8 - 4 f bits (at least 1)
  Solarize       invert pixels above 256 (1 - f)
  Color, Contrast, Brightness, Sharpness    PIL's enhance, 1 + s 0.9 f
Geometric operations sample with the nearest pixel and fill with grey 128.
"""

import numpy as np

_MAX_LEVEL = 10.0
_FILL = 128
_LUMA = np.array([0.299, 0.587, 0.114], np.float32)

OPS = ('AutoContrast', 'Equalize', 'Rotate', 'ShearX', 'ShearY',
       'TranslateX', 'TranslateY', 'Posterize', 'Solarize', 'Color',
       'Contrast', 'Brightness', 'Sharpness')


def _warp(clip: np.ndarray, matrix: np.ndarray) -> np.ndarray:
  """Samples each output pixel (x, y) at `matrix` @ (x, y, 1) of the input,
  relative to the frame's centre; the same for every frame."""
  _, height, width, _ = clip.shape
  centre = np.array([(width - 1) / 2, (height - 1) / 2])
  ys, xs = np.mgrid[:height, :width]
  points = np.stack([xs - centre[0], ys - centre[1], np.ones_like(xs)], -1)
  source = np.rint(points @ matrix.T + centre).astype(np.int64)
  inside = ((source[..., 0] >= 0) & (source[..., 0] < width) &
            (source[..., 1] >= 0) & (source[..., 1] < height))
  out = clip[:, np.clip(source[..., 1], 0, height - 1),
             np.clip(source[..., 0], 0, width - 1)]
  out[:, ~inside] = _FILL
  return out


def _blend(degenerate: np.ndarray, clip: np.ndarray, factor: float
           ) -> np.ndarray:
  """PIL's ImageEnhance: degenerate + factor (clip - degenerate), uint8."""
  out = degenerate + np.float32(factor) * (clip.astype(np.float32) -
                                           degenerate)
  return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _equalize(channel: np.ndarray) -> np.ndarray:
  """PIL's equalisation of one channel (any shape, uint8)."""
  histogram = np.bincount(channel.ravel(), minlength=256)
  step = (histogram.sum() - histogram[np.flatnonzero(histogram)[-1]]) // 255
  if not step:
    return channel
  lut = (np.cumsum(histogram) - histogram + step // 2) // step
  return np.clip(lut, 0, 255).astype(np.uint8)[channel]


def _smooth(clip: np.ndarray) -> np.ndarray:
  """PIL's SMOOTH filter ([[1, 1, 1], [1, 5, 1], [1, 1, 1]] / 13) inside
  each frame, borders kept; float32."""
  out = clip.astype(np.float32)
  _, height, width, _ = out.shape
  inner = sum(out[:, 1 + dy:height - 1 + dy, 1 + dx:width - 1 + dx]
              for dy in (-1, 0, 1) for dx in (-1, 0, 1))
  out[:, 1:-1, 1:-1] = (inner + 4 * out[:, 1:-1, 1:-1]) / 13
  return out


def apply_op(name: str, clip: np.ndarray, magnitude: float,
             sign: float = 1.0) -> np.ndarray:
  """One operation of OPS on a (T, H, W, 3) uint8 clip; `sign` (+1 or -1)
  is the direction of the signed ones."""
  f = magnitude / _MAX_LEVEL
  if name == 'AutoContrast':
    luts = []
    for c in range(3):
      low, high = int(clip[..., c].min()), int(clip[..., c].max())
      levels = np.arange(256, dtype=np.float32)
      luts.append(levels if high == low else np.clip(
          np.rint((levels - low) * (255 / (high - low))), 0, 255))
    return np.stack([luts[c].astype(np.uint8)[clip[..., c]]
                     for c in range(3)], -1)
  if name == 'Equalize':
    return np.stack([_equalize(clip[..., c]) for c in range(3)], -1)
  if name == 'Rotate':
    angle = np.deg2rad(sign * 30 * f)
    cos, sin = np.cos(angle), np.sin(angle)
    return _warp(clip, np.array([[cos, -sin, 0], [sin, cos, 0]]))
  if name in ('ShearX', 'ShearY'):
    shear = sign * 0.3 * f
    matrix = ([[1, shear, 0], [0, 1, 0]] if name == 'ShearX' else
              [[1, 0, 0], [shear, 1, 0]])
    return _warp(clip, np.array(matrix))
  if name in ('TranslateX', 'TranslateY'):
    _, height, width, _ = clip.shape
    shift = sign * 0.45 * f * (width if name == 'TranslateX' else height)
    offset = [-shift, 0] if name == 'TranslateX' else [0, -shift]
    return _warp(clip, np.array([[1, 0, offset[0]], [0, 1, offset[1]]]))
  if name == 'Posterize':
    bits = int(np.clip(8 - round(4 * f), 1, 8))
    return clip & np.uint8((0xFF << (8 - bits)) & 0xFF)
  if name == 'Solarize':
    threshold = 256 * (1 - min(f, 1))
    return np.where(clip >= threshold, 255 - clip, clip).astype(np.uint8)
  factor = max(1 + sign * 0.9 * f, 0)
  if name == 'Color':
    return _blend(clip.astype(np.float32) @ _LUMA[:, None], clip, factor)
  if name == 'Contrast':
    return _blend(np.float32((clip.astype(np.float32) @ _LUMA).mean()),
                  clip, factor)
  if name == 'Brightness':
    return _blend(np.float32(0), clip, factor)
  if name == 'Sharpness':
    return _blend(_smooth(clip), clip, factor)
  raise ValueError(f'Unknown RandAugment operation {name!r}: use one of '
                   f'{OPS}.')


def rand_augment(rng: np.random.Generator, clip: np.ndarray,
                 num_layers: int, magnitude: float) -> np.ndarray:
  """`num_layers` operations drawn uniformly from OPS (with replacement),
  each at `magnitude` with a random sign, applied in turn to the clip.

  Args:
    clip: (T, H, W, 3) uint8.
  Returns:
    (T, H, W, 3) uint8.
  """
  for name in rng.choice(OPS, num_layers):
    clip = apply_op(str(name), clip, magnitude, rng.choice((-1.0, 1.0)))
  return clip
