"""A data set of video files as the training loop consumes it.

  VideoSource(config)                 train_batch(step), eval_batches(split).
  prediction_views(path, config)      the evaluation views of one file.

`config.dataset_configs` (see `dataset_configs.video_dataset`): data_dir,
layout (`video_lists`), num_classes, num_frames, stride, sample_by and
target_fps (`video.timeline`), min_resize, crop_size, num_test_clips,
num_test_crops, zero_centering (inputs in [-1, 1], else [0, 1]) and
num_workers (decoding threads; None: one per CPU). `config.augmentation`
(`video_transforms.augmentation_config`), if present, augments training
clips; without it they are centre crops. The batch sizes and seed are
config.batch_size, config.eval_batch_size and config.rng_seed.

Every file is probed once, at construction, in parallel; unreadable ones are
logged, counted in `skipped` and left out. Decoding runs in a thread pool
(PyAV and numpy release the GIL). A video that fails to decode later is
logged once and counted each time it is left out; in training another video
takes its place, deterministically; in evaluation its views are masked out.
"""

import collections
import concurrent.futures
import functools
import itertools
import logging
import os
import threading
from typing import Callable, Iterable, Iterator, Optional

import ml_collections
import numpy as np

from vivit_jax.data import video
from vivit_jax.data import video_lists
from vivit_jax.data import video_randaugment
from vivit_jax.data import video_transforms
from vivit_jax.data.augment import balanced_class_weights
from vivit_jax.data.augment import mixup
from vivit_jax.data.augment import smooth_labels
from vivit_jax.data.sources import DataError
from vivit_jax.data.sources import generator

logger = logging.getLogger(__name__)

# Streams of the seeded generators (see `augment.generator`).
_ORDER, _EXAMPLE, _BATCH = 0, 1, 2


def _check_dataset_config(dataset_configs: ml_collections.ConfigDict) -> None:
  """Raises DataError naming the field of `dataset_configs` that cannot
  work."""

  def fail(field, problem, fix):
    raise DataError(f'config.dataset_configs.{field}: {problem}. {fix}')

  for field in ('num_frames', 'stride', 'crop_size', 'min_resize'):
    value = dataset_configs.get(field)
    if not isinstance(value, int) or value <= 0:
      fail(field, f'{value!r} is not a positive integer', 'Set it.')
  if dataset_configs.min_resize < dataset_configs.crop_size:
    fail('min_resize', f'{dataset_configs.min_resize} is smaller than '
         f'crop_size {dataset_configs.crop_size}',
         'Resize to at least the crop size.')
  if dataset_configs.get('num_channels', 3) != 3:
    fail('num_channels', f'videos decode to RGB, not '
         f'{dataset_configs.num_channels} channels', 'Set it to 3.')
  if dataset_configs.get('sample_by', 'frames') not in video.SAMPLE_BY:
    fail('sample_by', f'unknown {dataset_configs.sample_by!r}',
         f'Use one of {video.SAMPLE_BY}.')
  target_fps = dataset_configs.get('target_fps')
  if dataset_configs.get('sample_by') == 'time' and not (
      target_fps and target_fps > 0):
    fail('target_fps', f"{target_fps} is not a rate to sample 'time' at",
         'Give a positive number of steps per second.')
  if dataset_configs.get('num_test_crops', 1) not in (1, 3):
    fail('num_test_crops', f'{dataset_configs.num_test_crops} crops',
         'Use 1 (centre) or 3.')
  if dataset_configs.get('num_test_clips', 1) < 1:
    fail('num_test_clips', f'{dataset_configs.num_test_clips} clips',
         'Use at least 1.')


def _check_augmentation(augmentation: ml_collections.ConfigDict) -> None:
  """Raises DataError naming the field of `config.augmentation` (see
  `video_transforms.augmentation_config`) that cannot work."""
  expected = video_transforms.augmentation_config()
  missing = sorted(set(expected) - set(augmentation))
  if missing:
    raise DataError(f'config.augmentation lacks {", ".join(missing)}: build '
                    'it with video_transforms.augmentation_config().')
  bounds = {field: (0, 1) for field in expected if field.startswith('prob_')}
  bounds.update(label_smoothing=(0, 1), mixup_alpha=(0, np.inf),
                rand_augment_num_layers=(0, np.inf),
                rand_augment_magnitude=(0, np.inf),
                scale_min_factor=(1e-3, augmentation.scale_max_factor))
  for field, (low, high) in bounds.items():
    if not low <= augmentation[field] <= high:
      raise DataError(f'config.augmentation.{field}: {augmentation[field]} is '
                      f'outside [{low}, {high}]. Give a value in it.')
  jitter = tuple(augmentation.color_jitter)
  if len(jitter) != 4 or min(jitter) < 0:
    raise DataError(f'config.augmentation.color_jitter: {jitter} is not four '
                    'non-negative amplitudes. Give (brightness, contrast, '
                    'saturation, hue).')


