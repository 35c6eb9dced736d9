"""Tests of video decoding, sampling, augmentation and VideoSource, on tiny
videos written by tests/video_fixtures.py."""

import logging
import os

import av
import ml_collections
import numpy as np
import pytest

from tests import video_fixtures
from vivit_jax.data import DataError
from vivit_jax.data import dataset_configs
from vivit_jax.data import video
from vivit_jax.data import video_randaugment
from vivit_jax.data import video_source
from vivit_jax.data import video_transforms

CODECS = tuple(video_fixtures.CODECS)


def decode_all(path):
  """Every frame, with nothing of vivit_jax: the reference."""
  with av.open(path) as container:
    return np.stack([frame.to_ndarray(format='rgb24')
                     for frame in container.decode(video=0)])


@pytest.fixture(scope='module')
def pattern_videos(tmp_path_factory):
  """{codec: path} of 70-frame videos whose frames spell their index."""
  root = tmp_path_factory.mktemp('pattern')
  return {codec: video_fixtures.write_video(
      str(root / f'pattern.{video_fixtures.CODECS[codec][1]}'),
      video_fixtures.index_pattern(70), codec=codec) for codec in CODECS}


@pytest.fixture(scope='module')
def dataset(tmp_path_factory):
  """A folders-layout data set with one corrupt training file."""
  root = str(tmp_path_factory.mktemp('videos'))
  video_fixtures.write_dataset(root)
  video_fixtures.write_corrupt(os.path.join(root, 'train', 'up', 'bad.mp4'))
  return root


def make_config(data_dir, augment=True, **dataset_fields):
  config = ml_collections.ConfigDict()
  fields = dict(num_frames=8, stride=2, crop_size=32, min_resize=36,
                num_test_clips=2, num_test_crops=3)
  fields.update(dataset_fields)
  config.dataset_configs = dataset_configs.video_dataset(3, data_dir=data_dir,
                                                **fields)
  if augment:
    config.augmentation = video_transforms.augmentation_config(
        rand_augment_num_layers=2, rand_augment_magnitude=10,
        mixup_alpha=0.3, label_smoothing=0.1)
  config.batch_size, config.eval_batch_size, config.rng_seed = 4, 5, 0
  return config


@pytest.mark.parametrize('codec', CODECS)
def test_read_frames_are_the_frames_asked_for(pattern_videos, codec):
  path = pattern_videos[codec]
  reference = decode_all(path)
  info = video.probe(path)
  assert info.num_frames == len(reference) == 70
  np.testing.assert_array_equal(video_fixtures.read_index(reference),
                                np.arange(70))
  rng = np.random.default_rng(0)
  for _ in range(10):
    indices = rng.integers(0, 70, rng.integers(1, 12))
    np.testing.assert_array_equal(video.read_frames(info, indices),
                                  reference[indices])
  # A training clip deep in the video, after several keyframes.
  indices = np.arange(41, 57, 2)
  np.testing.assert_array_equal(video.read_frames(info, indices),
                                reference[indices])
  # Resizing keeps the frames' identity.
  np.testing.assert_array_equal(video_fixtures.read_index(
      video.read_frames(info, indices, size=(24, 40))), indices)


@pytest.mark.parametrize('seek', (True, False))
@pytest.mark.parametrize('codec', CODECS)
def test_seeking_and_sequential_decoding_read_every_frame(pattern_videos,
                                                          codec, seek):
  path = pattern_videos[codec]
  info, reference = video.probe(path), decode_all(path)
  needed = np.array([3, 30, 31, 45, 69])
  # pylint: disable-next=protected-access
  frames = video._decode(info, needed, None, seek=seek)
  assert sorted(frames) == needed.tolist()
  for index, frame in frames.items():
    np.testing.assert_array_equal(frame, reference[index])


def test_variable_frame_rate(tmp_path):
  pts_ms = np.cumsum([0] + [20, 40, 80] * 13)  # 40 frames.
  path = video_fixtures.write_video(
      str(tmp_path / 'vfr.mp4'), video_fixtures.index_pattern(40),
      pts=pts_ms)
  info = video.probe(path)
  np.testing.assert_allclose(info.seconds(), pts_ms / 1000)
  # 'frames': step i is frame i, whatever its time.
  np.testing.assert_array_equal(video.timeline(info, 'frames'), np.arange(40))
  # 'time': the frame shown at each multiple of 1/25 s.
  steps = video.timeline(info, 'time', 25)
  instants = np.arange(len(steps)) * 40
  expected = np.searchsorted(pts_ms, instants, side='right') - 1
  np.testing.assert_array_equal(steps, expected)
  assert len(steps) == pts_ms[-1] // 40 + 1
  np.testing.assert_array_equal(
      video_fixtures.read_index(video.read_frames(info, steps[:10])),
      steps[:10])


