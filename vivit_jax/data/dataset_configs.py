"""Building blocks of `config.dataset_configs` and `config.augmentation`,
one per kind of data set (`vivit_jax.data`), in Scenic's layout:

  config.dataset_configs = dataset_configs.medmnist_dataset('adrenalmnist3d')
  config.augmentation = dataset_configs.augmentation('adrenalmnist3d', 28)
"""

from typing import Optional, Sequence

import ml_collections
from ml_collections import config_dict

from vivit_jax.data import medmnist


def medmnist_dataset(name: str, size: int = 28,
                     data_dir: Optional[str] = None
                     ) -> ml_collections.ConfigDict:
  """`config.dataset_configs` of a MedMNIST 3D set: depth is time, 1 channel.

  `data_dir` None looks in ~/.medmnist, then among the files shipped with
  the package (AdrenalMNIST3D at 28), and downloads what is missing.
  """
  return ml_collections.ConfigDict({
      'dataset_name': name,
      'size': size,
      'data_dir': config_dict.FieldReference(data_dir, field_type=str),
      'num_classes': len(medmnist.dataset_info(name)['label']),
      'num_frames': size,
      'crop_size': size,
      'num_channels': 1,
  })


def arrays_dataset(path: str, *, num_classes: int, num_frames: int,
                   crop_size: int, num_channels: int = 1,
                   class_names: Optional[Sequence[str]] = None
                   ) -> ml_collections.ConfigDict:
  """`config.dataset_configs` of your own volumes or clips: an npz in
  MedMNIST's format at `path` ({train,val,test}_{images,labels}; images
  (N, D, H, W) or (N, D, H, W, C), uint8 or floats in [0, 1]; D = num_frames,
  H = W = crop_size)."""
  return ml_collections.ConfigDict({
      'dataset_name': 'arrays',
      'path': path,
      'num_classes': num_classes,
      'class_names': config_dict.FieldReference(
          tuple(class_names) if class_names else None, field_type=tuple),
      'num_frames': num_frames,
      'crop_size': crop_size,
      'num_channels': num_channels,
  })


def video_dataset(num_classes: int, *, num_frames: int = 32, stride: int = 2,
                  crop_size: int = 224, min_resize: int = 256,
                  layout: str = 'folders', data_dir: Optional[str] = None,
                  num_test_clips: int = 4, num_test_crops: int = 1,
                  sample_by: str = 'frames',
                  target_fps: Optional[float] = None,
                  zero_centering: bool = True
                  ) -> ml_collections.ConfigDict:
  """`config.dataset_configs` of a folder or list of video files (see
  `vivit_jax.data.video_source`); defaults: the paper's Kinetics input,
  32 frames at stride 2, 224 crops of frames resized to 256, 4 views.

  Args:
    num_classes: must match the classes found in `data_dir`.
    layout: 'folders' (data_dir/{train,val,test}/CLASS/*) or 'csv'
      (data_dir/{train,val,test}.csv of `path,label` lines).
    sample_by: 'frames' (stride in frames) or 'time' (stride in steps of
      1 / target_fps seconds, for mixed or variable frame rates).
    zero_centering: inputs in [-1, 1] (ImageNet ViTs), else [0, 1].
  """
  return ml_collections.ConfigDict({
      'dataset_name': 'video',
      'layout': layout,
      'data_dir': config_dict.FieldReference(data_dir, field_type=str),
      'num_classes': num_classes,
      'num_frames': num_frames,
      'stride': stride,
      'sample_by': sample_by,
      'target_fps': config_dict.FieldReference(target_fps, field_type=float),
      'min_resize': min_resize,
      'crop_size': crop_size,
      'num_channels': 3,
      'num_test_clips': num_test_clips,
      'num_test_crops': num_test_crops,
      'zero_centering': zero_centering,
      # Decoding threads; None: one per CPU.
      'num_workers': config_dict.FieldReference(None, field_type=int),
  })


def augmentation(name: str, size: int) -> ml_collections.ConfigDict:
  """`config.augmentation` for a data set, label-preserving.

  Fields: max_shift (voxels, per axis), crop_min_scale (random resized
  crops, the smallest side kept; 1: none), rotation_plane (two axes whose
  90-degree turns keep the label; (): none), intensity_jitter (brightness
  offset and contrast factor amplitude), flip_axes (MedMNIST sets: every
  axis along which a flip keeps the label; your own arrays: none, add the
  ones that are safe), eval_flips (evaluate each volume as the mean of its logits over
  every combination of those flips), mixup_alpha (0: no mixup; the paper
  uses 0.1 to 0.3, Table 7), label_smoothing (lambda of Eq. 11). See
  `vivit_jax.data.augment`.
  """
  return ml_collections.ConfigDict({
      'max_shift': size // 8,  # As CIFAR's random crop: 4 pixels of 32.
      'crop_min_scale': 1.0,
      'rotation_plane': (),
      'intensity_jitter': 0.1,
      'flip_axes': (medmnist.default_flip_axes(name)
                    if name in medmnist.DATASETS else ()),
      'eval_flips': False,
      'mixup_alpha': 0.0,
      'label_smoothing': 0.0,
  })


def kinetics400_dataset() -> ml_collections.ConfigDict:
  """The paper's Kinetics-400 input: 32 RGB frames of 224 x 224, 400 classes."""
  return ml_collections.ConfigDict({
      'dataset_name': 'kinetics400',
      'num_classes': 400,
      'num_frames': 32,
      'crop_size': 224,
      'num_channels': 3,
  })
