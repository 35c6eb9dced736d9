"""The package as a new user meets it: the Python API outside the repo, your
own data, every config's check and summary, predict, eval from a workdir
alone, bench on a video-shaped config, and the bundled AdrenalMNIST3D."""

import json
import os
import pathlib
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

import vivit_jax
from tests.conftest import REPO, SHARED
from vivit_jax import pretrained
from vivit_jax import spec as spec_lib
from vivit_jax import summary
from vivit_jax.data import dataset_configs
from vivit_jax.data import medmnist

# Every config file and its arguments (None: get_config() without one).
CONFIGS = {
    'adrenal.py': ('model1', 'model2', 'model3', 'model4', 'cnn3d', 'vtn',
                   'vidtr'),
    'adrenal_deit.py': ('central_frame', 'average_frame', 'random'),
    'adrenal_deit_hybrid.py': ('pretrained', 'scratch'),
    'medmnist3d.py': ('adrenalmnist3d', 'organmnist3d', 'vesselmnist3d'),
    'termproject.py': ('vivit1', 'vivit2', 'cnn3d'),
    'tiny.py': (None,),
    'video_tiny.py': (None,),
    'vidtr.py': ('s', 'm', 'l', 'compact_s', 'compact_m'),
    'vtn.py': ('1layer', '3layer'),
    'vivit_b.py': (None, 'kinetics400', 'video'),
}


def write_volumes(path: pathlib.Path, num_classes: int = 3, size: int = 8,
                  seed: int = 0) -> pathlib.Path:
  """A MedMNIST-format npz of random uint8 volumes whose mean intensity
  grows with the label."""
  rng = np.random.default_rng(seed)
  arrays = {}
  for split, count in (('train', 24), ('val', 9), ('test', 9)):
    labels = np.arange(count) % num_classes
    images = rng.integers(0, 80, (count, size, size, size), np.uint8)
    arrays[f'{split}_images'] = images + (60 * labels)[:, None, None, None
                                                        ].astype(np.uint8)
    arrays[f'{split}_labels'] = labels[:, None].astype(np.uint8)
  np.savez(path, **arrays)
  return path


def run(*args, cwd=REPO, timeout=300) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True,
                        text=True, timeout=timeout,
                        env=dict(os.environ, PYTHONPATH=str(REPO)))


def test_python_api_outside_the_repo(tmp_path):
  data_path = write_volumes(tmp_path / 'mine.npz')
  script = textwrap.dedent(f"""
      import numpy as np
      import vivit_jax
      from vivit_jax import config_builders as builders
      from vivit_jax.data import dataset_configs

      config = builders.training('adamw', 1e-3, batch_size=8,
                                 num_training_epochs=1)
      config.model = builders.vivit_model(
          hidden_size=16, num_layers=1, num_heads=2, mlp_dim=32,
          patch_size=(4, 4, 4))
      config.dataset_configs = dataset_configs.arrays_dataset(
          {str(data_path)!r}, num_classes=3, num_frames=8, crop_size=8,
          class_names=('low', 'mid', 'high'))
      config.log_summary_steps = 1
      model = vivit_jax.create_model(config)
      results = vivit_jax.train_and_evaluate(config, 'workdir')
      classifier = vivit_jax.Classifier.from_workdir('workdir')
      volumes = np.load({str(data_path)!r})['test_images']
      probabilities = classifier.predict(volumes)
      assert probabilities.shape == (9, 3), probabilities.shape
      np.testing.assert_allclose(probabilities.sum(-1), 1, rtol=1e-5)
      assert classifier.class_names == ('low', 'mid', 'high')
      print(type(model).__name__, results['steps'], results['test']['acc'])
  """)
  result = subprocess.run([sys.executable, '-c', script], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300,
                          env={k: v for k, v in os.environ.items()
                               if k != 'PYTHONPATH'})
  assert result.returncode == 0, result.stderr[-3000:]
  name, steps, _ = result.stdout.split()
  assert (name, steps) == ('ViViT', '3')
  assert 'step 3/3' in result.stderr  # Logging shows without absl.
  assert (tmp_path / 'workdir' / 'results.json').exists()


