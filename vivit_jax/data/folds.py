"""K-fold cross-validation over a set's training and validation examples.

With `config.cross_validation.num_folds` K > 0, the train and val splits are
pooled and dealt into K folds, stratified by label (each class's examples
shuffled by a fixed generator, then dealt in turn, so every fold holds each
class in the same share, to one example). The run of `fold` k

  - holds out fold k: its 'test' split, scored once at the end;
  - validates on fold k + 1 (mod K): the checkpoint it keeps as best;
  - trains on the other K - 2 folds.

The set's own test split is never evaluated. The K runs score every train and val
example once, with a model that neither trained on it nor chose its
checkpoint by it: a selection signal over all the pooled examples (1,286 in
AdrenalMNIST3D) instead of the val split alone (98). The folds depend on the
labels and K only, so every candidate config is scored on the same folds.
"""

import numpy as np

from vivit_jax.data.sources import generator

# The folds are the same for every config.rng_seed, so that candidates
# trained with different seeds are still scored on the same examples.
_FOLD_SEED = 0


def fold_of_each(labels: np.ndarray, num_folds: int) -> np.ndarray:
  """(N,) int labels -> (N,) the fold, in [0, num_folds), of each example."""
  folds = np.empty(len(labels), np.int32)
  dealt = 0
  for label in np.unique(labels):
    rows = np.flatnonzero(labels == label)
    rows = generator(_FOLD_SEED, int(label)).permutation(rows)
    # Continue dealing where the previous class stopped, so that fold sizes
    # differ by one example at most.
    folds[rows] = (dealt + np.arange(len(rows))) % num_folds
    dealt += len(rows)
  return folds


def roles(num_folds: int, fold: int) -> dict[str, list[int]]:
  """{'train', 'val', 'test'} -> the folds run `fold` uses for each."""
  val = (fold + 1) % num_folds
  return {'train': [f for f in range(num_folds) if f not in (fold, val)],
          'val': [val], 'test': [fold]}


def pooled_labels(train_labels: np.ndarray, val_labels: np.ndarray
                  ) -> np.ndarray:
  """The labels of the pooled examples: train's, then val's."""
  return np.concatenate([train_labels, val_labels])


def split_sizes(train_labels: np.ndarray, val_labels: np.ndarray,
                num_folds: int, fold: int) -> dict[str, int]:
  """{'train', 'val', 'test'} -> examples of run `fold`."""
  folds = fold_of_each(pooled_labels(train_labels, val_labels), num_folds)
  return {split: int(np.isin(folds, used).sum())
          for split, used in roles(num_folds, fold).items()}


def split(splits: dict[str, tuple[np.ndarray, np.ndarray]], num_folds: int,
          fold: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
  """The splits of run `fold` (see the module docstring).

  Args:
    splits: {'train', 'val', 'test'} -> (examples (N, ...), labels (N,)); the
      'test' entry is not used.
  Returns:
    {'train', 'val', 'test'} -> (examples, labels), each fold's examples in
    their pooled order.
  """
  examples = np.concatenate([splits['train'][0], splits['val'][0]])
  labels = pooled_labels(splits['train'][1], splits['val'][1])
  folds = fold_of_each(labels, num_folds)
  result = {}
  for name, used in roles(num_folds, fold).items():
    rows = np.flatnonzero(np.isin(folds, used))
    result[name] = (examples[rows], labels[rows])
  return result
