"""`allocator.keep_freed_memory` stops freed buffers going back to the OS:
allocating the same large buffer again faults no pages in; training from
Python sets it as `run.py` does."""

import platform
import subprocess
import sys

import pytest

from tests.conftest import REPO
from tests.conftest import tiny_config
import vivit_jax
from vivit_jax import allocator

_SCRIPT = r'''
import ctypes, ctypes.util, resource, sys
from vivit_jax import allocator

libc = ctypes.CDLL(ctypes.util.find_library('c'))
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]

def faults_of_reallocating(times, size=96 << 20):
  before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
  for _ in range(times):
    block = libc.malloc(size)
    ctypes.memset(block, 1, size)
    libc.free(block)
  return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

as_it_comes = faults_of_reallocating(3)
kept = allocator.keep_freed_memory()
faults_of_reallocating(1)  # The heap grows to the block once.
print(kept, as_it_comes, faults_of_reallocating(3))
'''


def _run(environment=None) -> list[str]:
  return subprocess.run(
      [sys.executable, '-c', _SCRIPT], cwd=REPO, check=True,
      capture_output=True, text=True,
      env=environment).stdout.split()


@pytest.mark.skipif(platform.libc_ver()[0] != 'glibc', reason='glibc only')
def test_freed_memory_is_reused_without_page_faults():
  kept, as_it_comes, after = _run()
  assert kept == 'True'
  assert int(as_it_comes) > 3 * 10_000  # 96 MB is 24,576 pages of 4 KB.
  assert int(after) < int(as_it_comes) / 100


def test_it_can_be_turned_off(monkeypatch):
  monkeypatch.setenv('VIVIT_JAX_KEEP_MEMORY', '0')
  assert not allocator.keep_freed_memory()


def test_train_and_evaluate_sets_malloc_first(monkeypatch, tmp_path):
  calls = []
  monkeypatch.setattr(allocator, 'keep_freed_memory',
                      lambda: calls.append('malloc set'))
  config = tiny_config()
  config.batch_size = 0
  with pytest.raises(vivit_jax.ConfigError):
    vivit_jax.train_and_evaluate(config, str(tmp_path / 'workdir'))
  assert calls == ['malloc set']