@pytest.fixture(scope='module')
def trained_workdir(tmp_path_factory) -> pathlib.Path:
  """configs/tiny.py trained on the bundled AdrenalMNIST3D."""
  workdir = tmp_path_factory.mktemp('tiny')
  vivit_jax.train_and_evaluate(
      vivit_jax.load_config(str(REPO / 'configs/tiny.py')), str(workdir))
  return workdir


def test_workdir_keeps_its_config(trained_workdir):
  saved = json.loads((trained_workdir / 'config.json').read_text())
  assert saved['experiment_name'] == 'tiny_adrenalmnist3d'
  assert saved['model']['gelu_approximate'] is True  # Defaults filled in.
  assert (trained_workdir / 'parameters.txt').read_text().count('\n') > 5
  predictions = (trained_workdir / 'predictions.csv').read_text().splitlines()
  assert predictions[0] == 'index,label,p_normal,p_hyperplasia'
  assert len(predictions) == 1 + 298


def test_eval_and_predict_need_only_the_workdir(trained_workdir, tmp_path):
  evaluated = run('run.py', '--mode=eval', f'--workdir={trained_workdir}')
  assert evaluated.returncode == 0, evaluated.stderr[-3000:]
  results = json.loads((trained_workdir / 'results.json').read_text())
  assert json.loads(evaluated.stdout.splitlines()[-1])['test']['auc'] == (
      pytest.approx(results['test']['auc'], rel=1e-6))

  with np.load(SHARED / 'data' / 'adrenalmnist3d.npz') as npz:
    np.save(tmp_path / 'five.npy', npz['test_images'][:5])
    np.save(tmp_path / 'one.npy', npz['test_images'][7])
  predicted = run('run.py', '--mode=predict', f'--workdir={trained_workdir}',
                  f'--input={tmp_path}', '--top_k=1')
  assert predicted.returncode == 0, predicted.stderr[-3000:]
  lines = [json.loads(line) for line in predicted.stdout.splitlines()]
  assert [line['input'] for line in lines] == [
      f'{tmp_path / "five.npy"}[{i}]' for i in range(5)] + [
          str(tmp_path / 'one.npy')]
  for line in lines:
    assert set(line['probabilities']) == {'normal', 'hyperplasia'}
    assert sum(line['probabilities'].values()) == pytest.approx(1, abs=1e-5)
    assert line['top'][0][1] == max(line['probabilities'].values())


def test_eval_with_a_mismatched_config_is_one_line(trained_workdir):
  result = run('run.py', '--mode=eval', f'--workdir={trained_workdir}',
               '--config=configs/tiny.py', '--config.model.hidden_size=32')
  assert result.returncode != 0
  assert 'Traceback' not in result.stderr
  last = result.stderr.strip().splitlines()[-1]
  assert last.startswith('WorkdirError: The config does not match')
  assert 'model.hidden_size 16 -> 32' in last


def test_predict_names_an_input_of_the_wrong_shape(trained_workdir, tmp_path):
  np.save(tmp_path / 'wrong.npy', np.zeros((2, 28, 28), np.uint8))
  result = run('run.py', '--mode=predict', f'--workdir={trained_workdir}',
               f'--input={tmp_path / "wrong.npy"}')
  assert result.returncode != 0 and 'Traceback' not in result.stderr
  assert result.stderr.strip().splitlines()[-1].startswith(
      f'InputError: {tmp_path / "wrong.npy"} has shape (2, 28, 28)')


@pytest.mark.parametrize('file_and_arg', [
    f'{name}:{arg}' if arg else name
    for name, args in CONFIGS.items() for arg in args])
def test_every_config_checks_and_summarizes(file_and_arg):
  assert {path.name for path in (REPO / 'configs').glob('*.py')} == (
      set(CONFIGS) | {'own_data.py'})
  config = vivit_jax.load_config(str(REPO / 'configs' / file_and_arg))
  if config.dataset_configs.dataset_name in medmnist.DATASETS:
    config.num_training_epochs = 1  # Short runs work on every config.
    spec = spec_lib.check_config(config, mode='train')
    assert spec.warmup_steps < spec.total_steps
  figures = summary.summarize(config)
  assert figures['params'] > 0 and figures['gflops'] > 0


