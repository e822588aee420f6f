"""torchvision's schedule and torch.optim.SGD, in optax.

Schedule (per iteration): linear warmup from `warmup_factor x lr` over
`warmup_epochs` (torch's LinearLR), then x`gamma` at each milestone epoch
(MultiStepLR), chained as torch's SequentialLR chains them.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax


def learning_rate_fn(base_lr: float, steps_per_epoch: int, warmup_epochs: float, warmup_factor: float,
                     milestones, gamma: float):
    warmup = int(round(warmup_epochs * steps_per_epoch))
    boundaries = np.array([int(round(m * steps_per_epoch)) for m in milestones])

    def schedule(step):
        step = jnp.asarray(step)
        progress = jnp.minimum(step, warmup) / max(warmup, 1)
        factor = jnp.where(step < warmup, warmup_factor + (1 - warmup_factor) * progress, 1.0)
        decays = jnp.sum(step >= boundaries) if len(boundaries) else 0
        return base_lr * factor * gamma ** decays

    return schedule


def decay_mask(params, decay_bn_and_bias: bool):
    """Which parameters get weight decay: all (torchvision), or only conv
    and linear kernels."""
    return jax.tree_util.tree_map_with_path(
        lambda path, _: decay_bn_and_bias or getattr(path[-1], "key", None) == "kernel", params)


def sgd(schedule, momentum: float, weight_decay: float, mask=True) -> optax.GradientTransformation:
    """torch.optim.SGD: grad + weight_decay * param, then momentum (no
    dampening, not Nesterov), then -lr."""
    return optax.chain(optax.add_decayed_weights(weight_decay, mask=mask),
                       optax.sgd(schedule, momentum=momentum))
