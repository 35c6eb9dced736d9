"""The bookkeeping of a load: the value of every parameter, where it comes
from, what could not map (`Plan`), and the summary logged (`LoadReport`)."""

import collections
import dataclasses
import functools
import re
from typing import Collection

import jax.numpy as jnp
import numpy as np

from vivit_jax.pretrained import readers


class Unmappable(Exception):
  """A checkpoint array that cannot take a parameter's shape."""


@dataclasses.dataclass
class LoadReport:
  """What `load_pretrained` did with each parameter and checkpoint array.

  str() gives the short summary logged at load time: layers are merged
  (encoderblock_{0..11}) and modules named when all their arrays share a fate.

  Attributes:
    checkpoint: the file or folder read, and its kind.
    parameters: the names of all the model's parameters.
    arrays: the names of all the checkpoint's arrays.
    loaded: parameters copied unchanged.
    reshaped: {parameter: source array, shapes and how it was reshaped}.
    zeroed: {parameter: why it was set to zero}.
    kept: {parameter: why it keeps the model's initialisation}.
    unused: {checkpoint array: why no parameter takes it}.
    notes: differences between the checkpoint's architecture and the config
      that change outputs without changing shapes (GELU, LayerNorm epsilon).
  """
  checkpoint: str
  parameters: Collection[str]
  arrays: Collection[str]
  loaded: list[str] = dataclasses.field(default_factory=list)
  reshaped: dict[str, str] = dataclasses.field(default_factory=dict)
  zeroed: dict[str, str] = dataclasses.field(default_factory=dict)
  kept: dict[str, str] = dataclasses.field(default_factory=dict)
  unused: dict[str, str] = dataclasses.field(default_factory=dict)
  notes: list[str] = dataclasses.field(default_factory=list)

  def __str__(self) -> str:
    lines = [f'Initialised from {self.checkpoint}:',
             f'  loaded ({len(self.loaded)} arrays): '
             f'{compact(self.loaded, self.parameters)}']
    if self.reshaped:
      lines.append('  reshaped:')
      lines += [f'    {name}: {how}' for name, how in self.reshaped.items()]
    for title, entries, names in (
        ('zeroed', self.zeroed, self.parameters),
        ('left at initialisation', self.kept, self.parameters),
        ('not used from the checkpoint', self.unused, self.arrays)):
      if entries:
        lines.append(f'  {title}:')
        lines += [f'    {compact(group, names)}: {why}'
                  for why, group in group_by_value(entries).items()]
    lines += [f'  note: {note}' for note in self.notes]
    return '\n'.join(lines)


