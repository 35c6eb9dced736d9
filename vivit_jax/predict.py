"""Classifying clips with a trained or pretrained model
(`run.py --mode=predict`, `vivit_jax.Classifier`).

  classifier = Classifier.from_workdir('workdirs/adrenal')
  probabilities = classifier.predict(volumes)   # (N, K)
  for line in predict_path(classifier, 'volumes/'):
    print(json.dumps(line))

Inputs are clips of the model's shape (T, H, W, C), or (T, H, W) when C = 1:
uint8 in [0, 255] or floats in [0, 1], one clip or a stack of them, in .npy
or .npz files (every array of an npz, or its `test_images`); video files
(read as the config's evaluation views, whose logits are averaged); or a
folder of such files. The workdir of an ensemble classifies by the mean of
its members' probabilities.

A model trained on T frames runs on T' (or another frame size): give the
workdir with a config whose `dataset_configs.num_frames` (`crop_size`) is
the new one, and the positional embeddings are interpolated as they are
when initialising from a checkpoint (`pretrained`); a convolutional stem
keeps its weights and BatchNorm statistics.
"""

import dataclasses
import functools
import os
from typing import Iterator, Optional

import jax
import ml_collections
import numpy as np

from vivit_jax import config_builders
from vivit_jax import data
from vivit_jax import ensemble
from vivit_jax import evaluate
from vivit_jax import models
from vivit_jax import pretrained
from vivit_jax import spec as spec_lib
from vivit_jax import steps
from vivit_jax import workdir as workdir_lib
from vivit_jax.data import video_lists

ARRAY_SUFFIXES = ('.npy', '.npz')
VIDEO_SUFFIXES = video_lists.VIDEO_EXTENSIONS
# Config fields a trained model's weights adapt to by interpolation.
_INPUT_SIZE_FIELDS = ('dataset_configs.num_frames', 'dataset_configs.crop_size')


class InputError(Exception):
  """An input cannot be read or does not fit the model; one line."""


@dataclasses.dataclass
class Classifier:
  """A model with its variables, ready to classify clips; an ensemble
  classifies by the mean of its members' probabilities.

  Attributes:
    spec: the checked config of the model.
    model: the Flax module.
    members: the variables of each member, on the host (one for a single
      model).
  """
  spec: spec_lib.Spec
  model: object
  members: list[dict]

  @classmethod
  def from_workdir(cls, workdir: str,
                   config: Optional[ml_collections.ConfigDict] = None
                   ) -> 'Classifier':
    """The best checkpoint of a training run (of each member, for an
    ensemble; see `evaluate.restore_members`).

    A `config` that differs from the workdir's only in its input size
    (frames, crop) gets the run's weights through `pretrained`, with its
    positional embeddings interpolated to the new token grid.
    """
    if config is not None:
      given = spec_lib.check_config(config, mode='model').config
      differences = workdir_lib.structural_differences(
          workdir_lib.load_config(workdir), given)
      if differences and all(difference.startswith(_INPUT_SIZE_FIELDS)
                             for difference in differences):
        members = [cls._resized(member_workdir,
                                ensemble.member_config(given, k))
                   for k, member_workdir in enumerate(
                       ensemble.member_workdirs(workdir, given))]
        return cls(members[0].spec, members[0].model,
                   [variables for member in members
                    for variables in member.members])
    spec, model, members, _ = evaluate.restore_members(workdir, config)
    return cls(spec, model, members)

  @classmethod
  def _resized(cls, workdir: str, config: ml_collections.ConfigDict
               ) -> 'Classifier':
    """The model of `config`, from the weights of the run in `workdir`."""
    config = config.copy_and_resolve_references()
    with config.unlocked():
      config.init_from = config_builders.init_from(workdir)
    return cls.from_config(config)

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict) -> 'Classifier':
    """The model of `config`, with the weights of `config.init_from` (a ViT
    checkpoint, a Hugging Face folder or a workdir, mapped as for training),
    else at its initialisation."""
    spec = spec_lib.check_config(config, mode='model')
    model = models.create_model(spec)
    variables = steps.init_variables(model, spec,
                                     jax.random.key(spec.config.rng_seed))
    if spec.init_checkpoint:
      variables, _ = pretrained.load_pretrained(spec.config, variables)
    return cls(spec, model, [variables])

  @property
  def class_names(self) -> tuple[str, ...]:
    return self.spec.class_names

  @functools.cached_property
  def _apply(self):
    return jax.jit(functools.partial(self.model.apply, train=False))

  def as_clips(self, array: np.ndarray, name: str = 'input') -> np.ndarray:
    """One clip or a stack of clips as (N, T, H, W, C) float32 in [0, 1].

    Raises:
      InputError: the shape fits neither.
    """
    shape = self.spec.input_shape
    array = np.asarray(array)
    if array.shape[-len(shape):] != shape and shape[-1] == 1 and (
        array.shape[-(len(shape) - 1):] == shape[:-1]):
      array = array[..., None]
    if array.shape == shape:
      array = array[None]
    if array.ndim != len(shape) + 1 or array.shape[1:] != shape:
      raise InputError(
          f'{name} has shape {array.shape}; the model takes clips of shape '
          f'{shape} (or a stack of them): resize or crop them to fit.')
    if array.dtype == np.uint8:
      return np.divide(array, 255, dtype=np.float32)
    return array.astype(np.float32)

  def logits(self, clips: np.ndarray, batch_size: int = 32) -> np.ndarray:
    """Logits (N, K) of `clips` (see `as_clips`): the mean over the config's
    evaluation views of a volume (`augment.eval_views`), as in evaluation;
    for an ensemble, the log of the mean of its members' probabilities."""
    clips = self.as_clips(clips)
    return ensemble.log_mean_softmax([
        self._member_logits(variables, clips, batch_size)
        for variables in self.members])

  def _member_logits(self, variables: dict, clips: np.ndarray,
                     batch_size: int) -> np.ndarray:
    """(N, K) one member's logits of (N, T, H, W, C) `clips`, averaged over
    the evaluation views."""
    views = data.augment.eval_views(self.spec.config.get('augmentation') or {})
    logits = []
    for axes in views:
      for batch in data.sources.padded_batches(
          {'inputs': np.flip(clips, axes)}, batch_size):
        logits.append(np.asarray(self._apply(
            variables, batch['inputs']))[batch['mask'] > 0])
    return np.concatenate(logits).reshape(len(views), len(clips), -1).mean(0)

  def predict(self, clips: np.ndarray, batch_size: int = 32) -> np.ndarray:
    """Class probabilities (N, K) of `clips` (see `as_clips`)."""
    return np.asarray(jax.nn.softmax(self.logits(clips, batch_size)))

  def predict_video(self, path: str) -> tuple[np.ndarray, dict]:
    """Class probabilities (K,) of a video file, from the mean logits of the
    config's evaluation views, and what was read (`data.prediction_views`).

    Raises:
      data.DataError: the file cannot be read.
    """
    views, info = data.prediction_views(path, self.spec.config)
    views = self.as_clips(views)
    logits = ensemble.log_mean_softmax([
        self._member_logits(variables, views, 32).mean(0)
        for variables in self.members])
    return np.asarray(jax.nn.softmax(logits)), info


