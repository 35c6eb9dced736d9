"""VTN, the Video Transformer Network (Neimark et al., 2021, Section 3): a
ViT on every frame, a Longformer over the frames' [CLS] features, and an
MLP head on the video's [CLS] token.

Clips are channels-last: (batch, T, H, W, C), as for ViViT.

Freezing the backbone (`config.model.freeze_backbone`, VTN Table 5) is a
`jax.lax.stop_gradient` on its features: its parameters get zero
gradients, and XLA drops the backbone's backward pass and the activations
it would keep, which an optax mask would not. Weight decay would still
shrink the frozen weights, so `check_config` refuses it with a frozen
backbone.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from vivit_jax.models import cpu_gelu
from vivit_jax.models import cpu_layer_norm
from vivit_jax.models import longformer
from vivit_jax.models import vit
from vivit_jax.models.vit import prepend_class_token
from vivit_jax import spec


class MlpHead(nn.Module):
  """Section 3.3: LayerNorm, Linear, GELU, Dropout, Linear; N(0, 0.02)
  initialisation as the paper's."""
  num_classes: int
  mlp_dim: int
  dropout_rate: float = 0.0
  gelu_approximate: bool = True
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray, *, train: bool) -> jnp.ndarray:
    """(batch, d) -> (batch, num_classes), float32."""
    init = nn.initializers.normal(0.02)
    x = cpu_layer_norm.LayerNorm(dtype=self.dtype, name='LayerNorm_0')(x)
    x = cpu_gelu.DenseGelu(self.mlp_dim, approximate=self.gelu_approximate,
                           kernel_init=init, dtype=self.dtype,
                           name='Dense_0')(x)
    x = nn.Dropout(self.dropout_rate)(x, deterministic=not train)
    x = nn.Dense(self.num_classes, kernel_init=init, dtype=self.dtype,
                 name='Dense_1')(x)
    return x.astype(jnp.float32)


class VTN(nn.Module):
  """ViT-backbone VTN. Parameters: `Backbone/...` (a ViT without head,
  loadable from ViT checkpoints), `cls_TemporalTransformer`,
  `TemporalTransformer/...` (`longformer.LongformerEncoder`), `MlpHead/...`.

  Attributes:
    patch_size, hidden_size, num_layers, num_heads, mlp_dim, classifier:
      the ViT backbone; its pooled output per frame (the [CLS] output for
      'token') is the frame's feature, of width hidden_size.
    freeze_backbone: stop gradients into the backbone (see the module doc).
    temporal_num_layers, temporal_num_heads, temporal_mlp_dim: the
      Longformer (hidden size = the backbone's, as in the paper).
    attention_window, position_embedding, max_frames: see
      `longformer.LongformerEncoder`.
    temporal_attention_dropout_rate: the paper's attention dropout, 0.1.
    head_mlp_dim, head_dropout_rate: the MLP head.
  """
  num_classes: int
  patch_size: tuple[int, int]
  hidden_size: int
  num_layers: int
  num_heads: int
  mlp_dim: int
  classifier: str
  freeze_backbone: bool
  temporal_num_layers: int
  temporal_num_heads: int
  temporal_mlp_dim: int
  attention_window: int
  position_embedding: str
  max_frames: int
  temporal_attention_dropout_rate: float
  head_mlp_dim: int
  head_dropout_rate: float
  dropout_rate: float
  attention_dropout_rate: float
  stochastic_droplayer_rate: float
  gelu_approximate: bool
  remat: bool
  dtype: jnp.dtype

  def frame_features(self, clip: jnp.ndarray, *, train: bool) -> jnp.ndarray:
    """(batch, T, H, W, C) -> (batch, T, d): the backbone on every frame."""
    b, t = clip.shape[:2]
    features = vit.ViT(
        num_classes=0, patch_size=self.patch_size,
        hidden_size=self.hidden_size, num_layers=self.num_layers,
        num_heads=self.num_heads, mlp_dim=self.mlp_dim,
        classifier=self.classifier, representation_size=None,
        dropout_rate=self.dropout_rate,
        attention_dropout_rate=self.attention_dropout_rate,
        stochastic_droplayer_rate=self.stochastic_droplayer_rate,
        gelu_approximate=self.gelu_approximate, remat=self.remat,
        dtype=self.dtype, name='Backbone')(
            clip.reshape(b * t, *clip.shape[2:]), train=train)
    features = features.reshape(b, t, -1)
    return jax.lax.stop_gradient(features) if self.freeze_backbone else (
        features)

  @nn.compact
  def __call__(self, clip: jnp.ndarray, *, train: bool) -> jnp.ndarray:
    """(batch, T, H, W, C) -> (batch, num_classes)."""
    x = prepend_class_token(self, self.frame_features(clip, train=train),
                            'cls_TemporalTransformer')
    x = longformer.LongformerEncoder(
        num_layers=self.temporal_num_layers, mlp_dim=self.temporal_mlp_dim,
        num_heads=self.temporal_num_heads, window=self.attention_window,
        position_embedding=self.position_embedding,
        max_frames=self.max_frames, dropout_rate=self.dropout_rate,
        attention_dropout_rate=self.temporal_attention_dropout_rate,
        gelu_approximate=self.gelu_approximate, dtype=self.dtype,
        name='TemporalTransformer')(x, train=train)
    return MlpHead(self.num_classes, self.head_mlp_dim,
                   self.head_dropout_rate, self.gelu_approximate, self.dtype,
                   name='MlpHead')(x[:, 0], train=train)