def test_own_data_config_reads_the_file(tmp_path):
  path = write_volumes(tmp_path / 'mine.npz', num_classes=4, size=12)
  config = vivit_jax.load_config(f'{REPO / "configs/own_data.py"}:{path}')
  spec = spec_lib.check_config(config, mode='train')
  assert spec.num_classes == 4 and spec.input_shape == (12, 12, 12, 1)
  assert spec.split_sizes == {'train': 24, 'val': 9, 'test': 9}
  assert spec.class_names == ('0', '1', '2', '3')


def test_bench_runs_on_a_kinetics_shaped_config():
  result = run('run.py', '--config=configs/vivit_b.py:kinetics400',
               '--mode=bench', '--config.model.num_layers=1',
               '--config.batch_size=2', '--config.eval_batch_size=2',
               '--bench_warmup_steps=0', '--bench_timed_steps=1', timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  figures = json.loads(result.stdout.strip().splitlines()[-1])
  assert figures['tokens'] == 16 * 14 * 14 and figures['batch_size'] == 2
  assert figures['train_samples_per_s'] > 0


def test_adrenalmnist3d_is_bundled(tmp_path, monkeypatch):
  monkeypatch.setattr(medmnist, 'DEFAULT_DATA_DIR', str(tmp_path / 'absent'))
  monkeypatch.setenv(medmnist.OFFLINE_ENV, '1')
  path = medmnist.find_file(dataset_configs.medmnist_dataset('adrenalmnist3d'))
  assert path == os.path.join(medmnist.BUNDLED_DIR, 'adrenalmnist3d.npz')
  assert (pathlib.Path(path).read_bytes() ==
          (SHARED / 'data' / 'adrenalmnist3d.npz').read_bytes())
  assert not (tmp_path / 'absent').exists()


def test_a_run_trained_on_t_frames_predicts_on_more(trained_workdir):
  """configs/tiny.py: 28 slices, tubelets of 7^3 -> 4 time steps of 4 x 4
  positions and a class token; on 56 slices, 8 time steps whose positional
  embeddings are the trained ones interpolated over time."""
  config = vivit_jax.load_config(str(REPO / 'configs/tiny.py'))
  config.dataset_configs.num_frames = 56
  classifier = vivit_jax.Classifier.from_workdir(str(trained_workdir), config)
  probabilities = classifier.predict(
      np.random.default_rng(0).random((3, 56, 28, 28), np.float32))
  assert probabilities.shape == (3, 2)
  np.testing.assert_allclose(probabilities.sum(-1), 1, rtol=1e-5)

  trained = vivit_jax.Classifier.from_workdir(str(trained_workdir))
  name = ('Transformer', 'posembed_input', 'pos_embedding')
  old, new = (np.asarray(
      c.members[0]['params'][name[0]][name[1]][name[2]][0])
              for c in (trained, classifier))
  d = old.shape[-1]
  expected = pretrained.interpolate_over_time(old[1:].reshape(4, 16, d), 8)
  np.testing.assert_allclose(new[0], old[0])  # The class token's position.
  np.testing.assert_allclose(new[1:], expected.reshape(128, d), rtol=1e-6)


def test_eval_flips_average_the_logits_of_the_flipped_volumes():
  config = vivit_jax.load_config(str(REPO / 'configs/tiny.py'))
  volumes = np.random.default_rng(0).random((3, 28, 28, 28, 1), np.float32)
  plain = vivit_jax.Classifier.from_config(config)
  rng = np.random.default_rng(1)  # The head starts at zero: perturb it all.
  plain.members = [jax.tree.map(
      lambda x: x + 0.1 * rng.standard_normal(x.shape), plain.members[0])]
  config.augmentation.eval_flips = True
  flipped = vivit_jax.Classifier(spec_lib.check_config(config, mode='model'),
                                 plain.model, plain.members)
  expected = np.mean([plain.logits(np.flip(volumes, axes))
                      for axes in ((), (1,), (2,), (3,), (1, 2), (1, 3),
                                   (2, 3), (1, 2, 3))], axis=0)
  np.testing.assert_allclose(flipped.logits(volumes), expected, rtol=1e-5,
                             atol=1e-6)
  assert not np.allclose(expected, plain.logits(volumes))
