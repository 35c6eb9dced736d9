"""Data: MedMNIST 3D volumes (and your own arrays) as clips, video files,
augmentation, and the input pipeline from host memory to the devices."""

from vivit_jax.data.medmnist import *  # pylint: disable=wildcard-import
from vivit_jax.data.video_source import prediction_views
from vivit_jax.data.video_source import VideoSource
