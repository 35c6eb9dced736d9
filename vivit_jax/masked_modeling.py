"""Masked volume modelling: a ViViT pre-trained on its own training volumes
before it is fine-tuned on their labels (`config.masked_pretraining`).

SimMIM (Xie et al., CVPR 2022) adapted to volumes and to a hybrid ViViT:
a share `mask_ratio` of the tokens is masked, either each token on its own
or, as VideoMAE's tube masking (Tong et al., NeurIPS 2022), the same (h, w)
positions in every t. The voxels a masked token covers are set to 0 before
the convolutional stem (if any), so that no visible token's receptive field
reads them, and the token itself is replaced by a learned `mask_token`. A
linear decoder maps each encoded token back to its voxels; the loss is the
mean squared error over the masked tokens' voxels only.

A token covers a region of `token_region(spec)` voxels: its tubelet, times
2 per level of the stem. The voxels a rounding-down stem drops (the last 4
of 28 with three levels) belong to no token and stay visible.
"""

import functools
import logging
import time
from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from vivit_jax import spec as spec_lib
from vivit_jax import steps
from vivit_jax.data import pipeline

logger = logging.getLogger(__name__)

# The parameters that pre-training does not train (the classifier), and its
# own: after pre-training the first keep their fresh values, the second go.
NOT_TRANSFERRED = ('output_projection', 'pre_logits', 'mask_token')


def token_region(spec: spec_lib.Spec) -> tuple[int, int, int]:
  """(T, H, W) input voxels of one token: the tubelet (h, w, t) in T, H, W
  order, times 2 ** (levels of the stem)."""
  model = spec.config.model
  fh, fw, ft = model.patches.size
  scale = 2 ** len(model.stem_features)
  return ft * scale, fh * scale, fw * scale


def draw_mask(rng: jax.Array, batch: int, grid: tuple[int, int, int],
              ratio: float, tube: bool) -> jnp.ndarray:
  """(batch, t, h, w) bool: per example exactly round(ratio * units) of its
  units masked, a unit a token (or, `tube`, an (h, w) position in every t),
  at least one masked and one visible."""
  t, h, w = grid
  units = h * w if tube else t * h * w
  num_masked = min(max(round(ratio * units), 1), units - 1)
  ranks = jnp.argsort(jnp.argsort(jax.random.uniform(rng, (batch, units)),
                                  axis=-1), axis=-1)
  masked = ranks < num_masked
  if tube:
    return jnp.broadcast_to(masked.reshape(batch, 1, h, w), (batch, t, h, w))
  return masked.reshape(batch, t, h, w)


def hide(volumes: jnp.ndarray, mask: jnp.ndarray,
         region: tuple[int, int, int]) -> jnp.ndarray:
  """`volumes` (B, T, H, W, C) with the voxels of the masked tokens of
  `mask` (B, t, h, w) set to 0."""
  voxels = mask
  for axis, size in enumerate(region, start=1):
    voxels = jnp.repeat(voxels, size, axis=axis)
  padding = [(0, 0)] + [(0, full - part) for full, part in
                        zip(volumes.shape[1:4], voxels.shape[1:])]
  voxels = jnp.pad(voxels, padding)
  return jnp.where(voxels[..., None], 0, volumes).astype(volumes.dtype)


def region_voxels(volumes: jnp.ndarray, grid: tuple[int, int, int],
                  region: tuple[int, int, int]) -> jnp.ndarray:
  """(B, T, H, W, C) -> (B, t h w, rt rh rw C): each token's voxels, tokens
  in the encoder's (t, h, w) order."""
  (t, h, w), (rt, rh, rw) = grid, region
  b, c = volumes.shape[0], volumes.shape[-1]
  x = volumes[:, :t * rt, :h * rh, :w * rw]
  x = x.reshape(b, t, rt, h, rh, w, rw, c).transpose(0, 1, 3, 5, 2, 4, 6, 7)
  return x.reshape(b, t * h * w, rt * rh * rw * c)


def reconstruction_loss(predicted: jnp.ndarray, volumes: jnp.ndarray,
                        mask: jnp.ndarray, region: tuple[int, int, int]
                        ) -> jnp.ndarray:
  """Mean squared error over the voxels of the masked tokens.

  predicted (B, N, rt rh rw C) voxels per token, volumes (B, T, H, W, C),
  mask (B, t, h, w) -> () float32.
  """
  target = region_voxels(volumes, mask.shape[1:], region)
  per_token = jnp.mean(
      jnp.square(predicted.astype(jnp.float32) - target), axis=-1)
  weights = mask.reshape(per_token.shape).astype(jnp.float32)
  return jnp.sum(per_token * weights) / jnp.sum(weights)


def _optimizer(spec: spec_lib.Spec, total_steps: int
               ) -> optax.GradientTransformation:
  """AdamW (MAE's betas 0.9, 0.95; weight decay 0.05) with linear warm-up
  then cosine decay to 0."""
  options = spec.config.masked_pretraining
  warmup = int(round(options.warmup_epochs * spec.steps_per_epoch))
  schedule = optax.warmup_cosine_decay_schedule(
      0.0, options.base_learning_rate, warmup, max(total_steps, warmup + 1))
  return optax.adamw(schedule, b1=0.9, b2=0.95, weight_decay=0.05)