def read_arrays(path: str) -> Iterator[tuple[str, np.ndarray]]:
  """(name, array) of each array at `path`: an .npy, an .npz (its
  `test_images` if it has them, else every array) or a folder of them.

  Raises:
    InputError: the path does not exist or holds no array file.
  """
  if os.path.isdir(path):
    files = sorted(os.path.join(path, name) for name in os.listdir(path)
                   if name.endswith(ARRAY_SUFFIXES))
    yield from (item for file in files for item in read_arrays(file))
    return
  if not os.path.isfile(path):
    raise InputError(f'{path} does not exist: give a file or a folder.')
  if not path.endswith(ARRAY_SUFFIXES):
    raise InputError(f'{path} is not an {" or ".join(ARRAY_SUFFIXES)} file.')
  try:
    loaded = np.load(path)
  except (OSError, ValueError) as error:
    raise InputError(f'{path} cannot be read: {error}') from error
  if isinstance(loaded, np.ndarray):
    yield path, loaded
    return
  with loaded:
    keys = ['test_images'] if 'test_images' in loaded else list(loaded)
    for key in keys:
      yield f'{path}:{key}', loaded[key]


def _videos(path: str) -> list[str]:
  if os.path.isdir(path):
    return sorted(os.path.join(path, name) for name in os.listdir(path)
                  if name.lower().endswith(VIDEO_SUFFIXES))
  return [path] if path.lower().endswith(VIDEO_SUFFIXES) else []


def _record(name: str, probabilities: np.ndarray, class_names, top_k: int,
            **extra) -> dict:
  order = np.argsort(-probabilities)[:top_k]
  return {
      'input': name,
      'probabilities': {class_names[k]: round(float(p), 6)
                        for k, p in enumerate(probabilities)},
      'top': [[class_names[k], round(float(probabilities[k]), 6)]
              for k in order],
      **extra}


def predict_path(classifier: Classifier, path: str, top_k: int = 3
                 ) -> Iterator[dict]:
  """One record per clip or video at `path`: {'input': 'file[:key][index]',
  'probabilities': {class: p}, 'top': [[class, p], ...] (the `top_k` most
  probable)}, and for a video 'views' (clips x crops whose logits were
  averaged).

  Raises:
    InputError: the path holds nothing to classify, or an unreadable file.
  """
  names = classifier.class_names
  videos = _videos(path)
  arrays = [] if videos and not os.path.isdir(path) else read_arrays(path)
  found = bool(videos)
  for name, array in arrays:
    found = True
    clips = classifier.as_clips(array, name)
    single = clips.shape[0] == 1 and np.asarray(array).ndim < clips.ndim
    for index, row in enumerate(classifier.predict(clips)):
      yield _record(name if single else f'{name}[{index}]', row, names, top_k)
  for video in videos:
    try:
      probabilities, info = classifier.predict_video(video)
    except data.DataError as error:
      raise InputError(str(error)) from error
    yield _record(video, probabilities, names, top_k, views=info['num_views'])
  if not found:
    raise InputError(f'{path} holds no {", ".join(ARRAY_SUFFIXES)} or video '
                     'file.')
