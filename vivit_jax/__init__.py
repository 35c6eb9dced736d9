"""vivit-jax: ViViT (Arnab et al., ICCV 2021) and its peers in JAX/Flax.

  import vivit_jax
  from vivit_jax import config_builders as builders

  config = vivit_jax.load_config('configs/medmnist3d.py:adrenalmnist3d')
  results = vivit_jax.train_and_evaluate(config, 'workdirs/adrenal')
  classifier = vivit_jax.Classifier.from_workdir('workdirs/adrenal')
  probabilities = classifier.predict(volumes)   # (N, T, H, W[, C]) -> (N, K)

`create_model(config)` builds a config's Flax module; `config_builders`
(and `vivit_jax.data.dataset_configs` for the data) makes configs from
Python; `evaluate_workdir(workdir)` re-evaluates a run.
"""

import importlib.util
import os

import ml_collections

from vivit_jax import config_builders
from vivit_jax.evaluate import evaluate_workdir
from vivit_jax.models import create_model
from vivit_jax.predict import Classifier
from vivit_jax.spec import check_config
from vivit_jax.spec import ConfigError
from vivit_jax.train import train_and_evaluate

__all__ = ['Classifier', 'ConfigError', 'check_config', 'config_builders',
           'create_model', 'evaluate_workdir', 'load_config',
           'train_and_evaluate']


def load_config(path_and_arg: str) -> ml_collections.ConfigDict:
  """The config of an experiment file, 'FILE' or 'FILE:ARG', as
  `run.py --config` reads it: the file's `get_config()` or `get_config(ARG)`.
  """
  path, _, arg = path_and_arg.partition(':')
  if not os.path.isfile(path):
    raise FileNotFoundError(f'{path} is not a config file.')
  module_spec = importlib.util.spec_from_file_location(
      f'vivit_jax_config_{abs(hash(os.path.abspath(path)))}', path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(arg) if arg else module.get_config()