def _make_step(model, decoder: nn.Module, spec: spec_lib.Spec, tx):
  """The pmapped `step(params, batch_stats, opt_state, batch, rng, step)
  -> (params, batch_stats, opt_state, loss)`."""
  options, grid = spec.config.masked_pretraining, spec.token_grid
  region = token_region(spec)
  skip = 1 if spec.config.model.classifier == 'token' else 0

  def step(params, batch_stats, opt_state, batch, rng, index):
    mask_rng, dropout_rng = jax.random.split(jax.random.fold_in(rng, index))
    device = jax.lax.axis_index(steps.AXIS)
    dropout_rng = jax.random.fold_in(dropout_rng, device)
    volumes = batch['inputs']
    # The global batch's mask, whatever the number of devices; this
    # device's share of it.
    local = volumes.shape[0]
    mask = jax.lax.dynamic_slice_in_dim(draw_mask(
        mask_rng, local * jax.lax.psum(1, steps.AXIS), grid,
        options.mask_ratio, options.tube_masking), device * local, local)

    def loss_fn(params):
      variables = {'params': params['model']}
      if batch_stats:
        variables['batch_stats'] = batch_stats
      _, state = model.apply(
          variables, hide(volumes, mask, region), train=True,
          token_mask=mask, rngs={'dropout': dropout_rng},
          mutable=['intermediates', 'batch_stats'])
      encoded = state['intermediates']['encoded'][0][:, skip:]
      predicted = decoder.apply({'params': params['decoder']}, encoded)
      return reconstruction_loss(predicted, volumes, mask, region), (
          state.get('batch_stats', batch_stats))

    (loss, batch_stats), grads = jax.value_and_grad(
        loss_fn, has_aux=True)(params)
    grads = jax.lax.pmean(grads, steps.AXIS)
    updates, opt_state = tx.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
    return (params, batch_stats, opt_state,
            jax.lax.pmean(loss, steps.AXIS))

  return jax.pmap(step, axis_name=steps.AXIS, in_axes=(0, 0, 0, 0, 0, None),
                  donate_argnums=(0, 1, 2))


def pretrain(spec: spec_lib.Spec, model, state: steps.TrainState, source,
             rng: jax.Array, stop: Callable[[], bool] = lambda: False
             ) -> tuple[steps.TrainState, float]:
  """Masked pre-training of the host `state`'s model for
  `config.masked_pretraining.num_epochs` on `source`'s training batches,
  or until `stop()` is true before a step.

  Returns:
    The state with the pre-trained parameters (but a fresh classifier; see
    NOT_TRANSFERRED), the stem's batch statistics, a fresh optimiser state,
    and the seconds pre-training took.
  """
  options = spec.config.masked_pretraining
  total_steps = options.num_epochs * spec.steps_per_epoch
  region = token_region(spec)
  init_rng, decoder_rng, step_rng = jax.random.split(rng, 3)
  clip = jnp.zeros((1,) + spec.input_shape, jnp.float32)
  mask = jnp.zeros((1,) + spec.token_grid, bool)
  variables = jax.jit(functools.partial(model.init, train=False))(
      init_rng, clip, token_mask=mask)
  decoder = nn.Dense(int(np.prod(region)) * spec.input_shape[-1],
                     name='decoder')
  params = {
      'model': dict(variables['params'], **state.params),
      'decoder': decoder.init(decoder_rng, jnp.zeros(
          (1, spec.config.model.hidden_size)))['params']}
  tx = _optimizer(spec, total_steps)
  step_fn = _make_step(model, decoder, spec, tx)
  carry = steps.replicate((params, state.batch_stats, tx.init(params)))
  rngs = steps.replicate(step_rng)
  start, losses = time.perf_counter(), []
  batches = pipeline.train_batches(source, 0)
  try:
    for index, batch in zip(range(total_steps), batches):
      if stop():
        break
      *carry, loss = step_fn(*carry, batch, rngs, np.int32(index))
      losses.append(loss)
      if (index + 1) % spec.steps_per_epoch == 0:
        logger.info('Masked pre-training epoch %d of %d: reconstruction loss '
                    '%.4f', (index + 1) // spec.steps_per_epoch,
                    options.num_epochs, np.mean(jax.device_get(losses)))
        losses = []
  finally:
    batches.close()
  params, batch_stats, _ = jax.device_get(jax.tree.map(lambda x: x[0], carry))
  seconds = time.perf_counter() - start
  pretrained = {name: value for name, value in params['model'].items()
                if name not in NOT_TRANSFERRED}
  params = dict(state.params, **pretrained)
  return state.replace(params=params, batch_stats=batch_stats,
                       opt_state=state.tx.init(params)
                       ).restart_average(), seconds
