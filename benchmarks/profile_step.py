"""Where a config's train step spends its time on this CPU, op by op.

Compiles the project's train step (`bench.compile_train_step`: the pmapped
step, AdamW, a synthetic batch already on the device), runs `--warmup_steps`
untimed, then traces `--steps` steps with `jax.profiler` (XLA:CPU emits one
trace event per executed thunk: a fusion, a dot, a convolution, a loop body's
op on every iteration). The events are summed by HLO instruction and joined
with the compiled HLO: the instruction's kind, the model scope it comes from
(`encoderblock_N/` folded together, `bwd` for the backward pass) and its
FLOPs (2 x multiply-adds of its dots and convolutions). The matmul peak is
measured in the same process: a 1024^3 float32 matmul.

Prints a Markdown summary (by scope, by kind, the top instructions); the last
line is one JSON object with the totals. The minor page faults of the
process are counted over `--steps` untraced steps.

  python -m benchmarks.profile_step --config=configs/termproject.py:vivit1
  python -m benchmarks.profile_step --config=configs/termproject.py:cnn3d
  python -m benchmarks.profile_step --config=configs/termproject.py:cnn3d \
      --keep_freed_memory    # malloc set as run.py sets it

Times are the durations of the ops' trace events, summed: the XLA:CPU
runtime runs independent thunks on its threads at once, so the sum can exceed
the step's wall time. An op's GFLOP/s is its FLOPs over its summed event
time, compared with the matmul peak of the whole machine: a matmul that runs
on all cores inside one event can reach 100%, a single-threaded op at most
1 / cores of it. Other load on the machine stretches events (a descheduled
thread's op takes longer), so take figures from a quiet machine.
"""

import collections
import glob
import json
import math
import os
import re
import resource
import statistics
import tempfile
import time

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
from ml_collections import config_flags

from vivit_jax import allocator
from vivit_jax import bench
from vivit_jax import models
from vivit_jax import spec as spec_lib
from vivit_jax import steps

_CONFIG = config_flags.DEFINE_config_file(
    'config', 'configs/termproject.py:vivit1', 'The config to profile.',
    lock_config=False)
_WARMUP_STEPS = flags.DEFINE_integer('warmup_steps', 3, 'Untimed steps.')
_STEPS = flags.DEFINE_integer('steps', 3, 'Traced steps.')
_TOP = flags.DEFINE_integer('top', 15, 'Instructions listed.')
_SCOPE = flags.DEFINE_string(
    'scope', '', 'List only the instructions of scopes containing this.')
_PEAK_GFLOPS = flags.DEFINE_float(
    'peak_gflops', 0.0, 'The matmul peak to compare with, GFLOP/s; 0: '
    'measure it here (the best of 20 float32 1024^3 matmuls), which other '
    'load on the machine lowers.')

_KEEP_FREED_MEMORY = flags.DEFINE_bool(
    'keep_freed_memory', False,
    'Set malloc as run.py does (vivit_jax.allocator) before profiling.')

_INSTRUCTION = re.compile(
    r'^\s*(?:ROOT )?%(?P<name>[\w.\-]+) = (?P<shape>.*?) '
    r'(?P<opcode>[\w\-]+)\((?P<operands>[^)]*)\)(?P<attrs>.*)$')
_COMPUTATION = re.compile(r'^(?:ENTRY )?%(?P<name>[\w.\-]+) ')
_DIMS = re.compile(r'\[([\d,]*)\]')


def _dims(shape: str) -> list[int]:
  match = _DIMS.search(shape)
  return [int(d) for d in match.group(1).split(',') if d] if match else []


