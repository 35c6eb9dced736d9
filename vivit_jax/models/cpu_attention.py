"""The fused CPU attention kernel (`cpu_attention.cc`), built on first use.

XLA:CPU runs attention with small heads (8-wide in the term project's ViViT)
as matmuls contracting over head_dim, at 5-15% of a CPU's matmul peak
(benchmarks/PROFILE.md). `cpu_attention.cc` computes the same function as
`blocked_attention`, one head per thread with its inner loops over the keys,
as an XLA FFI custom call that reads the projections' (batch, N, heads,
head_dim) layout as it is.

The first call compiles it with the machine's C++ compiler (`$CXX`, else
`c++`; about 10 s) for this CPU (`-march=native`) into the cache directory
(`$VIVIT_JAX_CACHE`, else `~/.cache/vivit_jax`), keyed by the source, the
jaxlib version and the CPU, and later calls load the cached library. Where
no compiler works, or `VIVIT_JAX_CPU_KERNEL=0` is set, `available()` is
False, a log line says why once, and `blocked_attention` uses its XLA path.
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
import jax.numpy as jnp
import jaxlib

_SOURCE = pathlib.Path(__file__).with_suffix('.cc')
_FORWARD, _BACKWARD = 'vivit_attention_forward', 'vivit_attention_backward'


def _cpu_flags() -> str:
  try:
    for line in pathlib.Path('/proc/cpuinfo').read_text().splitlines():
      if line.startswith(('flags', 'Features')):
        return line
  except OSError:
    pass
  return platform.processor()


def _compile_command(output: pathlib.Path) -> list[str]:
  return [os.environ.get('CXX', 'c++'), '-O3', '-march=native', '-std=c++17',
          '-shared', '-fPIC', '-isystem', jax.ffi.include_dir(),
          str(_SOURCE), '-o', str(output)]


def _library_path() -> pathlib.Path:
  """The cached library's path, compiling it if it is not there."""
  key = hashlib.sha256('\n'.join([
      _SOURCE.read_text(), jaxlib.__version__, _cpu_flags(),
      ' '.join(_compile_command(pathlib.Path('lib.so'))[:-1])]).encode())
  cache = pathlib.Path(os.environ.get('VIVIT_JAX_CACHE')
                       or pathlib.Path.home() / '.cache' / 'vivit_jax')
  path = cache / f'cpu_attention_{key.hexdigest()[:16]}.so'
  if not path.exists():
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache) as scratch:
      built = pathlib.Path(scratch) / path.name
      subprocess.run(_compile_command(built), check=True, capture_output=True,
                     text=True)
      built.replace(path)  # Atomic: concurrent builds leave one whole file.
  return path


def _unavailable(reason: str) -> bool:
  logging.warning(
      'vivit-jax: the fused CPU attention kernel could not be built (%s); '
      'attention takes the slower XLA path. Install a C++ compiler (g++ or '
      'clang), or name one in $CXX, to use it.', reason)
  return False


@functools.cache
def available() -> bool:
  """Whether the kernel is built and registered with XLA (once a process)."""
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
  for name, symbol in ((_FORWARD, library.VivitAttentionForward),
                       (_BACKWARD, library.VivitAttentionBackward)):
    jax.ffi.register_ffi_target(name, jax.ffi.pycapsule(symbol),
                                platform='cpu')
  return True


def _like(x: jnp.ndarray, shape=None) -> jax.ShapeDtypeStruct:
  return jax.ShapeDtypeStruct(x.shape if shape is None else shape, x.dtype)


@jax.custom_vjp
def _attend(q, k, v):
  return _attend_forward(q, k, v)[0]


def _attend_forward(q, k, v):
  out, lse = jax.ffi.ffi_call(
      _FORWARD, (_like(q), _like(q, q.shape[:-1])),
      vmap_method='broadcast_all')(q, k, v)
  return out, (q, k, v, out, lse)


def _attend_backward(residuals, d_out):
  q = residuals[0]
  return tuple(jax.ffi.ffi_call(
      _BACKWARD, (_like(q),) * 3, vmap_method='broadcast_all')(
          *residuals, d_out))


_attend.defvjp(_attend_forward, _attend_backward)


def attention(query: jnp.ndarray, key: jnp.ndarray,
              value: jnp.ndarray) -> jnp.ndarray:
  """Softmax(Q K^T / sqrt(d)) V over the token axis N, in float32, where
  `available()`.

  Args:
    query, key, value: (..., N, heads, head_dim).

  Returns:
    (..., N, heads, head_dim), in the query's dtype.
  """
  if not available():
    raise RuntimeError('The fused CPU attention kernel is not available (see '
                       'the log); use blocked_attention.dot_product_attention.')
  q = query.astype(jnp.float32) * query.shape[-1]**-0.5
  out = _attend(q, key.astype(jnp.float32), value.astype(jnp.float32))
  return out.astype(query.dtype)
