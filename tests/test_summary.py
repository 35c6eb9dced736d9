"""`run.py --mode=summary` reproduces the paper's Table 2."""

import json
import subprocess
import sys

import pytest

import vivit_jax
from tests.conftest import REPO
from vivit_jax import summary

# Table 2, ViViT-B/16x2 on 32 x 224 x 224 clips: params (M), GFLOPs.
TABLE_2 = {
    'spacetime': (88.95, 455.2),
    'factorized_encoder': (115.06, 284.4),
    'factorized_self_attention_block': (117.32, 372.3),
    'factorized_dot_product_attention': (88.95, 277.1),
}


@pytest.mark.parametrize('attention_type', sorted(TABLE_2))
def test_table_2(attention_type):
  config = vivit_jax.load_config(str(REPO / 'configs/vivit_b.py:kinetics400'))
  config.model.attention_config.type = attention_type
  if attention_type.startswith('factorized_') and (
      attention_type != 'factorized_encoder'):
    config.model.classifier = 'gap'  # Models 3 and 4 have no class token.
  figures = summary.summarize(config)
  params, gflops = TABLE_2[attention_type]
  assert figures['params'] / 1e6 == pytest.approx(params, abs=0.02)
  assert figures['gflops'] == pytest.approx(gflops, rel=0.005)
  assert figures['tokens'] == 16 * 14 * 14


def test_cnn_flops_are_its_convolutions():
  """XLA's cost analysis counts no FLOPs in the CPU kernels' custom calls;
  the summary counts the XLA ops they replace: the term project's CNN is
  its three convolutions' multiply-adds and little else."""
  config = vivit_jax.load_config(str(REPO / 'configs/termproject.py:cnn3d'))
  convolutions = sum(size**3 * 27 * channels * features for size, channels,
                     features in ((28, 1, 32), (14, 32, 64), (7, 64, 128)))
  gflops = summary.summarize(config)['gflops']
  assert convolutions / 1e9 <= gflops <= 1.02 * convolutions / 1e9


def test_summary_command_ends_with_one_json_line():
  result = subprocess.run(
      [sys.executable, 'run.py', '--config=configs/vivit_b.py', '--mode=summary',
       '--config.model.num_layers=2'],
      cwd=REPO, capture_output=True, text=True, check=True, timeout=300)
  figures = json.loads(result.stdout.strip().splitlines()[-1])
  assert figures['attention'] == 'spacetime'
  assert figures['tokens'] == 32 * 4 * 4  # 64^3 OrganMNIST3D, tubelet 16x16x2.
  assert 'Transformer/encoderblock_1/MlpBlock_3/Dense_0/kernel' in result.stdout
  assert isinstance(figures['params'], int) and figures['gflops'] > 0


def test_invalid_config_fails_before_compilation():
  result = subprocess.run(
      [sys.executable, 'run.py', '--config=configs/vivit_b.py', '--mode=summary',
       '--config.model.num_heads=5'],
      cwd=REPO, capture_output=True, text=True, timeout=300)
  assert result.returncode != 0
  assert 'config.model.num_heads' in result.stderr
