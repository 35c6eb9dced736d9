"""Video files: probing, frame sampling and seeking decoders, with PyAV.

A video is probed once: one pass over its packets, demuxed but not decoded,
gives the presentation timestamp of every frame and which frames are
keyframes, so that frame i is exactly the i-th frame shown whatever the
container, codec or frame rate. A clip's frames are then read by seeking to
the keyframe before the first frame needed, decoding forward and stopping
after the last; decoded frames are resized (FFmpeg's swscale) and converted
to RGB only when needed.

  VideoReadError                               a file FFmpeg cannot read.
  VideoInfo                                    timestamps, keyframes, size.
  probe(path)                                  -> VideoInfo.
  timeline(info, sample_by, target_fps)        sampling step -> frame index.
  train_clip(rng, length, num_frames, stride)  (T,) random clip, looped.
  eval_clips(length, num_frames, stride, n)    (n, T) evenly spaced clips.
  read_frames(info, indices, size)             (N, H, W, 3) uint8 RGB.

Sampling follows Scenic and DMVR: a training clip is `num_frames` steps
`stride` apart from a uniformly random start; evaluation takes `num_clips`
clips with starts evenly spaced from the first step to the last possible
one, so they cover the video; a video shorter than a clip is looped. Steps
are frames (`sample_by='frames'`) or instants `1 / target_fps` seconds apart
(`'time'`, for videos of different or variable frame rates).
"""

import dataclasses
import fractions
from typing import Optional

import av
import numpy as np

from vivit_jax.data.sources import DataError

SAMPLE_BY = ('frames', 'time')


class VideoReadError(DataError):
  """FFmpeg cannot open, demux or decode a video; the message is one line
  that names the file."""


@dataclasses.dataclass(frozen=True)
class VideoInfo:
  """What sampling and seeking need to know of a video file.

  Attributes:
    path: the file.
    pts: (N,) int64, the presentation timestamp of each frame, increasing,
      in units of `time_base`.
    keyframes: (K,) int64, increasing indices into `pts` of the keyframes;
      the first is 0.
    time_base: seconds per unit of `pts`.
    height, width: of the decoded frames.
    fps: the stream's average frame rate.
  """
  path: str
  pts: np.ndarray
  keyframes: np.ndarray
  time_base: fractions.Fraction
  height: int
  width: int
  fps: float

  @property
  def num_frames(self) -> int:
    return len(self.pts)

  def seconds(self) -> np.ndarray:
    """(N,) float64: each frame's time from the first frame."""
    return (self.pts - self.pts[0]).astype(np.float64) * float(self.time_base)

  def index_of(self, pts: int) -> int:
    """The index of the frame shown at timestamp `pts`."""
    return max(int(np.searchsorted(self.pts, pts, side='right')) - 1, 0)


def _read_error(path: str, problem: object) -> VideoReadError:
  # FFmpeg's errors repeat the path in str(); strerror is the problem alone.
  text = getattr(problem, 'strerror', None) or str(problem)
  problem = ' '.join(text.split()) or type(problem).__name__
  return VideoReadError(f'{path}: cannot read the video ({problem}); '
                        're-encode it with ffmpeg or remove it.')


def probe(path: str) -> VideoInfo:
  """Timestamps, keyframes, size and frame rate of the first video stream.

  Demuxes every packet, decoding only until the first frame comes out.

  Raises:
    VideoReadError: the file cannot be opened or demuxed, has no video
      stream or no frame, or its first frame does not decode.
  """
  try:
    with av.open(path) as container:
      if not container.streams.video:
        raise _read_error(path, 'no video stream')
      stream = container.streams.video[0]
      pts, keyframe, first = [], [], []
      for packet in container.demux(stream):
        timestamp = packet.pts if packet.pts is not None else packet.dts
        if packet.size and timestamp is not None:
          pts.append(timestamp)
          keyframe.append(packet.is_keyframe)
          if not first:  # Until the decoder gives its first frame.
            first = packet.decode()
      if not pts:
        raise _read_error(path, 'no frames')
      first = first or stream.decode(None)  # Flushes the decoder.
      if not first:
        raise _read_error(path, 'the first frame does not decode')
      first = first[0]
      order = np.argsort(pts, kind='stable')
      pts = np.asarray(pts, np.int64)[order]
      keyframes = np.flatnonzero(np.asarray(keyframe)[order])
      if not len(keyframes) or keyframes[0]:
        keyframes = np.concatenate([[0], keyframes])
      time_base = stream.time_base
      rate = stream.average_rate or stream.guessed_rate
  except av.FFmpegError as error:
    raise _read_error(path, error) from error
  seconds = float((pts[-1] - pts[0]) * time_base)
  fps = float(rate) if rate else (len(pts) - 1) / seconds if seconds else 1.0
  return VideoInfo(path=path, pts=pts, keyframes=keyframes.astype(np.int64),
                   time_base=time_base, height=first.height,
                   width=first.width, fps=fps)


