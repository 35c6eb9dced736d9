"""Runs `run.py` trainings one after another, each in its own workdir, and
reads their `results.json`; a workdir that has one is not trained again, so
an interrupted sweep picks up where it stopped."""

import json
import os
import shlex
import subprocess
import sys
from typing import Any

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def command(config: str, workdir: str, overrides: dict[str, Any]
            ) -> list[str]:
  """The `run.py` command line: `--config.KEY=VALUE` for each override."""
  return [sys.executable, os.path.join(REPO, 'run.py'), f'--config={config}',
          f'--workdir={workdir}'] + [
              f'--config.{key}={value}' for key, value in overrides.items()]


def train(config: str, workdir: str, overrides: dict[str, Any]) -> dict:
  """Trains (or resumes) unless `workdir` holds results; returns them.

  Raises:
    subprocess.CalledProcessError: the training failed; its output, which
      went to the terminal, says why.
  """
  path = os.path.join(workdir, 'results.json')
  if not os.path.exists(path):
    args = command(config, workdir, overrides)
    print(shlex.join(args), flush=True)
    subprocess.run(args, check=True, cwd=REPO)
  with open(path) as f:
    return json.load(f)