def create(config: ml_collections.ConfigDict) -> VTN:
  """The VTN of a config (`config_builders.vtn_model`)."""
  model, temporal = config.model, config.model.temporal_transformer
  return VTN(
      num_classes=config.dataset_configs.num_classes,
      patch_size=tuple(model.patches.size[:2]),
      hidden_size=model.hidden_size, num_layers=model.num_layers,
      num_heads=model.num_heads, mlp_dim=model.mlp_dim,
      classifier=model.classifier, freeze_backbone=model.freeze_backbone,
      temporal_num_layers=temporal.num_layers,
      temporal_num_heads=temporal.num_heads,
      temporal_mlp_dim=temporal.mlp_dim,
      attention_window=temporal.attention_window,
      position_embedding=temporal.position_embedding,
      max_frames=temporal.max_frames,
      temporal_attention_dropout_rate=temporal.attention_dropout_rate,
      head_mlp_dim=model.head.mlp_dim,
      head_dropout_rate=model.head.dropout_rate,
      dropout_rate=model.dropout_rate,
      attention_dropout_rate=model.attention_dropout_rate,
      stochastic_droplayer_rate=model.stochastic_droplayer_rate,
      gelu_approximate=model.gelu_approximate, remat=model.remat,
      dtype=jnp.dtype(config.model_dtype_str))


def check_config(config: ml_collections.ConfigDict) -> None:
  """Raises ValueError naming the field if `config`'s VTN cannot be built."""
  model, data = config.model, config.dataset_configs
  temporal = model.temporal_transformer
  if model.classifier not in vit.CLASSIFIERS:
    spec.config_error('model.classifier',
                      f'unknown classifier {model.classifier!r}',
                      f'Use one of {vit.CLASSIFIERS}.')
  for field, width, heads in (
      ('model.num_heads', model.hidden_size, model.num_heads),
      ('model.temporal_transformer.num_heads', model.hidden_size,
       temporal.num_heads)):
    if width % heads:
      spec.config_error(field, f'{heads} heads do not divide hidden_size '
                        f'{width}', 'Choose a head count that divides it.')
  fh, fw = model.patches.size[:2]
  if data.crop_size % fh or data.crop_size % fw:
    spec.config_error('model.patches.size', f'patch {fh}x{fw} does not '
                      f'divide dataset_configs.crop_size {data.crop_size}',
                      'Choose a patch size that divides the crop size.')
  if temporal.num_layers < 1:
    spec.config_error('model.temporal_transformer.num_layers',
                      f'{temporal.num_layers} layers',
                      'Use at least one Longformer layer (the paper: 1-3).')
  if temporal.attention_window < 2 or temporal.attention_window % 2:
    spec.config_error('model.temporal_transformer.attention_window',
                      f'window {temporal.attention_window} is not a '
                      'positive even number', 'Use e.g. 32 (the paper).')
  if temporal.position_embedding not in longformer.POSITION_EMBEDDINGS:
    spec.config_error('model.temporal_transformer.position_embedding',
                      f'unknown embedding {temporal.position_embedding!r}',
                      f'Use one of {longformer.POSITION_EMBEDDINGS}.')
  if temporal.position_embedding == 'learned' and (
      temporal.max_frames < data.num_frames):
    spec.config_error('model.temporal_transformer.max_frames',
                      f'{temporal.max_frames} learned positions for '
                      f'{data.num_frames} frames',
                      'Set max_frames to at least dataset_configs.num_frames.')
  decay = config.get('optimizer_configs', {}).get('weight_decay', 0.0)
  if model.freeze_backbone and decay:
    spec.config_error('model.freeze_backbone', f'weight decay {decay} would '
                      'still shrink the frozen backbone',
                      'Set optimizer_configs.weight_decay=0.0, or fine-tune '
                      'the backbone.')
  if model.get('representation_size') is not None:
    spec.config_error('model.representation_size', "VTN's backbone has no "
                      'pre_logits layer: its [CLS] output is the feature',
                      'Set it to None.')