def parse_hlo(text: str) -> tuple[dict, dict]:
  """Instructions by name, {name: dict(shape, opcode, operands, attrs,
  computation)}, and the instruction names of each computation."""
  instructions, computations, current = {}, collections.defaultdict(list), None
  for line in text.splitlines():
    if not line.startswith(' ') and line.rstrip().endswith('{'):
      match = _COMPUTATION.match(line)
      current = match.group('name') if match else None
      continue
    match = _INSTRUCTION.match(line)
    if match and current:
      fields = match.groupdict()
      fields['operands'] = re.findall(r'%([\w.\-]+)', fields['operands'])
      fields['computation'] = current
      instructions[fields['name']] = fields
      computations[current].append(fields['name'])
  return instructions, computations


def _own_flops(instruction: dict, instructions: dict) -> float:
  """2 x the multiply-adds of a dot, a convolution or a CPU kernel's custom
  call; 0 for other ops."""
  out = math.prod(_dims(instruction['shape']))
  operand_shapes = [_dims(instructions[o]['shape'])
                    for o in instruction['operands'] if o in instructions]
  if instruction['opcode'] == 'dot':
    contracting = re.search(r'lhs_contracting_dims=\{([\d,]*)\}',
                            instruction['attrs'])
    lhs = operand_shapes[0]
    dims = [int(d) for d in contracting.group(1).split(',') if d]
    return 2.0 * out * math.prod(lhs[d] for d in dims)
  if instruction['opcode'] == 'convolution':
    labels = re.search(r'dim_labels=\w+_(\w+)->', instruction['attrs'])
    rhs = operand_shapes[1]
    out_features = rhs[labels.group(1).index('o')]
    groups = re.search(r'(?:feature|batch)_group_count=(\d+)',
                       instruction['attrs'])
    per_group = int(groups.group(1)) if groups else 1
    return 2.0 * out * math.prod(rhs) / out_features / per_group
  if instruction['opcode'] == 'custom-call':
    # The CPU attention kernel: the matmuls of its q (..., N, heads, d), 2
    # forward (Q K^T, P V), 5 backward (Q K^T again, dP, dQ, dK, dV).
    target = re.search(r'custom_call_target="(\w+)"', instruction['attrs'])
    matmuls = {'vivit_attention_forward': 2, 'vivit_attention_backward': 5,
               'vivit_attention_backward_packed': 5}
    if target and target.group(1) in matmuls:
      q = operand_shapes[0]
      return 2.0 * matmuls[target.group(1)] * math.prod(q) * q[-3]
    # The CPU convolution kernels, with the padded features they compute:
    # y (B, D, H, W, F) from a kernel packed as (F / 32, KD, KH, KW * C, 32),
    # or that kernel's gradient from dy (B, D, H, W, F).
    if target and target.group(1) == 'vivit_conv_forward':
      return 2.0 * out * math.prod(operand_shapes[1][1:4])
    if target and target.group(1) == 'vivit_conv_weight_grad':
      return 2.0 * out * math.prod(operand_shapes[1][:4])
    # The CPU dense kernel: x (..., K)^T dy (..., M).
    if target and target.group(1) == 'vivit_dense_weight_grad':
      return 2.0 * math.prod(operand_shapes[0]) * operand_shapes[1][-1]
  return 0.0


def _called(instruction: dict) -> list[str]:
  return re.findall(r'(?:calls|to_apply|body|condition)=%([\w.\-]+)',
                    instruction['attrs'])


def describe(name: str, instructions: dict, computations: dict) -> dict:
  """An instruction's kind ('dot', 'convolution', 'fusion(dot, exp)', ...),
  FLOPs and scope."""
  instruction = instructions[name]
  flops, inner = _own_flops(instruction, instructions), set()
  if instruction['opcode'] == 'fusion':
    for computation in _called(instruction):
      for inner_name in computations.get(computation, ()):
        op = instructions[inner_name]
        flops += _own_flops(op, instructions)
        if op['opcode'] in ('dot', 'convolution', 'exponential', 'reduce',
                            'reduce-window', 'select-and-scatter', 'tanh',
                            'divide', 'rsqrt', 'log', 'erf'):
          inner.add(op['opcode'])
  kind = instruction['opcode']
  if kind == 'fusion':
    kind = f"fusion({', '.join(sorted(inner))})" if inner else 'fusion(loop)'
  op_name = re.search(r'op_name="([^"]*)"', instruction['attrs'])
  target = re.search(r'custom_call_target="vivit_attention_',
                     instruction['attrs'])
  return {'kind': kind, 'flops': flops,
          'scope': _scope(op_name.group(1) if op_name else '', bool(target))}