def _timeline(info: video.VideoInfo, dataset_configs) -> np.ndarray:
  return video.timeline(info, dataset_configs.get('sample_by', 'frames'),
                        dataset_configs.get('target_fps'))


def _views(info: video.VideoInfo, dataset_configs: ml_collections.ConfigDict
           ) -> np.ndarray:
  """The evaluation views of a video, clip-major then crop, as in Scenic:
  `num_test_clips` evenly spaced clips x `num_test_crops` crops.

  Returns:
    (clips x crops, T, crop_size, crop_size, 3) float32.
  """
  ds = dataset_configs
  timeline = _timeline(info, ds)
  steps = video.eval_clips(len(timeline), ds.num_frames, ds.stride,
                           ds.get('num_test_clips', 1))
  size = video_transforms.resized_size(info.height, info.width, ds.min_resize)
  frames = video.read_frames(info, timeline[steps.ravel()], size)
  frames = frames.reshape(*steps.shape, *frames.shape[1:])
  corners = video_transforms.eval_crops(*size, ds.crop_size,
                                        ds.get('num_test_crops', 1))
  views = np.stack([video_transforms.crop(clip, *corner, ds.crop_size)
                    for clip in frames for corner in corners])
  return _to_inputs(views, ds)


def _to_inputs(frames: np.ndarray, dataset_configs) -> np.ndarray:
  """uint8 -> float32 in [0, 1], or [-1, 1] with zero_centering."""
  if dataset_configs.get('zero_centering', True):
    return frames.astype(np.float32) * np.float32(2 / 255) - 1
  return frames.astype(np.float32) * np.float32(1 / 255)


def prediction_views(path: str, config: ml_collections.ConfigDict
                     ) -> tuple[np.ndarray, dict]:
  """The views `--mode=predict` averages the logits of, for one video file.

  Args:
    path: any file FFmpeg reads.
    config: uses `dataset_configs` as `VideoSource` does.
  Returns:
    views (num_test_clips x num_test_crops, T, crop_size, crop_size, 3)
    float32, and {'num_clips', 'num_crops', 'num_views', 'video_frames',
    'fps', 'height', 'width'} of what was read.
  Raises:
    DataError: a config field cannot work, or the file cannot be read.
  """
  _check_dataset_config(config.dataset_configs)
  info = video.probe(path)
  views = _views(info, config.dataset_configs)
  ds = config.dataset_configs
  return views, {'num_clips': ds.get('num_test_clips', 1),
                 'num_crops': ds.get('num_test_crops', 1),
                 'num_views': len(views), 'video_frames': info.num_frames,
                 'fps': info.fps, 'height': info.height, 'width': info.width}


def _ordered(pool: concurrent.futures.Executor, fn: Callable,
             items: Iterable, ahead: int) -> Iterator:
  """fn(item) for each item, in order, `ahead` items computed in advance."""
  items = iter(items)
  pending = collections.deque(
      pool.submit(fn, item) for item in itertools.islice(items, ahead))
  while pending:
    result = pending.popleft().result()
    pending.extend(pool.submit(fn, item) for item in itertools.islice(items, 1))
    yield result