class Plan:
  """The value of every parameter, where it comes from, and the problems.

  Parameter and array names are '/'-joined paths; a `prefix` argument names
  a parameter or all those below it.
  """

  def __init__(self, checkpoint: readers.Checkpoint,
               target: dict[str, jnp.ndarray]):
    self.checkpoint = checkpoint
    self.source = checkpoint.params
    self.target = target
    self.values = {}
    self.report = LoadReport(
        f'{checkpoint.path} ({checkpoint.format}, '
        f'{"a video" if checkpoint.is_video else "an image"} model)',
        parameters=tuple(target), arrays=tuple(self.source) + tuple(
            checkpoint.unused))
    self.used = set()
    self.errors = []

  def has_target(self, prefix: str) -> bool:
    return bool(below(prefix, self.target))

  def has_source(self, prefix: str) -> bool:
    return bool(below(prefix, self.source))

  def load(self, name: str, source_name: str, adapt=None) -> None:
    """Sets `name` from `source_name`, through `adapt(array) -> (array,
    how)` if given."""
    if source_name not in self.source:
      self.errors.append(f'{name}: the checkpoint has no {source_name}')
      return
    self.used.add(source_name)
    value = original = self.source[source_name]
    how = ''
    if adapt:
      try:
        value, how = adapt(value)
      except Unmappable as e:
        self.errors.append(f'{name}: {source_name} {original.shape}: {e}')
        return
    shape = tuple(self.target[name].shape)
    if value.shape != shape:
      self.errors.append(f'{name}: {shape} in the model, {original.shape} in '
                         f'the checkpoint ({source_name})')
      return
    self.values[name] = np.asarray(value)
    if how:
      origin = '' if source_name == name else f'{source_name} '
      self.report.reshaped[name] = (
          f'{origin}{original.shape} -> {shape}: {how}')
    else:
      self.report.loaded.append(name)

  def load_tree(self, prefix: str, source_prefix: str) -> None:
    for name in below(prefix, self.target):
      self.load(name, source_prefix + name[len(prefix):])

  def zero(self, prefix: str, why: str) -> None:
    for name in below(prefix, self.target):
      self.values[name] = np.zeros(self.target[name].shape)
      self.report.zeroed[name] = why

  def keep(self, prefix: str, why: str) -> None:
    """Leaves the parameters under `prefix` not yet decided at their
    initialisation."""
    for name in below(prefix, self.target):
      if name not in self.values:
        self.report.kept.setdefault(name, why)

  def skip(self, source_prefix: str, why: str) -> None:
    for name in below(source_prefix, self.source):
      self.report.unused.setdefault(name, why)

  def finish(self) -> LoadReport:
    """The report; raises CheckpointError if any parameter failed to map."""
    if self.errors:
      raise readers.CheckpointError(self._error_message())
    self.keep('', 'not in the checkpoint')
    self.report.unused.update(self.checkpoint.unused)
    for name in self.source:
      if name not in self.used:
        self.report.unused.setdefault(name, 'no counterpart in the model')
    return self.report

  def _error_message(self, shown: int = 12) -> str:
    lines = [f'{self.checkpoint.path} ({self.checkpoint.format}) cannot '
             f'initialise the model ({len(self.errors)} problems); nothing '
             'was loaded.']
    width = self.source.get('embedding/bias')
    if width is not None and width.shape != self.target['embedding/bias'].shape:
      lines.append(f"  The checkpoint's width is {width.shape[-1]} "
                   '(embedding/bias), config.model.hidden_size is '
                   f"{self.target['embedding/bias'].shape[-1]}.")
    lines += [f'  {error}' for error in self.errors[:shown]]
    if len(self.errors) > shown:
      lines.append(f'  ... and {len(self.errors) - shown} more.')
    return '\n'.join(lines)


def below(prefix: str, names: Collection[str]) -> list[str]:
  """The names equal to `prefix` or under it ('' is the root)."""
  if not prefix:
    return list(names)
  return [name for name in names
          if name == prefix or name.startswith(prefix + '/')]


def group_by_value(entries: dict[str, str]) -> dict[str, list[str]]:
  groups = collections.defaultdict(list)
  for name, value in entries.items():
    groups[value].append(name)
  return groups


def compact(names: Collection[str], universe: Collection[str]) -> str:
  """`names` as the fewest subtrees of `universe` they fill, with layers
  merged: 'Transformer/encoderblock_{0..11}/{LayerNorm_0,MlpBlock_3}'."""
  names = set(names)

  @functools.cache
  def filled(prefix):
    return all(name in names for name in below(prefix, universe))

  roots = set()
  for name in names:
    parts = name.split('/')
    roots.add(next('/'.join(parts[:i]) for i in range(1, len(parts) + 1)
                   if filled('/'.join(parts[:i]))))
  layers = collections.defaultdict(set)
  for root in roots:
    match = re.search(r'encoderblock_(\d+)', root)
    pattern = re.sub(r'encoderblock_\d+', 'encoderblock_#', root)
    layers[pattern].add(int(match.group(1)) if match else None)
  siblings = collections.defaultdict(list)
  for pattern, indices in layers.items():
    merged = pattern.replace('#', index_range(indices))
    parent, _, leaf = merged.rpartition('/')
    siblings[parent].append(leaf)
  groups = [f'{parent}/{{{",".join(sorted(leaves))}}}' if len(leaves) > 1
            else f'{parent}/{leaves[0]}' for parent, leaves in siblings.items()
            if parent]
  return ', '.join(sorted(groups + siblings.get('', [])))


def index_range(indices: set) -> str:
  if indices == {None}:
    return ''
  low, high = min(indices), max(indices)
  if len(indices) == 1:
    return str(low)
  if len(indices) == high - low + 1:
    return f'{{{low}..{high}}}'
  return '{' + ','.join(map(str, sorted(indices))) + '}'
