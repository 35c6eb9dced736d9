"""Which videos a data set holds, and their labels.

Two layouts of `config.dataset_configs.data_dir`:
  'folders'  data_dir/{train,val,test}/CLASS/VIDEO: the classes are the
             folders of train/, sorted; files whose extension is not in
             VIDEO_EXTENSIONS are ignored.
  'csv'      data_dir/{train,val,test}.csv, Kinetics-style lines `path,label`
             (a first line `path,label` is a header): paths relative to the
             list's folder, labels class indices in [0, num_classes) if all
             of them are integers, else class names (the classes are the
             train list's names, sorted).

  LAYOUTS, SPLITS, VIDEO_EXTENSIONS
  read_lists(dataset_configs)   -> (class_names, {split: [(path, label)]}).
"""

import csv
import os

import ml_collections

from vivit_jax.data.sources import DataError

LAYOUTS = ('folders', 'csv')
SPLITS = ('train', 'val', 'test')
VIDEO_EXTENSIONS = ('.3gp', '.avi', '.flv', '.m4v', '.mkv', '.mov', '.mp4',
                    '.mpeg', '.mpg', '.ogv', '.ts', '.webm', '.wmv')


def _folder_split(data_dir: str, split: str) -> dict[str, list[str]]:
  """{class folder: [video paths, sorted]} of data_dir/split."""
  root = os.path.join(data_dir, split)
  if not os.path.isdir(root):
    raise DataError(f'{root} is not a folder: the folders layout needs '
                    f'{data_dir}/{{train,val,test}}/CLASS/*.mp4 (or another '
                    'video format); or set config.dataset_configs.layout='
                    "'csv'.")
  return {name: sorted(
      os.path.join(root, name, file) for file in os.listdir(
          os.path.join(root, name))
      if os.path.splitext(file)[1].lower() in VIDEO_EXTENSIONS)
          for name in sorted(os.listdir(root))
          if os.path.isdir(os.path.join(root, name))}


def _read_folders(data_dir: str
                  ) -> tuple[list[str], dict[str, list[tuple[str, int]]]]:
  splits = {split: _folder_split(data_dir, split) for split in SPLITS}
  class_names = list(splits['train'])
  lists = {}
  for split, classes in splits.items():
    unknown = sorted(set(classes) - set(class_names))
    if unknown:
      raise DataError(f'{data_dir}/{split} has classes {unknown} that '
                      f'{data_dir}/train lacks: add them to train/ or remove '
                      'them.')
    lists[split] = [(path, class_names.index(name))
                    for name, paths in classes.items() for path in paths]
  return class_names, lists


def _csv_rows(path: str) -> list[tuple[str, str]]:
  """[(video path, label text)] of one list."""
  if not os.path.isfile(path):
    raise DataError(f'{path} not found: the csv layout needs lists '
                    'train.csv, val.csv and test.csv of `path,label` lines in '
                    "config.dataset_configs.data_dir; or set layout='folders'.")
  rows = []
  with open(path, newline='') as f:
    for number, row in enumerate(csv.reader(f), 1):
      if not row or (number == 1 and [c.strip() for c in row] == [
          'path', 'label']):
        continue
      if len(row) != 2:
        raise DataError(f'{path}, line {number}: {len(row)} fields, expected '
                        'two, `path,label`; quote paths that hold commas.')
      video, label = row[0].strip(), row[1].strip()
      rows.append((os.path.join(os.path.dirname(path), video), label))
  return rows


def _read_csv(data_dir: str, num_classes: int
              ) -> tuple[list[str], dict[str, list[tuple[str, int]]]]:
  rows = {split: _csv_rows(os.path.join(data_dir, f'{split}.csv'))
          for split in SPLITS}
  labels = [label for split in rows.values() for _, label in split]
  if all(label.lstrip('-').isdigit() for label in labels):
    for split, split_rows in rows.items():
      for video, label in split_rows:
        if not 0 <= int(label) < num_classes:
          raise DataError(f'{data_dir}/{split}.csv: {video} has label '
                          f'{label}, outside [0, {num_classes}): fix the '
                          'list or config.dataset_configs.num_classes.')
    class_names = [str(i) for i in range(num_classes)]
  else:
    class_names = sorted({label for _, label in rows['train']})
    for split, split_rows in rows.items():
      unknown = sorted({label for _, label in split_rows} - set(class_names))
      if unknown:
        raise DataError(f'{data_dir}/{split}.csv has labels {unknown[:5]} '
                        'that train.csv lacks: use class names of train.csv '
                        'or integer labels throughout.')
  return class_names, {
      split: [(video, class_names.index(label)) for video, label in split_rows]
      for split, split_rows in rows.items()}


def read_lists(dataset_configs: ml_collections.ConfigDict
               ) -> tuple[list[str], dict[str, list[tuple[str, int]]]]:
  """The class names and, for each split, its videos and labels.

  Uses `data_dir`, `layout` and `num_classes` (which must match the classes
  found, for class names).

  Returns:
    (class_names, {'train' | 'val' | 'test': [(path, label index)]}); the
    files are not opened.
  Raises:
    DataError: a list or folder is missing or malformed, or the classes do
      not match num_classes.
  """
  data_dir = dataset_configs.get('data_dir')
  if not data_dir or not os.path.isdir(os.path.expanduser(data_dir)):
    raise DataError(f'config.dataset_configs.data_dir {data_dir!r} is not a '
                    'folder: set --config.dataset_configs.data_dir to the '
                    'folder of the videos.')
  data_dir = os.path.expanduser(data_dir)
  layout = dataset_configs.get('layout', 'folders')
  num_classes = dataset_configs.num_classes
  if layout == 'folders':
    class_names, lists = _read_folders(data_dir)
  elif layout == 'csv':
    class_names, lists = _read_csv(data_dir, num_classes)
  else:
    raise DataError(f'config.dataset_configs.layout: unknown {layout!r}. Use '
                    f'one of {LAYOUTS}.')
  if len(class_names) != num_classes:
    raise DataError(f'{data_dir} has {len(class_names)} classes '
                    f'({", ".join(class_names[:5])}...) but config.'
                    f'dataset_configs.num_classes is {num_classes}: set it to '
                    f'{len(class_names)}.')
  return class_names, lists
