"""Training speed and memory of ViViT Models 1-4 against the number of tokens.

The term project's ViViT (configs/termproject.py:vivit1: width 64, 6 layers,
8 heads, MLP 256, tubelet 4x4x4, global average pooling; Model 2 adds a
4-layer temporal encoder) with each of the paper's four attention types, on
28^3 volumes (343 tokens) and 64^3 volumes (4096 tokens), batch 8, without
attention dropout. Each cell is one `run.py --mode=bench` in its own process,
so that its peak memory is its own. Prints a Markdown table with the 1-minute
load average before and after each cell (a figure for README needs both below
the core count), then, as the last line, the cells as one JSON list.

  python -m benchmarks.scaling [--sizes=28,64] [--remat]
"""

import json
import os
import subprocess
import sys

from absl import app
from absl import flags

_SIZES = flags.DEFINE_list('sizes', ['28', '64'], 'Volume sizes (28 or 64).')
_WARMUP_STEPS = flags.DEFINE_integer('warmup_steps', 1,
                                     'Untimed steps per cell.')
_TIMED_STEPS = flags.DEFINE_integer('timed_steps', 3, 'Timed steps per cell.')
_BATCH_SIZE = flags.DEFINE_integer('batch_size', 8, 'Training batch.')
_REMAT = flags.DEFINE_bool(
    'remat', False, 'Also run Model 1 with rematerialised encoder blocks.')

MODELS = (('Model 1: spatio-temporal', 'spacetime'),
          ('Model 2: factorised encoder', 'factorized_encoder'),
          ('Model 3: factorised self-attention',
           'factorized_self_attention_block'),
          ('Model 4: factorised dot product',
           'factorized_dot_product_attention'))


def bench(attention_type: str, size: int, remat: bool) -> dict:
  """`run.py --mode=bench`'s figures for one cell."""
  overrides = {
      'model.attention_config.type': attention_type,
      'model.attention_dropout_rate': 0.0,
      'model.remat': remat,
      'batch_size': _BATCH_SIZE.value,
      'eval_batch_size': _BATCH_SIZE.value,
      'dataset_configs.size': size,
      'dataset_configs.num_frames': size,
      'dataset_configs.crop_size': size,
  }
  command = [sys.executable, 'run.py',
             '--config=configs/termproject.py:vivit1', '--mode=bench',
             f'--bench_warmup_steps={_WARMUP_STEPS.value}',
             f'--bench_timed_steps={_TIMED_STEPS.value}']
  command += [f'--config.{field}={value}' for field, value in overrides.items()]
  load_before = os.getloadavg()[0]
  result = subprocess.run(command, capture_output=True, text=True, check=False)
  if result.returncode:
    raise RuntimeError(f'{" ".join(command)} failed:\n{result.stderr[-4000:]}')
  return {**json.loads(result.stdout.strip().splitlines()[-1]),
          'load_before': load_before, 'load_after': os.getloadavg()[0]}


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  cells = []
  for size in map(int, _SIZES.value):
    runs = [(name, attention_type, False) for name, attention_type in MODELS]
    if _REMAT.value:
      runs.append((MODELS[0][0] + ', remat', MODELS[0][1], True))
    for name, attention_type, remat in runs:
      cells.append({'model': name, 'size': size,
                    **bench(attention_type, size, remat)})
      print(f'{name} at {size}^3: {cells[-1]}', file=sys.stderr, flush=True)

  print('| model | volume | tokens | GFLOPs / clip | train clips/s | '
        'vs Model 1 | peak memory | load before, after |')
  print('|---|---|---|---|---|---|---|---|')
  model1 = {cell['size']: cell['train_samples_per_s'] for cell in cells
            if cell['model'] == MODELS[0][0]}
  for cell in cells:
    print(f"| {cell['model']} | {cell['size']}^3 | {cell['tokens']} | "
          f"{cell['gflops_per_sample']:.2f} | "
          f"{cell['train_samples_per_s']:.3g} | "
          f"{cell['train_samples_per_s'] / model1[cell['size']]:.1f}x | "
          f"{cell['peak_memory_bytes'] / 2**30:.2f} GiB | "
          f"{cell['load_before']:.2f}, {cell['load_after']:.2f} |")
  print(json.dumps(cells))


if __name__ == '__main__':
  app.run(main)
