"""From a source's global batches to arrays on the local devices.

  train_batches(source, start_step)   endless: the batches of start_step,
                                      start_step + 1, ..., on the devices
  eval_batches(source, split)         a split's batches, on the devices
  shard_for_host(batch)               this process's rows of a global batch

Batches are prepared ahead in threads (numpy and PyAV release the GIL) and
put on the devices ahead of the step that takes them, so the host never
waits for the step and the step rarely waits for the host.
"""

import collections
import concurrent.futures
import itertools
from typing import Callable, Iterable, Iterator

import jax
import numpy as np

PREPARE_AHEAD = 2  # Batches prepared ahead by as many threads.
ON_DEVICES_AHEAD = 2  # Batches already on the devices.


def prepared_ahead(make: Callable[[int], dict], steps: Iterable[int],
                   size: int = PREPARE_AHEAD) -> Iterator[dict]:
  """Yields make(step) for each step, in order, while `size` threads make the
  next `size` batches. Errors reach the consumer."""
  steps = iter(steps)
  with concurrent.futures.ThreadPoolExecutor(size) as pool:
    pending = collections.deque(
        pool.submit(make, step) for step in itertools.islice(steps, size))
    while pending:
      batch = pending.popleft().result()
      pending.extend(
          pool.submit(make, step) for step in itertools.islice(steps, 1))
      yield batch


def shard_for_host(batch: dict) -> dict:
  """The rows of a global batch that this JAX process feeds its devices.

  Every process builds the same global batches; process i takes the i-th of
  `jax.process_count()` equal slices.
  """
  count, index = jax.process_count(), jax.process_index()

  def local(x: np.ndarray) -> np.ndarray:
    if x.shape[0] % count:
      raise ValueError(f'A global batch of {x.shape[0]} does not split over '
                       f'{count} processes: make the batch size a multiple.')
    rows = x.shape[0] // count
    return x[index * rows:(index + 1) * rows]

  return jax.tree.map(local, batch)


def to_devices(batches: Iterable[dict], size: int = ON_DEVICES_AHEAD
               ) -> Iterator[dict]:
  """Puts each host batch on the local devices, `size` batches ahead.

  Arrays (B, ...) become (local devices, B / local devices, ...) `jax.Array`s
  sharded along their first axis, the layout `jax.pmap` takes; the whole
  batch goes in one `device_put`.
  """
  devices = jax.local_devices()
  sharding = jax.sharding.NamedSharding(
      jax.sharding.Mesh(np.array(devices), ('devices',)),
      jax.sharding.PartitionSpec('devices'))

  def put(batch: dict) -> dict:
    def split(x: np.ndarray) -> np.ndarray:
      if x.shape[0] % len(devices):
        raise ValueError(f'A host batch of {x.shape[0]} does not split over '
                         f'{len(devices)} local devices: make the batch size '
                         'a multiple of the number of devices.')
      return x.reshape(len(devices), -1, *x.shape[1:])
    return jax.device_put(jax.tree.map(split, batch), sharding)

  batches = iter(batches)
  on_devices = collections.deque(
      put(batch) for batch in itertools.islice(batches, size))
  while on_devices:
    yield on_devices.popleft()
    on_devices.extend(put(batch) for batch in itertools.islice(batches, 1))


def train_batches(source, start_step: int) -> Iterator[dict]:
  """The training batches of steps start_step, start_step + 1, ... (without
  end), this process's share, on the local devices."""
  return to_devices(map(shard_for_host, prepared_ahead(
      source.train_batch, itertools.count(start_step))))


def eval_batches(source, split: str) -> Iterator[dict]:
  """`source.eval_batches(split)`, this process's share, on the devices."""
  return to_devices(map(shard_for_host, source.eval_batches(split)))
