"""Pretrained checkpoints (paper Section 3.4): `readers` (with `scenic`)
turn files into named arrays, `mapping` maps them into a model, `adapt`
reshapes kernels and positional embeddings on the way, and `plan` keeps
the account of every parameter for the load report."""

from vivit_jax.pretrained.adapt import inflate_kernel
from vivit_jax.pretrained.adapt import interpolate_over_time
from vivit_jax.pretrained.adapt import resize_patch_kernel
from vivit_jax.pretrained.mapping import load_pretrained
from vivit_jax.pretrained.plan import LoadReport
from vivit_jax.pretrained.readers import Checkpoint
from vivit_jax.pretrained.readers import CheckpointError
from vivit_jax.pretrained.readers import read_checkpoint
