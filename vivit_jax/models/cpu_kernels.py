"""The fused CPU kernels (`cpu_*.cc`), built on first use.

XLA:CPU runs some of our models' ops far below the machine's peak:
attention with small heads (`cpu_attention.cc`), convolutions with few
channels (`cpu_conv.cc`), the kernel gradients of dense layers
(`cpu_dense.cc`), the passes of BatchNorm, ReLU and max pooling
over a convolution's output (`cpu_batch_norm_pool.cc`), of LayerNorm
(`cpu_layer_norm.cc`) and of GELU (`cpu_gelu.cc`);
benchmarks/PROFILE.md has the measurements. These C++ sources compute the
same functions as XLA FFI custom calls.

The first call compiles them with the machine's C++ compiler (`$CXX`, else
`c++`; about 15 s) for this CPU (`-march=native`) into one library in the
cache directory (`$VIVIT_JAX_CACHE`, else `~/.cache/vivit_jax`), keyed by the
sources, the jaxlib version and the CPU, and later calls load the cached
library. Where no compiler works, or `VIVIT_JAX_CPU_KERNEL=0` is set,
`available()` is False, a log line says why once, and the models take their
XLA paths.
"""

import ctypes
import functools
import hashlib
import logging
import os
import pathlib
import platform
import subprocess
import tempfile

import jax
import jaxlib

_DIRECTORY = pathlib.Path(__file__).parent
_SOURCES = sorted(_DIRECTORY.glob('cpu_*.cc'))
_HEADERS = sorted(_DIRECTORY.glob('cpu_*.h'))
_FLAGS = ('-O3', '-march=native', '-std=c++17', '-shared', '-fPIC')

# Fixed blocks of rows whose sums (parameter gradients) the LayerNorm and GELU
# kernels return, one row of sums per block, for the caller to add
# (`kRowBlocks` in cpu_parallel.h).
ROW_BLOCKS = 32

# FFI target name -> the handler's symbol in the library.
ATTENTION_FORWARD = 'vivit_attention_forward'
ATTENTION_BACKWARD = 'vivit_attention_backward'
ATTENTION_BACKWARD_PACKED = 'vivit_attention_backward_packed'
CONV_FORWARD = 'vivit_conv_forward'
CONV_WEIGHT_GRAD = 'vivit_conv_weight_grad'
DENSE_WEIGHT_GRAD = 'vivit_dense_weight_grad'
BATCH_NORM_POOL_FORWARD = 'vivit_batch_norm_pool_forward'
BATCH_NORM_POOL_BACKWARD = 'vivit_batch_norm_pool_backward'
LAYER_NORM_FORWARD = 'vivit_layer_norm_forward'
LAYER_NORM_BACKWARD = 'vivit_layer_norm_backward'
LAYER_NORM_BACKWARD_ADDING = 'vivit_layer_norm_backward_adding'
GELU_FORWARD = 'vivit_gelu_forward'
GELU_BACKWARD = 'vivit_gelu_backward'
_TARGETS = {ATTENTION_FORWARD: 'VivitAttentionForward',
            ATTENTION_BACKWARD: 'VivitAttentionBackward',
            ATTENTION_BACKWARD_PACKED: 'VivitAttentionBackwardPacked',
            CONV_FORWARD: 'VivitConvForward',
            CONV_WEIGHT_GRAD: 'VivitConvWeightGrad',
            DENSE_WEIGHT_GRAD: 'VivitDenseWeightGrad',
            BATCH_NORM_POOL_FORWARD: 'VivitBatchNormPoolForward',
            BATCH_NORM_POOL_BACKWARD: 'VivitBatchNormPoolBackward',
            LAYER_NORM_FORWARD: 'VivitLayerNormForward',
            LAYER_NORM_BACKWARD: 'VivitLayerNormBackward',
            LAYER_NORM_BACKWARD_ADDING: 'VivitLayerNormBackwardAdding',
            GELU_FORWARD: 'VivitGeluForward',
            GELU_BACKWARD: 'VivitGeluBackward'}


def _cpu_flags() -> str:
  try:
    for line in pathlib.Path('/proc/cpuinfo').read_text().splitlines():
      if line.startswith(('flags', 'Features')):
        return line
  except OSError:
    pass
  return platform.processor()


def _compiler() -> list[str]:
  return [os.environ.get('CXX', 'c++'), *_FLAGS, '-isystem',
          jax.ffi.include_dir()]


def _library_path() -> pathlib.Path:
  """The cached library's path, compiling it if it is not there."""
  key = hashlib.sha256('\n'.join([
      *(path.read_text() for path in _SOURCES + _HEADERS),
      jaxlib.__version__, _cpu_flags(), ' '.join(_compiler())]).encode())
  cache = pathlib.Path(os.environ.get('VIVIT_JAX_CACHE')
                       or pathlib.Path.home() / '.cache' / 'vivit_jax')
  path = cache / f'cpu_kernels_{key.hexdigest()[:16]}.so'
  if not path.exists():
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache) as scratch:
      built = pathlib.Path(scratch) / path.name
      subprocess.run([*_compiler(), *map(str, _SOURCES), '-o', str(built)],
                     check=True, capture_output=True, text=True)
      built.replace(path)  # Atomic: concurrent builds leave one whole file.
  return path


def _unavailable(reason: str) -> bool:
  logging.warning(
      'vivit-jax: the fused CPU kernels could not be built (%s); attention, '
      'convolutions and pooling take the slower XLA paths. Install a C++ '
      'compiler (g++ or clang), or name one in $CXX, to use them.', reason)
  return False


@functools.cache
def available() -> bool:
  """Whether the kernels are built and registered with XLA (once a
  process)."""
  if os.environ.get('VIVIT_JAX_CPU_KERNEL', '1') == '0':
    return False
  try:
    library = ctypes.cdll.LoadLibrary(str(_library_path()))
  except subprocess.CalledProcessError as error:
    lines = error.stderr.strip().splitlines()
    reason = next((line for line in lines if 'error' in line),
                  lines[-1] if lines else f'exit status {error.returncode}')
    return _unavailable(f'{error.cmd[0]} failed: {reason}')
  except OSError as error:
    return _unavailable(str(error))
  for name, symbol in _TARGETS.items():
    jax.ffi.register_ffi_target(
        name, jax.ffi.pycapsule(getattr(library, symbol)), platform='cpu')
  return True


def require(fallback: str) -> None:
  """Raises, naming `fallback` (the XLA path to use instead), unless the
  kernels are `available()`."""
  if not available():
    raise RuntimeError('The fused CPU kernels are not available (see the '
                       f'log); use {fallback}.')


# Part of jit's cache keys, so that a function traced outside is traced anew.
_XLA_ONLY = jax.make_user_context(default_value=False)


def xla_ops():
  """A context in which models take XLA's ops instead of the kernels: ops
  whose FLOPs XLA's cost analysis counts (it counts none in a custom call)."""
  return _XLA_ONLY(True)


def used() -> bool:
  """Whether models running now use the kernels: on the CPU backend, where
  they are `available()`, outside `xla_ops()`."""
  return (jax.default_backend() == 'cpu' and not _XLA_ONLY.value
          and available())


def like(x, shape=None) -> jax.ShapeDtypeStruct:
  """A kernel result's shape: `shape` (else x's) in x's dtype."""
  return jax.ShapeDtypeStruct(x.shape if shape is None else shape, x.dtype)
