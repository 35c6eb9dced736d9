"""Deep ensembles (Lakshminarayanan et al., 2017): `config.ensemble_size`
members of one config, trained independently from their own seeds, classify
by the mean of their class probabilities.

Member k of an ensemble trained in WORKDIR is an ordinary run in
WORKDIR/members/k: its config is the ensemble's with `ensemble_size = 1` and
`rng_seed = rng_seed x ensemble_size + k`, so that the ensembles of seeds
0, 1, 2, ... share no member, and a member can be evaluated or used for
prediction on its own. The ensemble's logits are the log of the mean
probabilities (`log_mean_softmax`): their softmax is that mean.
"""

import os

import jax
import ml_collections
import numpy as np

MEMBERS_DIR = 'members'


def member_config(config: ml_collections.ConfigDict, k: int
                  ) -> ml_collections.ConfigDict:
  """Member `k`'s config: the ensemble's, with its own seed."""
  size = config.ensemble_size
  member = config.copy_and_resolve_references()
  with member.unlocked():
    member.rng_seed = config.rng_seed * size + k
    member.ensemble_size = 1
  return member


def member_workdirs(workdir: str, config: ml_collections.ConfigDict
                    ) -> list[str]:
  """The workdirs of the members: [workdir] itself for a single model."""
  if config.ensemble_size == 1:
    return [workdir]
  return [os.path.join(workdir, MEMBERS_DIR, str(k))
          for k in range(config.ensemble_size)]


def log_mean_softmax(member_logits: list[np.ndarray]) -> np.ndarray:
  """(..., K) log of the mean over members of softmax(logits); one member's
  logits are returned as they are.

  Args:
    member_logits: each member's (..., K) logits of the same examples.
  """
  if len(member_logits) == 1:
    return np.asarray(member_logits[0], np.float32)
  log_probabilities = jax.nn.log_softmax(np.stack(member_logits), axis=-1)
  return np.asarray(jax.nn.logsumexp(log_probabilities, axis=0)
                    - np.log(len(member_logits)), np.float32)
