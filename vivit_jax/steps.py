"""The train state and the compiled steps that training, evaluation and
`--mode=bench` share.

Steps are `pmap`ped over the local devices: each device takes an equal share
of the global batch (`config.batch_size`, split over all devices of all
hosts), gradients are averaged with `lax.pmean`, and the 3D CNN's BatchNorm
averages its statistics over the same axis. Metrics stay on the devices until
the host asks for them.
"""

import functools
from typing import Any, Callable

from clu import metrics as clu_metrics
from flax import jax_utils
from flax.training import train_state
import jax
import jax.numpy as jnp
import optax

from vivit_jax import optimizers
from vivit_jax import spec as spec_lib

AXIS = 'batch'


class TrainState(train_state.TrainState):
  """Parameters, optimiser state, step, the 3D CNN's `batch_stats`
  collection ({} for models without BatchNorm), and the moving average of
  the parameters (None without `config.ema_decay`)."""
  batch_stats: Any = None
  ema_params: Any = None

  def variables(self) -> dict:
    """The variables `model.apply` trains with."""
    return self._with_batch_stats(self.params)

  def eval_variables(self) -> dict:
    """The variables that are evaluated: the moving average where there
    is one."""
    return self._with_batch_stats(
        self.params if self.ema_params is None else self.ema_params)

  def _with_batch_stats(self, params) -> dict:
    if self.batch_stats:
      return {'params': params, 'batch_stats': self.batch_stats}
    return {'params': params}

  def restart_average(self) -> 'TrainState':
    """The state with its moving average (if any) equal to its
    parameters."""
    if self.ema_params is None:
      return self
    return self.replace(ema_params=self.params)


def ema_update(ema_params, params, step: jax.Array, decay: float):
  """The moving average after `step` (1 for the first step) updates:
  d * ema + (1 - d) * params with d = min(decay, (1 + step) / (10 + step))."""
  decay = jnp.minimum(decay, (1.0 + step) / (10.0 + step))
  return jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p,
                      ema_params, params)


def sharpness_aware_gradients(grad_fn: Callable, params, grads, rho: float):
  """SAM's gradient (Foret et al., ICLR 2021, Eqs. 2-3): the gradient at
  params + rho * g / ||g||, the first-order worst point of the ball of radius
  `rho` around `params`, with g = `grads` (already averaged over devices).
  `grad_fn(params) -> (value, grads)` is the step's loss gradient; what the
  perturbed pass returns besides its gradient (batch statistics, logits) is
  dropped. Returns the gradient averaged over devices."""
  scale = rho / (optax.tree.norm(grads) + 1e-12)
  perturbed = jax.tree.map(lambda p, g: p + scale * g, params, grads)
  _, perturbed_grads = grad_fn(perturbed)
  return jax.lax.pmean(perturbed_grads, AXIS)


def replicate(tree):
  """`tree` on every local device, sharded as the pmapped steps' outputs
  are, so that the steps compile once."""
  return jax_utils.replicate(tree, axis_name=AXIS)


def init_variables(model, spec: spec_lib.Spec, rng: jax.Array) -> dict:
  """The model's initial variables (float32 whatever the compute dtype)."""
  clip = jnp.zeros((1,) + spec.input_shape, jnp.float32)
  return jax.jit(functools.partial(model.init, train=False))(rng, clip)


def create_train_state(spec: spec_lib.Spec, model, rng: jax.Array
                       ) -> TrainState:
  """A freshly initialised state on the host (not replicated); the
  optimiser follows the spec's schedule, or a constant rate outside
  training."""
  variables = init_variables(model, spec, rng)
  return TrainState.create(
      apply_fn=model.apply, params=variables['params'],
      batch_stats=variables.get('batch_stats', {}),
      ema_params=variables['params'] if spec.config.ema_decay else None,
      tx=optimizers.create_optimizer(spec))


def _top5_correct(logits: jnp.ndarray, labels: jnp.ndarray, **_
                  ) -> jnp.ndarray:
  """(batch, K) logits, (batch,) labels -> (batch,) 1.0 where the label is
  among the 5 highest logits."""
  _, top5 = jax.lax.top_k(logits, 5)
  return jnp.any(top5 == labels[:, None], axis=-1).astype(jnp.float32)


def metrics_collection(num_classes: int) -> type[clu_metrics.Collection]:
  """Average loss and top-1 accuracy, and top-5 accuracy if K >= 5."""
  fields = {'loss': clu_metrics.Average.from_output('loss'),
            'accuracy': clu_metrics.Accuracy}
  if num_classes >= 5:
    fields['top5'] = clu_metrics.Average.from_fun(_top5_correct)
  return clu_metrics.Collection.create(**fields)


def make_train_step(model, spec: spec_lib.Spec) -> Callable:
  """The pmapped `train_step(state, batch, rng) -> (state, metrics)`.

  `state` and `rng` are replicated, `batch` has leading dims (devices,
  per-device batch), with 'inputs', 'targets' (soft, (B, K)) and 'labels'.
  The dropout key is `rng` folded with the step and the device index. A
  state with `ema_params` updates them with `config.ema_decay`
  (`ema_update`). With `config.sam_rho` > 0 the optimiser takes SAM's
  gradient (`sharpness_aware_gradients`; two passes per step), while the
  metrics and batch statistics are those of the unperturbed pass. The input
  state is donated; `metrics` (`metrics_collection`) is replicated over
  devices.
  """
  metrics_class = metrics_collection(spec.num_classes)
  ema_decay = spec.config.ema_decay
  sam_rho = spec.config.sam_rho

  def train_step(state: TrainState, batch: dict, rng: jax.Array):
    rng = jax.random.fold_in(jax.random.fold_in(rng, state.step),
                             jax.lax.axis_index(AXIS))
    mutable = ['batch_stats'] if state.batch_stats else False

    def loss_fn(params):
      output = model.apply(
          state.replace(params=params).variables(), batch['inputs'],
          train=True, rngs={'dropout': rng}, mutable=mutable)
      logits, updates = output if mutable else (output, {})
      losses = optax.softmax_cross_entropy(logits, batch['targets'])
      return losses.mean(), (losses, logits, updates)

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    (_, (losses, logits, updates)), grads = grad_fn(state.params)
    grads = jax.lax.pmean(grads, AXIS)
    if sam_rho:
      grads = sharpness_aware_gradients(grad_fn, state.params, grads, sam_rho)
    state = state.apply_gradients(grads=grads)
    if state.ema_params is not None:
      state = state.replace(ema_params=ema_update(
          state.ema_params, state.params, state.step, ema_decay))
    if mutable:
      state = state.replace(batch_stats=updates['batch_stats'])
    metrics = metrics_class.gather_from_model_output(
        axis_name=AXIS, loss=losses, logits=logits, labels=batch['labels'])
    return state, metrics

  return jax.pmap(train_step, axis_name=AXIS, donate_argnums=(0,))


def make_eval_step(model) -> Callable:
  """The pmapped `eval_step(variables, inputs) -> logits`.

  `variables` are replicated; `inputs` (devices, per-device batch, ...) ->
  float32 logits (devices, per-device batch, K).
  """
  return jax.pmap(functools.partial(model.apply, train=False), axis_name=AXIS)
