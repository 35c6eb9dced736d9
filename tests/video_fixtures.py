"""Small video files for the tests, written with PyAV.

  write_video(path, frames, fps, codec, pts)   one file; returns path.
  index_pattern(num_frames, size)              frames that spell their index.
  read_index(frames)                           the indices they spell.
  moving_square(rng, direction, ...)           a square moving up, down or
                                               standing still.
  write_dataset(root, ...)                     data_dir/{train,val,test}/
                                               CLASS/*, mixed codecs, sizes,
                                               rates and lengths.
  write_corrupt(path)                          a file no decoder can read.
"""

import fractions
import os
from typing import Optional, Sequence

import av
import numpy as np

# (codec, container extension, encoder options): H.264 with B-frames and a
# keyframe every 8 frames, VP9, and intra-only Motion JPEG.
CODECS = {
    'h264': ('libx264', 'mp4', {'g': '8', 'crf': '12', 'preset': 'ultrafast',
                                'bf': '2'}),
    'vp9': ('libvpx-vp9', 'webm', {'g': '8', 'deadline': 'realtime',
                                   'cpu-used': '8', 'crf': '10', 'b': '0'}),
    # A fixed quantiser: identical frames encode (and decode) identically.
    'mjpeg': ('mjpeg', 'avi', {'qmin': '2', 'qmax': '2'}),
}
DIRECTIONS = ('down', 'still', 'up')  # The classes, sorted.
_BITS = 8
_BACKGROUND = 96


def write_video(path: str, frames: np.ndarray, fps: int = 25,
                codec: str = 'h264', pts: Optional[Sequence[int]] = None
                ) -> str:
  """Encodes (T, H, W, 3) uint8 frames (H, W even) to `path`.

  `pts` in milliseconds gives each frame's time (a variable frame rate);
  None: frame i at i / fps.
  """
  encoder, _, options = CODECS[codec]
  with av.open(path, 'w') as container:
    stream = container.add_stream(encoder, rate=fps, options=dict(options))
    stream.width, stream.height = frames.shape[2], frames.shape[1]
    stream.pix_fmt = 'yuvj420p' if codec == 'mjpeg' else 'yuv420p'
    if pts is not None:
      stream.codec_context.time_base = fractions.Fraction(1, 1000)
      stream.time_base = fractions.Fraction(1, 1000)
    for i, image in enumerate(frames):
      frame = av.VideoFrame.from_ndarray(image, format='rgb24')
      if pts is not None:
        frame.pts, frame.time_base = int(pts[i]), fractions.Fraction(1, 1000)
      container.mux(stream.encode(frame))
    container.mux(stream.encode())
  return path


def index_pattern(num_frames: int, size: int = 64) -> np.ndarray:
  """(num_frames, size, size, 3) uint8: frame i is 8 vertical bars, bar b
  white when bit b of i is set, black otherwise; survives lossy codecs."""
  bits = (np.arange(num_frames)[:, None] >> np.arange(_BITS)) & 1
  bars = np.repeat(bits * 255, size // _BITS, axis=1).astype(np.uint8)
  return np.broadcast_to(bars[:, None, :, None],
                         (num_frames, size, size, 3)).copy()


def read_index(frames: np.ndarray) -> np.ndarray:
  """(N, H, W, 3) frames of `index_pattern`, any size -> (N,) indices."""
  bars = frames.mean(axis=(1, 3)).reshape(len(frames), _BITS, -1).mean(-1)
  return ((bars > 127) << np.arange(_BITS)).sum(-1)


def moving_square(rng: np.random.Generator, direction: str, num_frames: int,
                  height: int, width: int) -> np.ndarray:
  """(T, H, W, 3) uint8: a square of random colour and place, 1/4 of the
  height, moving 1/32 of the height per frame up or down (leaving one edge
  to come back at the other), or standing still, on a grey background."""
  side = height // 4
  speed = {'down': 1, 'still': 0, 'up': -1}[direction] * max(height // 32, 1)
  top, left = rng.integers(0, height), rng.integers(0, width - side)
  colour = rng.integers(160, 256, 3)
  frames = np.full((num_frames, height, width, 3), _BACKGROUND, np.uint8)
  for t in range(num_frames):
    rows = (top + speed * t + np.arange(side)) % height
    frames[t, rows, left:left + side] = colour
  return frames


def write_dataset(root: str, per_class: Sequence[int] = (6, 3, 3),
                  seed: int = 0) -> str:
  """Writes `root/{train,val,test}/{down,still,up}/*`: `per_class[i]` videos
  per class in split i, cycling through the codecs, sizes (48x64, 64x64,
  64x48), frame rates (10, 15, 25) and lengths (12 to 40 frames).

  Returns:
    `root`.
  """
  rng = np.random.default_rng(seed)
  sizes, rates = ((48, 64), (64, 64), (64, 48)), (10, 15, 25)
  count = 0
  for split, number in zip(('train', 'val', 'test'), per_class):
    for direction in DIRECTIONS:
      os.makedirs(os.path.join(root, split, direction), exist_ok=True)
      for i in range(number):
        codec = tuple(CODECS)[count % len(CODECS)]
        height, width = sizes[count % len(sizes)]
        frames = moving_square(rng, direction, int(rng.integers(12, 41)),
                               height, width)
        name = f'{direction}_{i}.{CODECS[codec][1]}'
        write_video(os.path.join(root, split, direction, name), frames,
                    fps=rates[count % len(rates)], codec=codec)
        count += 1
  return root


def write_corrupt(path: str) -> str:
  """A file with an .mp4 name and random bytes."""
  with open(path, 'wb') as f:
    f.write(np.random.default_rng(0).bytes(4096))
  return path
