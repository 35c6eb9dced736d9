"""The optimiser of a config (`configs/common.py:training`): SGD with momentum
or AdamW, weight decay, gradient clipping by global norm, and a cosine or
constant learning-rate schedule after a linear warm-up.
"""

import ml_collections
import optax

OPTIMIZERS = ('sgd', 'adamw')
SCHEDULES = ('cosine', 'constant')


def warmup_steps(config: ml_collections.ConfigDict, steps_per_epoch: int
                 ) -> int:
  """`lr_configs.warmup_steps`, or `warmup_epochs` in steps."""
  lr_configs = config.lr_configs
  if lr_configs.get('warmup_steps') is not None:
    return lr_configs.warmup_steps
  return round(lr_configs.get('warmup_epochs', 0.0) * steps_per_epoch)


def learning_rate_schedule(config: ml_collections.ConfigDict,
                           steps_per_epoch: int, total_steps: int
                           ) -> optax.Schedule:
  """Linear warm-up from 0 to the base rate, then cosine decay to 0 at
  `total_steps`, or the base rate held constant."""
  lr_configs = config.lr_configs
  base = lr_configs.base_learning_rate
  warmup = warmup_steps(config, steps_per_epoch)
  if lr_configs.learning_rate_schedule == 'cosine':
    after_warmup = optax.cosine_decay_schedule(base, total_steps - warmup)
  else:
    after_warmup = optax.constant_schedule(base)
  if not warmup:
    return after_warmup
  return optax.join_schedules(
      [optax.linear_schedule(0.0, base, warmup), after_warmup], [warmup])


def create_optimizer(config: ml_collections.ConfigDict,
                     schedule: optax.Schedule) -> optax.GradientTransformation:
  """Clipping by global norm (if `max_grad_norm`), then SGD or AdamW.

  AdamW decays weights decoupled from the gradient; SGD adds
  `weight_decay * params` to the gradient (L2), as PyTorch's SGD does. Both
  decay every parameter.
  """
  options = config.optimizer_configs
  weight_decay = options.get('weight_decay', 0.0)
  transforms = []
  if config.get('max_grad_norm') is not None:
    transforms.append(optax.clip_by_global_norm(config.max_grad_norm))
  if config.optimizer == 'sgd':
    if weight_decay:
      transforms.append(optax.add_decayed_weights(weight_decay))
    transforms.append(optax.sgd(schedule, momentum=options.momentum))
  else:
    transforms.append(optax.adamw(
        schedule, b1=options.beta1, b2=options.beta2, eps=options.epsilon,
        weight_decay=weight_decay))
  return optax.chain(*transforms)
