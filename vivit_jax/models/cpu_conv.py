"""The CPU convolution kernels (`cpu_conv.cc`): stride-1 convolutions,
channels-last, and their gradients.

XLA:CPU's own convolution, above all its gradients, runs at a few percent of
the machine's peak with few input channels, and as a matmul over unfolded
patches (`cnn3d.unfolded_conv`) it spends most of its time writing the
patches (benchmarks/PROFILE.md). The kernels read the padded input as it
lies. `cpu_kernels` builds them; where it cannot, `cnn3d` unfolds.
"""

import functools
from typing import Optional, Sequence

import jax
import jax.numpy as jnp

from vivit_jax.models import cpu_kernels

_FEATURES = 32  # The kernels' feature block (kFeatures in cpu_conv.cc).


def _blocks(features: int) -> int:
  return -(-features // _FEATURES)


def _pack(kernel: jnp.ndarray) -> jnp.ndarray:
  """(KD, KH, KW, C, F) -> (blocks, KD, KH, KW * C, 32), zero features
  added up to a whole block."""
  kd, kh, kw, c, f = kernel.shape
  blocks = _blocks(f)
  kernel = jnp.pad(kernel, ((0, 0),) * 4 + ((0, blocks * _FEATURES - f),))
  return kernel.reshape(kd, kh, kw * c, blocks, _FEATURES).transpose(
      3, 0, 1, 2, 4)


def _unpack(packed: jnp.ndarray, shape: Sequence[int]) -> jnp.ndarray:
  """`_pack`'s inverse: (blocks, KD, KH, KW * C, 32) -> `shape`."""
  kd, kh, kw, c, f = shape
  return packed.transpose(1, 2, 3, 0, 4).reshape(kd, kh, kw, c, -1)[..., :f]


def _correlate(x: jnp.ndarray, kernel: jnp.ndarray,
               bias: jnp.ndarray) -> jnp.ndarray:
  """Valid cross-correlation plus bias: (B, D, H, W, C) with (KD, KH, KW, C,
  F) and (F,) -> (B, D - KD + 1, H - KH + 1, W - KW + 1, F)."""
  features = kernel.shape[-1]
  padded = _blocks(features) * _FEATURES
  out = tuple(n - k + 1 for n, k in zip(x.shape[1:4], kernel.shape[:3]))
  y = jax.ffi.ffi_call(
      cpu_kernels.CONV_FORWARD,
      jax.ShapeDtypeStruct((x.shape[0], *out, padded), jnp.float32),
      vmap_method='sequential')(x, _pack(kernel),
                                jnp.pad(bias, (0, padded - features)))
  return y[..., :features]


def _kernel_grad(x: jnp.ndarray, dy: jnp.ndarray,
                 shape: Sequence[int]) -> tuple[jnp.ndarray, jnp.ndarray]:
  """The gradients of `_correlate(x, kernel, bias)`'s kernel (of `shape`)
  and bias for the output gradient dy."""
  features = shape[-1]
  padded = _blocks(features) * _FEATURES
  dy = jnp.pad(dy, ((0, 0),) * 4 + ((0, padded - features),))
  kd, kh, kw, c, _ = shape
  packed, bias_grad = jax.ffi.ffi_call(
      cpu_kernels.CONV_WEIGHT_GRAD,
      (jax.ShapeDtypeStruct((_blocks(features), kd, kh, kw * c, _FEATURES),
                            jnp.float32),
       jax.ShapeDtypeStruct((padded,), jnp.float32)),
      vmap_method='sequential')(x, dy)
  return _unpack(packed, shape), bias_grad[:features]


def _pad(x: jnp.ndarray, padding) -> jnp.ndarray:
  """Pads (or, where negative, crops) the 3 spatial axes of x."""
  return jax.lax.pad(x, 0.0, ((0, 0, 0), *((lo, hi, 0) for lo, hi in padding),
                              (0, 0, 0)))


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _conv(x, kernel, bias, padding):
  return _correlate(_pad(x, padding), kernel, bias)


def _conv_forward(x, kernel, bias, padding):
  padded = _pad(x, padding)
  return _correlate(padded, kernel, bias), (padded, kernel)


def _conv_backward(padding, residuals, dy):
  padded, kernel = residuals
  window, channels = kernel.shape[:3], kernel.shape[3]
  flipped = jnp.flip(kernel, axis=(0, 1, 2)).swapaxes(3, 4)
  dx = _correlate(_pad(dy, [(k - 1 - lo, k - 1 - hi)
                            for k, (lo, hi) in zip(window, padding)]),
                  flipped, jnp.zeros(channels))
  return (dx, *_kernel_grad(padded, dy, kernel.shape))


_conv.defvjp(_conv_forward, _conv_backward)


def conv(x: jnp.ndarray, kernel: jnp.ndarray,
         padding: Sequence[tuple[int, int]],
         bias: Optional[jnp.ndarray] = None) -> jnp.ndarray:
  """A stride-1 convolution (cross-correlation, as `lax.conv_general_dilated`)
  with explicit padding, plus a bias, in float32, where
  `cpu_kernels.available()`.

  Args:
    x: (batch, *spatial, C), 1 to 3 spatial axes.
    kernel: (*window, C, F).
    padding: (low, high) for each spatial axis.
    bias: (F,), or None for none.

  Returns:
    (batch, *out, F), out = spatial + low + high - window + 1, in x's dtype.
  """
  cpu_kernels.require('cnn3d.unfolded_conv')
  missing = 3 - (x.ndim - 2)
  x3 = x.reshape(x.shape[0], *(1,) * missing, *x.shape[1:])
  kernel3 = kernel.reshape(*(1,) * missing, *kernel.shape)
  padding3 = ((0, 0),) * missing + tuple(tuple(p) for p in padding)
  if bias is None:
    bias = jnp.zeros(kernel.shape[-1])
  y = _conv(x3.astype(jnp.float32), kernel3.astype(jnp.float32),
            bias.astype(jnp.float32), padding3)
  return y.reshape(y.shape[0], *y.shape[1 + missing:]).astype(x.dtype)