def timeline(info: VideoInfo, sample_by: str = 'frames',
             target_fps: Optional[float] = None) -> np.ndarray:
  """The frame index shown at each sampling step of `info`'s video.

  'frames': step i is frame i. 'time': step j is the instant j / target_fps
  seconds after the first frame, and shows the last frame that started at
  or before it (as a player would), so a 60 fps and a 30 fps video give
  clips of the same duration.

  Returns:
    (L,) int64, non-decreasing indices into info.pts, L >= 1.
  """
  if sample_by == 'frames':
    return np.arange(info.num_frames)
  if sample_by != 'time':
    raise ValueError(f'config.dataset_configs.sample_by: unknown {sample_by!r}.'
                     f' Use one of {SAMPLE_BY}.')
  if not target_fps or target_fps <= 0:
    raise ValueError(f'config.dataset_configs.target_fps: {target_fps} is not '
                     "a positive rate. Give the rate at which 'time' samples.")
  seconds = info.seconds()
  # A millionth of a step absorbs rounding in pts * time_base.
  steps = np.arange(int(seconds[-1] * target_fps + 1e-6) + 1) / target_fps
  return np.searchsorted(seconds, steps + 1e-6 / target_fps, side='right') - 1


def _span(num_frames: int, stride: int) -> int:
  """The number of steps a clip covers."""
  return (num_frames - 1) * stride + 1


def train_clip(rng: np.random.Generator, length: int, num_frames: int,
               stride: int) -> np.ndarray:
  """(num_frames,) steps `stride` apart from a random start in [0, length -
  span]; a timeline shorter than the span is looped."""
  start = rng.integers(0, max(length - _span(num_frames, stride), 0) + 1)
  return (start + stride * np.arange(num_frames)) % length


def eval_clips(length: int, num_frames: int, stride: int, num_clips: int
               ) -> np.ndarray:
  """(num_clips, num_frames) steps: starts evenly spaced from 0 to length -
  span (all 0 if the timeline is shorter than a clip, which is looped);
  one clip is centred."""
  last_start = max(length - _span(num_frames, stride), 0)
  if num_clips == 1:
    starts = np.array([last_start // 2])
  else:
    starts = np.round(np.linspace(0, last_start, num_clips)).astype(np.int64)
  return (starts[:, None] + stride * np.arange(num_frames)) % length


def _to_rgb(frame: av.VideoFrame, size: Optional[tuple[int, int]]
            ) -> np.ndarray:
  height, width = size or (frame.height, frame.width)
  return frame.to_ndarray(format='rgb24', width=width, height=height,
                          interpolation='BILINEAR')


def _decode(info: VideoInfo, needed: np.ndarray,
            size: Optional[tuple[int, int]], seek: bool) -> dict:
  """{index: (H, W, 3) uint8} of the frames `needed` (sorted, unique) that
  decode. With `seek`, jumps to the last keyframe before each needed frame
  that lies beyond the decoder's position; without, decodes from the start.
  """
  wanted, frames = set(needed.tolist()), {}
  with av.open(info.path) as container:
    stream = container.streams.video[0]
    decoded, position = None, -1
    for target in needed:
      if target in frames:
        continue
      key = info.keyframes[np.searchsorted(info.keyframes, target,
                                           side='right') - 1]
      if decoded is None or (seek and (key > position or target <= position)):
        if seek and (decoded is not None or key):
          container.seek(int(info.pts[key]), stream=stream)
        decoded = container.decode(stream)
      for frame in decoded:
        position = (position + 1 if frame.pts is None else
                    info.index_of(frame.pts))
        if position in wanted and position not in frames:
          frames[position] = _to_rgb(frame, size)
        if position >= target:
          break
      if target not in frames:  # Past the end, or a seek overshot.
        break
  return frames


def read_frames(info: VideoInfo, indices: np.ndarray,
                size: Optional[tuple[int, int]] = None) -> np.ndarray:
  """The frames `indices` of the video, resized to `size`.

  Seeks to the keyframe before the first frame needed and decodes forward,
  stopping after the last; seeks again across gaps that hold a keyframe
  (evaluation clips). Should a seek land past its target, the video is
  decoded from its start instead. A frame that does not decode while a
  earlier one did (a truncated file) repeats the last decoded frame before
  it.

  Args:
    info: from `probe`.
    indices: (N,) int frame indices in [0, info.num_frames), any order,
      repeats allowed.
    size: (height, width) to resize to, bilinearly; None keeps the size.
  Returns:
    (N, height, width, 3) uint8 RGB.
  Raises:
    VideoReadError: no needed frame decodes.
  """
  indices = np.asarray(indices, np.int64)
  needed = np.unique(indices)
  try:
    frames = _decode(info, needed, size, seek=True)
    if len(frames) < len(needed):
      frames = _decode(info, needed, size, seek=False)
  except (av.FFmpegError, ValueError) as error:
    raise _read_error(info.path, error) from error
  if not frames:
    raise _read_error(info.path, f'none of frames {needed[0]}..{needed[-1]} '
                      'decodes')
  decoded = np.array(sorted(frames))
  # The last decoded frame at or before each index, else the first decoded.
  nearest = decoded[np.maximum(
      np.searchsorted(decoded, indices, side='right') - 1, 0)]
  return np.stack([frames[i] for i in nearest])
