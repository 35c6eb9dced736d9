"""Data: MedMNIST 3D volumes (and your own arrays) as clips, augmentation,
and the input pipeline from host memory to the devices."""

from vivit_jax.data.medmnist import *  # pylint: disable=wildcard-import
