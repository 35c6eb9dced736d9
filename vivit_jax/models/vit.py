"""The Vision Transformer for images (paper Section 3.1), in the layout of
google-research/vision_transformer, and the pieces of its head that the video
models share: the class token, pooling and the classifier.

Inputs are channels-last: images (batch, H, W, C).
"""

from typing import Optional, Sequence

import flax.linen as nn
import jax.numpy as jnp

from vivit_jax.models import encoder

CLASSIFIERS = ('token', 'gap')


def prepend_class_token(module: nn.Module, x: jnp.ndarray,
                         name: str) -> jnp.ndarray:
  """(batch, N, d) -> (batch, 1 + N, d), z_cls of Eq. 1 first."""
  cls = module.param(name, nn.initializers.zeros, (1, 1, x.shape[-1]))
  cls = jnp.broadcast_to(cls.astype(x.dtype), (x.shape[0], 1, x.shape[-1]))
  return jnp.concatenate([cls, x], axis=1)


def pool(x: jnp.ndarray, classifier: str) -> jnp.ndarray:
  """(batch, N, d) -> (batch, d): the class token, or the mean of tokens."""
  return x[:, 0] if classifier == 'token' else jnp.mean(x, axis=1)


def classify(x: jnp.ndarray, num_classes: int,
              representation_size: Optional[int], head_name: str,
              dtype: jnp.dtype) -> jnp.ndarray:
  """Optional pre-logits layer (Dense + tanh), then a zero-initialised head."""
  if representation_size is not None:
    x = jnp.tanh(nn.Dense(representation_size, dtype=dtype,
                          name='pre_logits')(x))
  x = nn.Dense(num_classes, kernel_init=nn.initializers.zeros, dtype=dtype,
               name=head_name)(x)
  return x.astype(jnp.float32)



class ViT(nn.Module):
  """Vision Transformer for images (Section 3.1), vision_transformer layout.

  Attributes:
    num_classes: classes of the head; 0 leaves out the head (and
      pre_logits): the model returns its pooled representation, as VTN's
      per-frame backbone uses it.
    patch_size: (h, w).
    classifier: 'token' (z_cls^L) or 'gap' (mean of z^L).

  No attribute has a default: `create_model` sets each from the config,
  whose defaults live in `vivit_jax.config_builders`.
  """
  num_classes: int
  patch_size: Sequence[int]
  hidden_size: int
  num_layers: int
  num_heads: int
  mlp_dim: int
  classifier: str
  representation_size: Optional[int]
  dropout_rate: float
  attention_dropout_rate: float
  stochastic_droplayer_rate: float
  gelu_approximate: bool
  remat: bool
  dtype: jnp.dtype

  @nn.compact
  def __call__(self, images: jnp.ndarray, *, train: bool) -> jnp.ndarray:
    """(batch, H, W, C) -> (batch, num_classes), or (batch, hidden_size)."""
    fh, fw = self.patch_size[:2]
    x = nn.Conv(self.hidden_size, (fh, fw), strides=(fh, fw), padding='VALID',
                dtype=self.dtype, name='embedding')(images)
    x = x.reshape(x.shape[0], -1, self.hidden_size)
    if self.classifier == 'token':
      x = prepend_class_token(self, x, 'cls')
    x = encoder.Encoder(
        num_layers=self.num_layers, mlp_dim=self.mlp_dim,
        num_heads=self.num_heads, dropout_rate=self.dropout_rate,
        attention_dropout_rate=self.attention_dropout_rate,
        stochastic_droplayer_rate=self.stochastic_droplayer_rate,
        gelu_approximate=self.gelu_approximate, remat=self.remat,
        dtype=self.dtype, name='Transformer')(x, train=train)
    if not self.num_classes:
      return pool(x, self.classifier)
    return classify(pool(x, self.classifier), self.num_classes,
                     self.representation_size, 'head', self.dtype)