def test_time_sampling_equalises_frame_rates(tmp_path):
  infos = [video.probe(video_fixtures.write_video(
      str(tmp_path / f'{fps}.mp4'), video_fixtures.index_pattern(n), fps=fps))
           for fps, n in ((50, 80), (25, 40))]
  fast, slow = (video.timeline(info, 'time', 25) for info in infos)
  assert len(fast) == len(slow) == 40
  np.testing.assert_array_equal(fast, 2 * slow)


def test_train_clip_sampling():
  rng = np.random.default_rng(0)
  starts = set()
  for _ in range(200):
    clip = video.train_clip(rng, 40, 8, 2)
    np.testing.assert_array_equal(np.diff(clip), 2)
    starts.add(clip[0])
  assert starts == set(range(40 - 15 + 1))  # Every start, none beyond.
  # Shorter than a clip: looped.
  np.testing.assert_array_equal(video.train_clip(rng, 5, 4, 2), [0, 2, 4, 1])


def test_eval_clips_are_evenly_spaced_and_cover_the_video():
  clips = video.eval_clips(99, 8, 2, 4)
  assert clips[0, 0] == 0 and clips[-1, -1] == 98
  np.testing.assert_array_equal(np.diff(clips[:, 0]), 28)
  np.testing.assert_array_equal(np.diff(clips, axis=1), 2)
  np.testing.assert_array_equal(video.eval_clips(100, 8, 2, 1)[0, 0], 42)
  np.testing.assert_array_equal(video.eval_clips(6, 4, 2, 2),
                                [[0, 2, 4, 0], [0, 2, 4, 0]])


def test_prediction_views_cover_the_video_and_are_deterministic(
    pattern_videos):
  config = make_config(None, num_test_clips=4, num_test_crops=3,
                       min_resize=32)
  views, info = video_source.prediction_views(pattern_videos['mjpeg'], config)
  assert views.shape == (12, 8, 32, 32, 3) and views.dtype == np.float32
  assert info == {'num_clips': 4, 'num_crops': 3, 'num_views': 12,
                  'video_frames': 70, 'fps': 25.0, 'height': 64, 'width': 64}
  indices = np.stack([video_fixtures.read_index((v + 1) * 127.5)
                      for v in views[::3]])  # The centre-left crops.
  np.testing.assert_array_equal(indices, video.eval_clips(70, 8, 2, 4))
  again, _ = video_source.prediction_views(pattern_videos['mjpeg'], config)
  np.testing.assert_array_equal(views, again)


def test_eval_crops():
  assert video_transforms.eval_crops(36, 48, 32, 3) == [(2, 0), (2, 8),
                                                       (2, 16)]
  assert video_transforms.eval_crops(48, 36, 32, 3) == [(0, 2), (8, 2),
                                                       (16, 2)]
  assert video_transforms.eval_crops(36, 48, 32, 1) == [(2, 8)]


@pytest.mark.parametrize('op', video_randaugment.OPS)
def test_rand_augment_ops_are_the_same_on_every_frame(op):
  frame = np.random.default_rng(0).integers(0, 256, (1, 20, 24, 3), np.uint8)
  clip = np.repeat(frame, 4, axis=0)
  out = video_randaugment.apply_op(op, clip, 10, -1.0)
  assert out.shape == clip.shape and out.dtype == np.uint8
  np.testing.assert_array_equal(out, np.repeat(out[:1], 4, axis=0))


def test_training_augmentation_keeps_a_static_video_static(tmp_path):
  rng = np.random.default_rng(0)
  for split in ('train', 'val', 'test'):
    for name in video_fixtures.DIRECTIONS:
      os.makedirs(tmp_path / split / name)
      for i in range(2):
        frame = rng.integers(0, 256, (1, 48, 64, 3), np.uint8)
        video_fixtures.write_video(
            str(tmp_path / split / name / f'{i}.avi'),
            np.repeat(frame, 12, axis=0), codec='mjpeg')
  config = make_config(str(tmp_path))
  config.augmentation.prob_color_drop = 0.5
  source = video_source.VideoSource(config)
  for step in range(3):
    inputs = source.train_batch(step)['inputs']
    np.testing.assert_array_equal(inputs, np.repeat(inputs[:, :1], 8, axis=1))
    assert inputs.min() >= -1 and inputs.max() <= 1


