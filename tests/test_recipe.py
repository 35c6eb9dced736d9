"""`configs/medmnist3d.py`, the recommended ViViT recipe: the same for every
MedMNIST 3D set and both sizes, and it trains end to end (a few steps on a
tiny slice; the full recipe is a benchmark, `benchmarks/medmnist_ablation`)."""

import json

import jax
import numpy as np
import pytest

import vivit_jax
from benchmarks import ingredients
from tests.conftest import REPO, SHARED
from vivit_jax import checkpoints
from vivit_jax import config_builders
from vivit_jax import models
from vivit_jax import spec as spec_lib
from vivit_jax import steps
from vivit_jax import train
from vivit_jax import workdir as workdir_lib
from vivit_jax.data import dataset_configs
from vivit_jax.data import medmnist

RECIPE = str(REPO / 'configs' / 'medmnist3d.py')
# What a set's metadata may change in the recipe.
PER_SET = ('experiment_name', 'dataset_configs.dataset_name',
           'dataset_configs.num_classes', 'augmentation.flip_axes')


def _flat(config) -> dict:
  return workdir_lib.flat_fields(
      spec_lib.check_config(config, mode='model').config)


def test_the_recipe_differs_between_sets_only_where_their_metadata_does():
  adrenal = _flat(vivit_jax.load_config(f'{RECIPE}:adrenalmnist3d'))
  for name in medmnist.DATASETS:
    other = _flat(vivit_jax.load_config(f'{RECIPE}:{name}'))
    differing = {key for key in adrenal.keys() | other.keys()
                 if adrenal.get(key) != other.get(key)}
    assert differing <= set(PER_SET), (name, differing)


def test_the_recipe_is_the_ablation_rows_it_was_chosen_as():
  recipe = vivit_jax.load_config(f'{RECIPE}:adrenalmnist3d')
  rebuilt = vivit_jax.load_config(f'{RECIPE}:adrenalmnist3d')
  rebuilt.update_from_flattened_dict(ingredients.overrides(
      ingredients.RECIPE_ROWS, 'adrenalmnist3d'))
  assert _flat(rebuilt) == _flat(recipe)


def test_the_first_row_sets_every_field_a_row_sets():
  first = ingredients.INGREDIENTS['first'][1]
  for row, (_, fields) in ingredients.INGREDIENTS.items():
    assert set(fields) <= set(first), (row, set(fields) - set(first))


@pytest.mark.parametrize('row', list(ingredients.INGREDIENTS))
def test_every_ingredient_row_gives_a_valid_config(row):
  config = vivit_jax.load_config(f'{RECIPE}:adrenalmnist3d')
  config.update_from_flattened_dict(ingredients.overrides(
      (*ingredients.RECIPE_ROWS, row), 'adrenalmnist3d'))
  assert spec_lib.check_config(config, mode='model').num_tokens > 0


@pytest.mark.parametrize('size,tokens', [(28, 27), (64, 64)])
def test_size_64_keeps_the_token_count_small(size, tokens):
  config = vivit_jax.load_config(f'{RECIPE}:adrenalmnist3d')
  config.dataset_configs.size = size
  spec = spec_lib.check_config(config, mode='model')
  assert spec.input_shape == (size, size, size, 1)
  assert spec.num_tokens == tokens, spec.token_grid


def _slice_config(path, size: int = 28):
  config = vivit_jax.load_config(f'{RECIPE}:adrenalmnist3d')
  config.dataset_configs = dataset_configs.arrays_dataset(
      str(path), num_classes=2, num_frames=size, crop_size=size,
      class_names=medmnist.class_names('adrenalmnist3d'))
  config.num_training_steps = 2
  return config


@pytest.fixture(scope='module')
def recipe_run(tmp_path_factory):
  """The recipe as it is, trained for 2 steps on 32 training volumes of
  AdrenalMNIST3D (16 for validation and test): (workdir, results)."""
  tmp_path = tmp_path_factory.mktemp('recipe')
  path = tmp_path / 'slice.npz'
  sizes = {'train': 32, 'val': 16, 'test': 16}
  with np.load(SHARED / 'data' / 'adrenalmnist3d.npz') as npz:
    np.savez(path, **{f'{split}_{kind}': npz[f'{split}_{kind}'][:size]
                      for split, size in sizes.items()
                      for kind in ('images', 'labels')})
  return tmp_path / 'run', vivit_jax.train_and_evaluate(
      _slice_config(path), str(tmp_path / 'run'))


def test_the_recipe_trains_on_a_tiny_slice(recipe_run):
  """Results, predictions and figures."""
  workdir, results = recipe_run
  assert results['steps'] == 2
  assert np.isfinite(results['test']['loss'])
  saved = json.loads((workdir / 'results.json').read_text())
  assert saved['test']['acc'] == results['test']['acc']
  assert len((workdir / 'predictions.csv').read_text()
             .splitlines()) == 1 + 16
  assert (workdir / 'roc_curve.png').exists()


def test_the_recipe_predicts_at_another_size(recipe_run):
  """The stem's weights and BatchNorm statistics come along: on 29^3
  volumes that end in a slab of zeros, the stem's last pooling drops that
  slab and its padding was zeros, so the 3 x 3 x 3 tokens and the
  probabilities are those of the 28^3 volumes."""
  workdir, _ = recipe_run
  with np.load(SHARED / 'data' / 'adrenalmnist3d.npz') as npz:
    volumes = npz['test_images'][:8]
  trained = vivit_jax.Classifier.from_workdir(str(workdir))
  resized = vivit_jax.Classifier.from_workdir(
      str(workdir), _slice_config(workdir / 'unused.npz', size=29))
  assert len(resized.members) == len(trained.members)
  assert resized.spec.num_tokens == 27
  padded = np.pad(volumes, ((0, 0), (0, 1), (0, 1), (0, 1)))
  np.testing.assert_allclose(resized.predict(padded), trained.predict(volumes),
                             rtol=1e-5, atol=1e-6)


def test_fine_tuning_from_the_recipe_starts_from_its_stem_statistics(
    recipe_run):
  """A run initialised from a recipe run (`config.init_from`) starts from
  its parameters and its BatchNorm stem's running statistics."""
  workdir, _ = recipe_run
  config = _slice_config(workdir.parent / 'slice.npz')
  config.init_from = config_builders.init_from(str(workdir))
  spec = spec_lib.check_config(config)
  model = models.create_model(spec)
  state = train._load_pretrained(spec, steps.create_train_state(
      spec, model, jax.random.key(1)))
  expected = checkpoints.restore_eval_variables(str(workdir))
  jax.tree.map(np.testing.assert_array_equal, state.variables(), expected)
