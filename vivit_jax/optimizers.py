"""The optimiser of a config (`config_builders.training`): SGD with momentum
or AdamW, weight decay, gradient clipping by global norm, and a cosine or
constant learning-rate schedule after a linear warm-up.
"""

import optax

from vivit_jax import spec as spec_lib


def learning_rate_schedule(spec: spec_lib.Spec) -> optax.Schedule:
  """Linear warm-up from 0 to the base rate over `spec.warmup_steps`, then
  cosine decay to 0 at `spec.total_steps`, or the base rate held constant.
  Outside training (no total steps) the base rate, constant."""
  lr_configs = spec.config.lr_configs
  base = lr_configs.base_learning_rate
  if spec.total_steps is None:
    return optax.constant_schedule(base)
  warmup = spec.warmup_steps
  if lr_configs.learning_rate_schedule == 'cosine':
    after_warmup = optax.cosine_decay_schedule(base, spec.total_steps - warmup)
  else:
    after_warmup = optax.constant_schedule(base)
  if not warmup:
    return after_warmup
  return optax.join_schedules(
      [optax.linear_schedule(0.0, base, warmup), after_warmup], [warmup])


def create_optimizer(spec: spec_lib.Spec) -> optax.GradientTransformation:
  """Clipping by global norm (if `max_grad_norm`), then SGD or AdamW.

  AdamW decays weights decoupled from the gradient; SGD adds
  `weight_decay * params` to the gradient (L2), as PyTorch's SGD does. Both
  decay every parameter.
  """
  config = spec.config
  options, schedule = config.optimizer_configs, learning_rate_schedule(spec)
  transforms = []
  if config.max_grad_norm is not None:
    transforms.append(optax.clip_by_global_norm(config.max_grad_norm))
  if config.optimizer == 'sgd':
    if options.weight_decay:
      transforms.append(optax.add_decayed_weights(options.weight_decay))
    transforms.append(optax.sgd(schedule, momentum=options.momentum))
  else:
    transforms.append(optax.adamw(
        schedule, b1=options.beta1, b2=options.beta2, eps=options.epsilon,
        weight_decay=options.weight_decay))
  return optax.chain(*transforms)
