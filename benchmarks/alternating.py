"""Timing several implementations of one computation against each other.

Each runner is called twice untimed, then rounds alternate between them so
that all see the same machine load; each figure is the median over the timed
calls, in ms. The load average (1 minute) is recorded before and after.
"""

import os
import statistics
import time
from typing import Callable


def time_alternating(runners: dict[str, Callable[[], None]], rounds: int,
                     calls_per_round: int) -> dict:
  """{name}_ms for each runner, load_average_before, load_average_after and
  threads (the CPUs this process may use)."""
  for run in runners.values():
    run()
    run()
  load_before = os.getloadavg()[0]
  times = {name: [] for name in runners}
  for _ in range(rounds):
    for name, run in runners.items():
      for _ in range(calls_per_round):
        start = time.perf_counter()
        run()
        times[name].append(time.perf_counter() - start)
  result = {f'{name}_ms': 1000 * statistics.median(t)
            for name, t in times.items()}
  result.update(load_average_before=load_before,
                load_average_after=os.getloadavg()[0],
                threads=len(os.sched_getaffinity(0)))
  return result


def kernel_against_reference(kernel: tuple[Callable[[], None], ...],
                             reference: tuple[Callable[[], None], ...],
                             reference_name: str, rounds: int,
                             calls_per_round: int) -> dict:
  """`time_alternating` of a kernel's and a reference's (forward, forward
  with backward) runners: kernel_forward_ms, {reference_name}_forward_ms,
  kernel_forward_backward_ms, {reference_name}_forward_backward_ms."""
  runners = {}
  for step, kernel_run, reference_run in zip(
      ('forward', 'forward_backward'), kernel, reference):
    runners[f'kernel_{step}'] = kernel_run
    runners[f'{reference_name}_{step}'] = reference_run
  return time_alternating(runners, rounds, calls_per_round)
