"""Throughput of the video input pipeline: decoded and augmented clips/s.

Each training clip is `VideoSource.train_batch`'s work for one example of
configs/vivit_b.py:video: seek, decode 32 frames at stride 2 (63 frames
spanned), resize the shorter side to 256 x U(0.9, 1.33), crop 224 x 224,
flip, colour jitter (Table 7, K400), with optional RandAugment. Without
--data_dir, writes H.264 videos like Kinetics' (10 s, 30 fps, 340 x 256,
a keyframe every 2 s) to a temporary folder first.

Prints one JSON line per worker count: clips/s in total and per worker,
and the CPU seconds a clip takes (all threads), which machines shared with
other work measure better than clips/s.

  python -m benchmarks.video_decode [--workers=1,2] [--data_dir=DIR]
"""

import json
import os
import tempfile
import time

from absl import app
from absl import flags
import av
import numpy as np

import vivit_jax
from vivit_jax.data import video_lists
from vivit_jax.data import video_source

_DATA_DIR = flags.DEFINE_string(
    'data_dir', None, 'A folders-layout data set; None: write H.264 videos.')
_NUM_VIDEOS = flags.DEFINE_integer('num_videos', 8,
                                   'Videos per split to write.')
_WORKERS = flags.DEFINE_list('workers', ['1', str(os.cpu_count())],
                             'Decoding threads to time.')
_BATCH_SIZE = flags.DEFINE_integer('batch_size', 8, 'Clips per batch.')
_STEPS = flags.DEFINE_integer('steps', 4, 'Timed batches per worker count.')
_RAND_AUGMENT = flags.DEFINE_bool(
    'rand_augment', False, 'Add RandAugment (2 layers, magnitude 15).')


def write_videos(root: str, num_videos: int) -> None:
  """root/{train,val,test}/clip/*.mp4: 10 s of a drifting random texture."""
  rng = np.random.default_rng(0)
  for split in video_lists.SPLITS:
    os.makedirs(os.path.join(root, split, 'clip'))
    for i in range(num_videos):
      texture = rng.integers(0, 256, (64, 85, 3), np.uint8)
      texture = np.tile(texture.repeat(4, 0).repeat(4, 1), (2, 2, 1))
      path = os.path.join(root, split, 'clip', f'{i}.mp4')
      with av.open(path, 'w') as container:
        stream = container.add_stream('libx264', rate=30, options={
            'g': '60', 'preset': 'veryfast', 'crf': '23'})
        stream.width, stream.height, stream.pix_fmt = 340, 256, 'yuv420p'
        for t in range(300):
          image = np.ascontiguousarray(texture[t % 256:t % 256 + 256,
                                               2 * t % 340:2 * t % 340 + 340])
          container.mux(stream.encode(
              av.VideoFrame.from_ndarray(image, format='rgb24')))
        container.mux(stream.encode())


def time_workers(data_dir: str, workers: int) -> dict:
  config = vivit_jax.load_config(os.path.join(
      os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
      'configs', 'vivit_b.py:video'))
  config.dataset_configs.data_dir = data_dir
  config.dataset_configs.num_classes = len(os.listdir(
      os.path.join(data_dir, 'train')))
  config.dataset_configs.num_workers = workers
  config.batch_size = _BATCH_SIZE.value
  if _RAND_AUGMENT.value:
    config.augmentation.rand_augment_num_layers = 2
    config.augmentation.rand_augment_magnitude = 15
  source = video_source.VideoSource(config)
  source.train_batch(0)  # Warm-up.
  start, cpu_start = time.perf_counter(), time.process_time()
  for step in range(1, _STEPS.value + 1):
    inputs = source.train_batch(step)['inputs']
  seconds = time.perf_counter() - start
  clips = _STEPS.value * _BATCH_SIZE.value
  return {'workers': workers, 'clips_per_s': round(clips / seconds, 2),
          'clips_per_s_per_worker': round(clips / seconds / workers, 2),
          # CPU time of all threads: what a clip costs on a busy machine.
          'cpu_s_per_clip': round((time.process_time() - cpu_start) / clips,
                                  3),
          'clip_shape': list(inputs.shape[1:]),
          'rand_augment': _RAND_AUGMENT.value, 'clips': clips,
          'cpu_count': os.cpu_count()}


def main(argv):
  del argv
  with tempfile.TemporaryDirectory() as temporary:
    data_dir = _DATA_DIR.value
    if data_dir is None:
      data_dir = temporary
      write_videos(data_dir, _NUM_VIDEOS.value)
    for workers in map(int, _WORKERS.value):
      print(json.dumps(time_workers(data_dir, workers)), flush=True)


if __name__ == '__main__':
  app.run(main)