def test_source_interface_and_corrupt_file(dataset, caplog):
  with caplog.at_level(logging.WARNING):
    source = video_source.VideoSource(make_config(dataset))
  assert 'bad.mp4' in caplog.text
  bad = os.path.join(dataset, 'train', 'up', 'bad.mp4')
  assert source.skipped == {bad: 1}
  assert source.task == 'multi-class'
  assert source.class_names == ['down', 'still', 'up']
  assert source.num_classes == 3
  assert [source.num_examples(s) for s in ('train', 'val', 'test')] == [
      18, 9, 9]
  batch = source.train_batch(0)
  assert batch['inputs'].shape == (4, 8, 32, 32, 3)
  assert batch['inputs'].dtype == batch['targets'].dtype == np.float32
  assert batch['labels'].dtype == np.int32
  np.testing.assert_allclose(batch['targets'].sum(-1), 1, rtol=1e-6)


def test_train_batch_is_a_pure_function_of_seed_and_step(dataset):
  first, second = (video_source.VideoSource(make_config(dataset))
                   for _ in range(2))
  later = first.train_batch(7)  # Out of order, on another instance.
  for step in (0, 7):
    a, b = second.train_batch(step), first.train_batch(step)
    for key in a:
      np.testing.assert_array_equal(a[key], b[key])
  assert not np.array_equal(second.train_batch(0)['inputs'], later['inputs'])
  assert not np.array_equal(first.train_batch(1)['inputs'],
                            first.train_batch(2)['inputs'])
  config = make_config(dataset)
  config.rng_seed = 1
  other_seed = video_source.VideoSource(config).train_batch(7)
  assert not np.array_equal(other_seed['inputs'], later['inputs'])


def test_eval_batches_hold_every_view_in_order(dataset):
  source = video_source.VideoSource(make_config(dataset))
  batches = list(source.eval_batches('val'))
  again = list(source.eval_batches('val'))
  for a, b in zip(batches, again):
    for key in a:
      np.testing.assert_array_equal(a[key], b[key])
  index = np.concatenate([b['index'] for b in batches])
  mask = np.concatenate([b['mask'] for b in batches])
  labels = np.concatenate([b['labels'] for b in batches])
  assert all(b['inputs'].shape == (5, 8, 32, 32, 3) for b in batches)
  assert len(index) == 55  # 9 videos x 2 clips x 3 crops, padded to 5s.
  np.testing.assert_array_equal(index[:54], np.repeat(np.arange(9), 6))
  np.testing.assert_array_equal(index[54:], -1)
  np.testing.assert_array_equal(mask, np.r_[np.ones(54), 0])
  np.testing.assert_array_equal(labels[:54], np.repeat([0, 1, 2], 18))
  sevens = list(source.eval_batches('val', batch_size=7))
  assert len(sevens) == 8 and sevens[-1]['mask'].sum() == 5


