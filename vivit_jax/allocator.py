"""Keeping freed memory in the process, so train steps do not page it in anew.

XLA:CPU allocates each step's buffers when the step starts and frees them
when it ends. glibc's malloc serves blocks above its mmap threshold (and
blocks of its worker threads' arenas above 64 MB) with fresh `mmap`s and
returns them to the OS on free, so every step faults all its pages in again
and the kernel zeroes each: about 58,000 page faults per step of the term
project's ViViT and 3D CNN, a quarter of the CNN's step on a 2-core CPU
(benchmarks/PROFILE.md). PyTorch's CPU allocator goes through the same
malloc and pays the same.

`keep_freed_memory()` sets glibc's malloc to one arena, blocks from the heap
at any size, and a heap that is never trimmed: freed buffers stay mapped and
the next step reuses them. The process then keeps its peak memory until it
exits, and as the heap does not reuse every freed hole that peak is higher:
by 38-113% in README's measurements, reached in the first 50-150 steps.
`run.py` calls it first thing, and `train.train_and_evaluate` when it
starts, for programs that train from Python (threads that allocated before
keep their own arenas, in which blocks over 64 MB are still mapped anew);
`VIVIT_JAX_KEEP_MEMORY=0` turns it off.
"""

import ctypes
import ctypes.util
import logging
import os

# mallopt's parameters (glibc's malloc.h).
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_ARENA_MAX = -1, -3, -8
_LARGEST = 2**31 - 1  # mallopt takes an int.


def keep_freed_memory() -> bool:
  """Sets glibc's malloc as the module docstring says, before the threads
  that would make more arenas start. Returns whether it did: False where
  `VIVIT_JAX_KEEP_MEMORY=0` or the C library is not glibc."""
  if os.environ.get('VIVIT_JAX_KEEP_MEMORY', '1') == '0':
    return False
  try:
    libc = ctypes.CDLL(ctypes.util.find_library('c'))
    mallopt = libc.mallopt
    libc.gnu_get_libc_version  # pylint: disable=pointless-statement
  except (OSError, AttributeError, TypeError):
    return False
  done = all(mallopt(option, value) == 1 for option, value in (
      (_M_ARENA_MAX, 1), (_M_MMAP_THRESHOLD, _LARGEST),
      (_M_TRIM_THRESHOLD, _LARGEST)))
  if not done:
    logging.warning('vivit-jax: glibc refused a malloc setting; freed memory '
                    'may go back to the OS between train steps.')
  return done
