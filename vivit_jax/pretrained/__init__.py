"""Pretrained checkpoints: `readers` turn files into named arrays, `mapping`
maps them into a model (paper Section 3.4) and reports what it did."""

from vivit_jax.pretrained.mapping import inflate_kernel
from vivit_jax.pretrained.mapping import interpolate_over_time
from vivit_jax.pretrained.mapping import load_pretrained
from vivit_jax.pretrained.mapping import LoadReport
from vivit_jax.pretrained.mapping import resize_patch_kernel
from vivit_jax.pretrained.readers import Checkpoint
from vivit_jax.pretrained.readers import CheckpointError
from vivit_jax.pretrained.readers import read_checkpoint