def _scope(op_name: str, attention_kernel: bool = False) -> str:
  """'jit(f)/transpose(jvp(ViViT))/Transformer/encoderblock_3/MlpBlock_3/...'
  -> 'bwd MlpBlock_3'."""
  direction = 'bwd' if 'transpose(' in op_name else 'fwd'
  parts = [p for p in op_name.split('/')[1:]
           if not p.startswith(('jvp(', 'transpose(', 'jit(', 'vmap(',
                                'closed_call', 'while', 'body', 'cond',
                                'checkpoint', 'remat'))]
  parts = [re.sub(r'_\d+$', '', p) if p.startswith('encoderblock') else p
           for p in parts]
  keep = [p for p in parts[:3] if p[:1].isupper() or p.startswith('encoder')]
  if not keep:
    return 'optimizer/metrics/other' if 'jvp(' not in op_name else direction
  scope = f"{direction} {'/'.join(keep[-2:])}"
  if 'DotProductAttention' in scope:
    # The softmax attention (the fused kernel's custom calls on CPUs, or the
    # XLA loops over blocks of heads) apart from the projections around it.
    scope += (' (softmax attention)'
              if '/while/' in op_name or attention_kernel
              else ' (projections)')
  return scope


def matmul_peak_flops(size: int = 1024, repeats: int = 20) -> float:
  """FLOP/s of a float32 size^3 matmul on the default device (the best)."""
  a = jnp.ones((size, size), jnp.float32)
  matmul = jax.jit(lambda x, y: x @ y)
  jax.block_until_ready(matmul(a, a))
  seconds = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(matmul(a, a))
    seconds.append(time.perf_counter() - start)
  return 2.0 * size**3 / min(seconds)


def trace_events(run_step, steps: int, directory: str) -> tuple[dict, list]:
  """Thread-nanoseconds and number of events by trace-event name over
  `steps` steps, and the steps' wall seconds."""
  with jax.profiler.trace(directory):
    seconds = bench.time_steps(run_step, steps)
  path = sorted(glob.glob(os.path.join(directory, '**', '*.xplane.pb'),
                          recursive=True))[-1]
  totals, counts = collections.Counter(), collections.Counter()
  for plane in jax.profiler.ProfileData.from_file(path).planes:
    for line in plane.lines:
      for event in line.events:
        totals[event.name] += event.duration_ns
        counts[event.name] += 1
  return totals, counts, seconds


def profile(config) -> dict:
  spec = spec_lib.check_config(config, mode='model')
  model = models.create_model(spec, axis_name=steps.AXIS)
  run_step, _ = bench.compile_train_step(spec, model)
  train_step = steps.make_train_step(model, spec)
  state = steps.replicate(steps.create_train_state(
      spec, model, jax.random.key(spec.config.rng_seed)))
  rng = steps.replicate(jax.random.key(0))
  batch = bench.synthetic_batch(spec, spec.config.batch_size)
  hlo = train_step.lower(state, batch, rng).compile().as_text()
  del state
  instructions, computations = parse_hlo(hlo)

  bench.time_steps(run_step, _WARMUP_STEPS.value)
  faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
  bench.time_steps(run_step, _STEPS.value)
  faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
  with tempfile.TemporaryDirectory() as directory:
    totals, counts, seconds = trace_events(run_step, _STEPS.value, directory)
  traced = _STEPS.value
  ops = []
  for name, nanoseconds in totals.items():
    if name in instructions and instructions[name]['opcode'] not in (
        'while', 'call', 'conditional'):
      op = describe(name, instructions, computations)
      # An op in a loop body runs (and is traced) once per iteration.
      op['flops'] *= counts[name] / traced
      ops.append({'name': name, 'ms': nanoseconds / 1e6 / traced,
                  'runs': counts[name] / traced, **op})
  return {'ops': ops, 'step_s': statistics.median(seconds),
          'page_faults_per_step': faults / _STEPS.value}


