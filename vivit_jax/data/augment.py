"""Label transforms shared by every data set, Eqs. 11 and 12 of ViViT, and
the seeded generators that make batches pure functions of their step.

Import names from it (`from vivit_jax.data.augment import mixup`): the
package's `augment` is MedMNIST's volume augmentation.

  smooth_labels(one_hot, lam)                Eq. 11.
  mixup(rng, inputs, targets, alpha)         Eq. 12.
  generator(seed, *stream)                   an independent numpy Generator.
"""

import numpy as np


def smooth_labels(one_hot: np.ndarray, lam: float) -> np.ndarray:
  """Eq. 11: (1 - lam) y + lam u, u uniform over the K classes. (B, K)."""
  return ((1 - lam) * one_hot + lam / one_hot.shape[-1]).astype(np.float32)


def mixup(rng: np.random.Generator, volumes: np.ndarray, targets: np.ndarray,
          alpha: float) -> tuple[np.ndarray, np.ndarray]:
  """Eq. 12: mixes each example with a random partner from the batch.

  One lam ~ Beta(alpha, alpha) for the batch; partners are a permutation.
  volumes (B, ...), targets (B, K) one-hot or soft -> the same shapes.
  """
  lam = rng.beta(alpha, alpha)
  partner = rng.permutation(len(volumes))
  mixed = volumes[partner]
  mixed *= 1 - lam
  mixed += lam * volumes
  return mixed, lam * targets + (1 - lam) * targets[partner]


def generator(seed: int, *stream: int) -> np.random.Generator:
  """An independent generator for each (seed, *stream)."""
  return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=stream))