class VideoSource:
  """Batches of a video data set, pure functions of (config, step).

  Attributes:
    num_classes: K.
    class_names: K names, in label order.
    task: 'binary-class' (K = 2) or 'multi-class', MedMNIST's names.
    skipped: Counter {path: times the unreadable file was left out}.
  """

  def __init__(self, config: ml_collections.ConfigDict):
    """Lists and probes every video of every split.

    Raises:
      DataError: a config field cannot work, a list or folder is missing or
        malformed, a split has no readable video, or the batch is larger
        than the training set.
    """
    ds = config.dataset_configs
    _check_dataset_config(ds)
    self._config = config
    self._augmentation = config.get('augmentation')
    if self._augmentation is not None:
      _check_augmentation(self._augmentation)
    self.class_names, lists = video_lists.read_lists(ds)
    self.num_classes = len(self.class_names)
    self.task = 'binary-class' if self.num_classes == 2 else 'multi-class'
    self.skipped = collections.Counter()
    self._unreadable, self._lock = set(), threading.Lock()
    self._num_workers = ds.get('num_workers') or os.cpu_count()
    self._pool = concurrent.futures.ThreadPoolExecutor(self._num_workers)
    # {split: [(info, label, timeline)]}
    self._videos = {split: self._probe_split(split, videos)
                    for split, videos in lists.items()}
    if not 0 < config.batch_size <= len(self._videos['train']):
      raise DataError(f'config.batch_size: {config.batch_size} is not in [1, '
                      f'{len(self._videos["train"])}], the number of readable '
                      'training videos. Use a smaller batch.')
    self._class_weights = balanced_class_weights(
        np.array([label for _, label, _ in self._videos['train']]),
        self.num_classes)

  def _probe_split(self, split: str, videos: list[tuple[str, int]]) -> list:
    def probe(path):
      try:
        return video.probe(path)
      except video.VideoReadError as error:
        return error

    readable = []
    for (path, label), info in zip(videos, self._pool.map(
        probe, [path for path, _ in videos])):
      if isinstance(info, video.VideoReadError):
        self._skip(split, path, info)
      else:
        readable.append((info, label, _timeline(info, self._config.
                                                dataset_configs)))
    if not readable:
      raise DataError(
          f'The {split} split of {self._config.dataset_configs.data_dir} has '
          f'no readable video ({len(videos)} listed, all unreadable): add '
          'videos FFmpeg can decode.')
    return readable

  def _skip(self, split: str, path: str,
            error: Optional[Exception] = None) -> None:
    """Counts an unreadable video; logs `error` the first time."""
    with self._lock:
      self.skipped[path] += 1
      if path in self._unreadable:
        return
      self._unreadable.add(path)
    logger.warning('Skipping unreadable video (%s split): %s', split, error)

  def num_examples(self, split: str) -> int:
    """The number of readable videos of 'train', 'val' or 'test'."""
    return len(self._videos[split])

  def _epoch_order(self, epoch: int) -> np.ndarray:
    rng = generator(self._config.rng_seed, _ORDER, epoch)
    return rng.permutation(self.num_examples('train'))

  def _augment(self, rng: np.random.Generator, frames: np.ndarray
               ) -> np.ndarray:
    """RandAugment and colour augmentation, as configured, of a cropped
    clip: (T, crop, crop, 3) uint8 -> float32 model inputs."""
    ds, augmentation = self._config.dataset_configs, self._augmentation
    if augmentation is None:
      return _to_inputs(frames, ds)
    if augmentation.rand_augment_num_layers:
      frames = video_randaugment.rand_augment(
          rng, np.ascontiguousarray(frames),
          augmentation.rand_augment_num_layers,
          augmentation.rand_augment_magnitude)
    clip = video_transforms.color_augment(
        rng, frames, prob_color_augment=augmentation.prob_color_augment,
        prob_color_drop=augmentation.prob_color_drop,
        color_jitter=augmentation.color_jitter)
    if ds.get('zero_centering', True):
      clip *= 2
      clip -= 1
    return clip

  def _train_clip(self, step: int, slot: int, row: int
                  ) -> tuple[np.ndarray, int]:
    """The augmented clip of training video `row`, or, if it is unreadable,
    of the first readable video after it. (T, crop, crop, 3) float32."""
    ds, augmentation = self._config.dataset_configs, self._augmentation
    videos = self._videos['train']
    for attempt in range(len(videos)):
      info, label, timeline = videos[(row + attempt) % len(videos)]
      if info.path in self._unreadable:
        self._skip('train', info.path)
        continue
      rng = generator(self._config.rng_seed, _EXAMPLE, step, slot, attempt)
      steps = video.train_clip(rng, len(timeline), ds.num_frames, ds.stride)
      size, corner, flip = video_transforms.train_geometry(
          rng, info.height, info.width, min_resize=ds.min_resize,
          crop_size=ds.crop_size, augmentation=augmentation)
      try:
        frames = video.read_frames(info, timeline[steps], size)
      except video.VideoReadError as error:
        self._skip('train', info.path, error)
        continue
      frames = video_transforms.crop(frames, *corner, ds.crop_size)
      return self._augment(rng, frames[:, :, ::-1] if flip else frames), label
    raise DataError('No training video decodes any more: see the warnings '
                    'above, and replace the files.')

  def train_batch(self, step: int) -> dict:
    """The global training batch of `step`, a pure function of
    (config.rng_seed, step).

    Epoch `step // steps_per_epoch` visits the training videos in a
    permutation drawn from the seed (the remainder of each epoch dropped).

    Returns:
      {'inputs': (B, T, crop, crop, 3) float32, 'targets': (B, K) float32
      (one-hot, smoothed, class-weighted and mixed as the config says),
      'labels': (B,) int32}, B = config.batch_size.
    """
    batch_size = self._config.batch_size
    epoch, index = divmod(step, self.num_examples('train') // batch_size)
    rows = self._epoch_order(epoch)[index * batch_size:(index + 1) *
                                    batch_size]
    clips, labels = zip(*self._pool.map(
        lambda slot: self._train_clip(step, slot, int(rows[slot])),
        range(batch_size)))
    inputs, labels = np.stack(clips), np.asarray(labels, np.int32)
    augmentation = self._augmentation
    targets = smooth_labels(
        np.eye(self.num_classes, dtype=np.float32)[labels],
        augmentation.label_smoothing if augmentation else 0.0)
    if self._config.get('balance_classes'):
      targets *= self._class_weights
    if augmentation and augmentation.mixup_alpha > 0:
      rng = generator(self._config.rng_seed, _BATCH, step)
      inputs, targets = mixup(rng, inputs, targets, augmentation.mixup_alpha)
    return {'inputs': inputs, 'targets': targets, 'labels': labels}

  def _eval_views(self, split: str, row: int
                  ) -> tuple[Optional[np.ndarray], int]:
    """(views, label) of video `row`; views None if it does not decode."""
    info, label, _ = self._videos[split][row]
    try:
      return _views(info, self._config.dataset_configs), label
    except video.VideoReadError as error:
      self._skip(split, info.path, error)
      return None, label

  def eval_batches(self, split: str, batch_size: Optional[int] = None
                   ) -> Iterator[dict]:
    """Every view of every video of `split`, in order, in batches of
    `batch_size` (default config.eval_batch_size).

    A video has num_test_clips x num_test_crops views, clip-major. The last
    batch is padded with zeros, index -1 and mask 0; so are the views of a
    video that fails to decode, keeping its index.

    Yields:
      {'inputs': (B, T, crop, crop, 3) float32, 'labels': (B,) int32,
      'mask': (B,) float32 (1 real, 0 padding), 'index': (B,) int32, the
      video of each view in [0, num_examples(split))}.
    """
    ds = self._config.dataset_configs
    batch_size = batch_size or self._config.eval_batch_size
    num_views = ds.get('num_test_clips', 1) * ds.get('num_test_crops', 1)
    shape = (num_views, ds.num_frames, ds.crop_size, ds.crop_size, 3)
    pending = {key: [] for key in ('inputs', 'labels', 'mask', 'index')}
    count = 0
    for row, (views, label) in enumerate(_ordered(
        self._pool, functools.partial(self._eval_views, split),
        range(self.num_examples(split)), 2 * self._num_workers)):
      pending['inputs'].append(np.zeros(shape, np.float32)
                               if views is None else views)
      pending['labels'].append(np.full(num_views, label, np.int32))
      pending['mask'].append(np.full(num_views, views is not None,
                                     np.float32))
      pending['index'].append(np.full(num_views, row, np.int32))
      count += num_views
      while count >= batch_size:
        batch = {key: np.concatenate(value) for key, value in pending.items()}
        yield {key: value[:batch_size] for key, value in batch.items()}
        pending = {key: [value[batch_size:]] for key, value in batch.items()}
        count -= batch_size
    if count:
      batch = {key: np.concatenate(value) for key, value in pending.items()}
      padding = batch_size - count
      batch['index'] = np.pad(batch['index'], (0, padding),
                              constant_values=-1)
      yield {key: np.pad(value, [(0, padding)] + [(0, 0)] * (value.ndim - 1))
             if key != 'index' else value for key, value in batch.items()}