def _table(rows, header):
  lines = ['| ' + ' | '.join(header) + ' |',
           '|' + '---|' * len(header)]
  lines += ['| ' + ' | '.join(str(c) for c in row) + ' |' for row in rows]
  return '\n'.join(lines)


def summarise(result: dict, peak: float, config) -> str:
  ops, cores = result['ops'], len(os.sched_getaffinity(0))
  total_ms = sum(op['ms'] for op in ops)

  def group(key):
    sums = collections.defaultdict(lambda: [0.0, 0.0])
    for op in ops:
      sums[op[key]][0] += op['ms']
      sums[op[key]][1] += op['flops']
    return sorted(sums.items(), key=lambda kv: -kv[1][0])

  def rate(ms, flops):
    if not flops:
      return ''
    return f'{flops / ms / 1e6:.0f} ({100 * flops / ms / 1e-3 / peak:.0f}%)'

  out = [f"Train step of `{config.experiment_name}`, batch "
         f"{config.batch_size}: {result['step_s'] * 1e3:.1f} ms wall per step "
         f"({config.batch_size / result['step_s']:.1f} samples/s), "
         f"{total_ms:.1f} ms thread-time in XLA ops; matmul peak "
         f"{peak / 1e9:.0f} GFLOP/s on {cores} cores; "
         f"{result['page_faults_per_step']:.0f} page faults per untraced "
         f"step; load average {os.getloadavg()[0]:.2f}.", '']
  header = ('thread-ms / step', 'share', 'GFLOP / step',
            "GFLOP/s (of the peak)")
  for key in ('scope', 'kind'):
    out.append(_table([(name, f'{ms:.1f}', f'{100 * ms / total_ms:.0f}%',
                        f'{flops / 1e9:.2f}' if flops else '',
                        rate(ms, flops))
                       for name, (ms, flops) in group(key)], (key,) + header))
    out.append('')
  rows = []
  listed = [op for op in ops if _SCOPE.value in op['scope']]
  for op in sorted(listed, key=lambda op: -op['ms'])[:_TOP.value]:
    rate = op['flops'] / (op['ms'] / 1e3) if op['flops'] else None
    rows.append((op['name'], op['kind'], op['scope'], f"{op['runs']:g}",
                 f"{op['ms']:.2f}",
                 f"{op['flops'] / 1e9:.3f}" if op['flops'] else '',
                 f'{rate / 1e9:.0f} ({100 * rate / peak:.0f}%)'
                 if rate else ''))
  out.append(_table(rows, ('instruction', 'kind', 'scope', 'runs / step',
                           'thread-ms / step', 'GFLOP / step',
                           "GFLOP/s (of the peak)")))
  return '\n'.join(out)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  config = _CONFIG.value
  kept = _KEEP_FREED_MEMORY.value and allocator.keep_freed_memory()
  load_before = os.getloadavg()
  peak = _PEAK_GFLOPS.value * 1e9 or matmul_peak_flops()
  result = profile(config)
  print(summarise(result, peak, config))
  by_kind = collections.Counter()
  for op in result['ops']:
    by_kind[op['kind']] += op['ms']
  print(json.dumps({
      'config': config.experiment_name, 'step_ms': result['step_s'] * 1e3,
      'op_thread_ms': sum(op['ms'] for op in result['ops']),
      'matmul_peak_gflops': peak / 1e9,
      'page_faults_per_step': result['page_faults_per_step'],
      'keep_freed_memory': kept,
      'by_kind_ms': dict(by_kind.most_common()),
      'load_average_before': load_before[0],
      'load_average_after': os.getloadavg()[0]}))


if __name__ == '__main__':
  app.run(main)
