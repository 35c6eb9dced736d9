"""Ensembles (`config.ensemble_size`, `vivit_jax.ensemble`): members are
ordinary runs from their own seeds, and training, eval mode and prediction
all classify by the mean of the members' probabilities."""

import json

import jax
import numpy as np
import pandas as pd
import pytest
from sklearn import metrics as sklearn_metrics

import vivit_jax
from tests.conftest import REPO, SHARED
from vivit_jax import checkpoints
from vivit_jax import ensemble
from vivit_jax import evaluate
from vivit_jax import spec as spec_lib
from vivit_jax import train
from vivit_jax import workdir as workdir_lib


def _config(ensemble_size: int = 2, rng_seed: int = 0):
  config = vivit_jax.load_config(str(REPO / 'configs/tiny.py'))
  config.dataset_configs.data_dir = str(SHARED / 'data')
  config.ensemble_size = ensemble_size
  config.rng_seed = rng_seed
  return config


def test_log_mean_softmax_is_the_log_of_the_mean_probabilities():
  rng = np.random.default_rng(0)
  logits = [rng.normal(size=(5, 3)) * 4 for _ in range(3)]
  probabilities = np.mean([np.exp(l) / np.exp(l).sum(-1, keepdims=True)
                           for l in logits], 0)
  np.testing.assert_allclose(ensemble.log_mean_softmax(logits),
                             np.log(probabilities), rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(ensemble.log_mean_softmax(logits[:1]),
                                logits[0].astype(np.float32))
  confident = [np.array([[0.0, 200.0]]), np.array([[0.0, 300.0]])]
  assert np.isfinite(ensemble.log_mean_softmax(confident)).all()


def test_members_of_different_ensembles_have_different_seeds():
  seeds = [ensemble.member_config(_config(3, seed), k).rng_seed
           for seed in range(3) for k in range(3)]
  assert seeds == list(range(9))
  assert ensemble.member_config(_config(1, 4), 0).rng_seed == 4
  assert ensemble.member_config(_config(3), 1).ensemble_size == 1
  assert ensemble.member_workdirs('w', _config(1)) == ['w']
  assert ensemble.member_workdirs('w', _config(2)) == ['w/members/0',
                                                       'w/members/1']


def test_ensemble_size_must_be_a_positive_integer():
  with pytest.raises(spec_lib.ConfigError, match='config.ensemble_size: 0 is '
                     'not a positive integer'):
    spec_lib.check_config(_config(0), mode='model')


@pytest.fixture(scope='module')
def ensemble_run(tmp_path_factory):
  workdir = tmp_path_factory.mktemp('ensemble')
  return workdir, train.train_and_evaluate(_config(), str(workdir))


def test_a_member_trains_as_a_single_run_of_its_seed(ensemble_run, tmp_path):
  workdir, results = ensemble_run
  assert results['ensemble_size'] == 2 and len(results['best_step']) == 2
  single = train.train_and_evaluate(_config(1, rng_seed=1), str(tmp_path))
  member = workdir / 'members' / '1'
  assert workdir_lib.load_config(str(member)).rng_seed == 1
  jax.tree.map(np.testing.assert_array_equal,
               checkpoints.restore_params(str(member)),
               checkpoints.restore_params(str(tmp_path)))
  assert results['best_step'][1] == single['best_step']


def test_results_are_those_of_the_mean_probabilities(ensemble_run):
  workdir, results = ensemble_run
  with np.load(SHARED / 'data' / 'adrenalmnist3d.npz') as arrays:
    volumes, labels = arrays['test_images'], arrays['test_labels'].ravel()
  members = [vivit_jax.Classifier.from_workdir(str(workdir / 'members' / k))
             for k in ('0', '1')]
  probabilities = np.mean([m.predict(volumes) for m in members], 0)
  assert not np.allclose(*(m.predict(volumes) for m in members))
  table = pd.read_csv(workdir / 'predictions.csv')
  written = table.filter(like='p_').to_numpy()
  np.testing.assert_allclose(written, probabilities, rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(table.label, labels)
  # From the probabilities written (a tiny model's near-ties reorder under
  # another batching).
  np.testing.assert_allclose(
      results['test']['auc'],
      sklearn_metrics.roc_auc_score(labels, written[:, 1]), rtol=1e-6)
  np.testing.assert_allclose(results['test']['acc'], np.mean(
      written.argmax(-1) == labels), rtol=1e-6)
  whole = vivit_jax.Classifier.from_workdir(str(workdir))
  np.testing.assert_allclose(whole.predict(volumes), probabilities,
                             rtol=1e-5, atol=1e-6)
  assert (workdir / 'curves.png').read_bytes()[:4] == b'\x89PNG'


def test_eval_mode_and_a_rerun_reproduce_the_results(ensemble_run):
  workdir, results = ensemble_run
  evaluated = evaluate.evaluate_workdir(str(workdir))
  assert evaluated['best_step'] == results['best_step']
  rerun = train.train_and_evaluate(_config(), str(workdir))
  for split in ('val', 'test'):
    for name in ('acc', 'auc', 'loss'):
      np.testing.assert_allclose(evaluated[split][name],
                                 results[split][name], rtol=1e-6)
      np.testing.assert_allclose(rerun[split][name], results[split][name],
                                 rtol=1e-6)
  assert json.loads((workdir / 'results.json').read_text()) == rerun


def test_another_ensemble_size_does_not_reuse_the_workdir(ensemble_run):
  workdir, _ = ensemble_run
  with pytest.raises(workdir_lib.WorkdirError,
                     match=r'ensemble_size 2 -> 3'):
    evaluate.evaluate_workdir(str(workdir), _config(3))


def test_an_ensemble_trained_on_t_frames_predicts_on_more(ensemble_run):
  workdir, _ = ensemble_run
  config = _config()
  config.dataset_configs.num_frames = 56
  volumes = np.random.default_rng(0).random((3, 56, 28, 28), np.float32)
  whole = vivit_jax.Classifier.from_workdir(str(workdir), config)
  assert len(whole.members) == 2
  members = [vivit_jax.Classifier.from_workdir(
      str(workdir / 'members' / str(k)), ensemble.member_config(config, k))
             for k in range(2)]
  np.testing.assert_allclose(
      whole.predict(volumes),
      np.mean([member.predict(volumes) for member in members], 0),
      rtol=1e-5, atol=1e-6)