def test_a_video_that_stops_decoding_is_replaced_deterministically(
    dataset, monkeypatch, caplog):
  source = video_source.VideoSource(make_config(dataset, augment=False))
  # pylint: disable=protected-access
  broken = source._videos['train'][source._epoch_order(0)[0]][0].path
  read_frames = video.read_frames

  def failing(info, *args, **kwargs):
    if info.path == broken:
      raise video.VideoReadError(f'{broken}: cannot read the video')
    return read_frames(info, *args, **kwargs)

  monkeypatch.setattr(video, 'read_frames', failing)
  steps = range(source.num_examples('train') // 4)
  with caplog.at_level(logging.WARNING):
    batches = [source.train_batch(step) for step in steps]
  assert caplog.text.count(broken) == 1
  assert source.skipped[broken] == 1  # Once per epoch.
  fresh = video_source.VideoSource(make_config(dataset, augment=False))
  monkeypatch.setattr(video, 'read_frames', failing)
  for step in reversed(steps):
    np.testing.assert_array_equal(fresh.train_batch(step)['inputs'],
                                  batches[step]['inputs'])
  assert fresh.skipped == source.skipped


def test_a_split_without_readable_videos_is_one_line_error(tmp_path):
  video_fixtures.write_dataset(str(tmp_path), per_class=(1, 1, 0))
  os.makedirs(tmp_path / 'test' / 'up', exist_ok=True)
  video_fixtures.write_corrupt(str(tmp_path / 'test' / 'up' / 'x.mp4'))
  with pytest.raises(DataError) as error:
    video_source.VideoSource(make_config(str(tmp_path)))
  message = str(error.value)
  assert '\n' not in message and 'test split' in message
  assert '1 listed, all unreadable' in message


def test_csv_layout(dataset, tmp_path):
  for split in ('train', 'val', 'test'):
    lines = ['path,label'] + [
        f'{os.path.join(dataset, split, name, file)},{name}'
        for name in sorted(os.listdir(os.path.join(dataset, split)))
        for file in sorted(os.listdir(os.path.join(dataset, split, name)))]
    (tmp_path / f'{split}.csv').write_text('\n'.join(lines) + '\n')
  config = make_config(str(tmp_path), layout='csv')
  source = video_source.VideoSource(config)
  assert source.class_names == ['down', 'still', 'up']
  bad = os.path.join(dataset, 'train', 'up', 'bad.mp4')
  assert source.skipped == {bad: 1}
  folders = video_source.VideoSource(make_config(dataset))
  np.testing.assert_array_equal(source.train_batch(2)['inputs'],
                                folders.train_batch(2)['inputs'])
  (tmp_path / 'val.csv').write_text('a.mp4,7\n')
  (tmp_path / 'train.csv').write_text('b.mp4,1\n')
  (tmp_path / 'test.csv').write_text('c.mp4,0\n')
  with pytest.raises(DataError, match=r'label 7, outside \[0, 3\)'):
    video_source.VideoSource(config)


@pytest.mark.parametrize('field, value, message', [
    ('num_classes', 4, 'has 3 classes .* set it to 3'),
    ('min_resize', 16, 'min_resize: 16 is smaller than crop_size 32'),
    ('num_test_crops', 2, 'num_test_crops: 2 crops'),
    ('layout', 'lists', "layout: unknown 'lists'"),
    ('sample_by', 'time', "target_fps: None is not a rate to sample 'time'"),
    ('augmentation.prob_flip', 1.5, r'prob_flip: 1.5 is outside \[0, 1\]'),
    ('augmentation.scale_min_factor', 2.0,
     r'scale_min_factor: 2.0 is outside \[0.001, 1.33\]'),
    ('augmentation.color_jitter', (0.4,), 'color_jitter: .* not four'),
    ('data_dir', '/nonexistent', 'data_dir .* is not a folder'),
])
def test_config_errors_are_one_line(dataset, field, value, message):
  config = make_config(dataset)
  if field.startswith('augmentation.'):
    config.augmentation[field.split('.')[1]] = value
  else:
    config.dataset_configs[field] = value
  with pytest.raises(DataError, match=message) as error:
    video_source.VideoSource(config)
  assert '\n' not in str(error.value)


def test_color_augment_is_one_affine_map_of_rgb():
  frames = np.random.default_rng(0).integers(0, 256, (2, 6, 8, 3), np.uint8)
  rng = np.random.default_rng(1)
  kwargs = dict(prob_color_drop=0.0, color_jitter=(0.4, 0.0, 0.0, 0.0))
  plain = video_transforms.color_augment(rng, frames, prob_color_augment=0.0,
                                         **kwargs)
  np.testing.assert_allclose(plain, frames / 255, atol=1e-6)
  brighter = video_transforms.color_augment(rng, frames,
                                            prob_color_augment=1.0, **kwargs)
  darkest = np.unravel_index(np.argmin(np.where(plain > 0, plain, 1)),
                             plain.shape)
  factor = brighter[darkest] / plain[darkest]
  assert 0.6 <= factor <= 1.4
  np.testing.assert_allclose(brighter, np.clip(plain * factor, 0, 1),
                             atol=1e-5)
  grey = video_transforms.color_augment(
      rng, frames, prob_color_augment=0.0, prob_color_drop=1.0,
      color_jitter=(0.4, 0.4, 0.4, 0.1))
  np.testing.assert_allclose(grey, np.repeat(grey[..., :1], 3, -1),
                             atol=1e-6)


def test_source_samples_by_time(dataset):
  config = make_config(dataset, augment=False, sample_by='time',
                       target_fps=12.5)
  source = video_source.VideoSource(config)
  assert source.train_batch(0)['inputs'].shape == (4, 8, 32, 32, 3)
  views = next(source.eval_batches('test'))['inputs']
  assert views.shape == (5, 8, 32, 32, 3) and np.isfinite(views).all()
