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


def head_mask(params):
    """True for the classifier's parameters (`fc`)."""
    return {name: jax.tree_util.tree_map(lambda _: name == "fc", tree) for name, tree in params.items()}


def sgd(schedule, momentum: float, weight_decay: float, mask=True, head_lr_scale: float = 1.0,
        head=None) -> optax.GradientTransformation:
    """torch.optim.SGD: grad + weight_decay * param, then momentum (no
    dampening, not Nesterov), then -lr. With `head_lr_scale`, the parameters
    `head` selects step at that multiple of the lr, as a torch param group
    with its own lr under the same schedulers does."""
    parts = [optax.add_decayed_weights(weight_decay, mask=mask), optax.sgd(schedule, momentum=momentum)]
    if head_lr_scale != 1:
        # After momentum: SGD is linear, so scaling the update scales the lr.
        parts.append(optax.masked(optax.scale(head_lr_scale), head))
    return optax.chain(*parts)
