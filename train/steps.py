"""Pure per-device steps, wrapped with `jax.pmap` by the loop.

Losses and gradients are sums over unmasked clips divided by the global
count, psum'ed across devices: the mean over every valid clip of the global
batch, as torch DDP's averaged per-device means are when all clips are valid.
Metrics are (sum, count) pairs so averages stay right with masked clips.
"""
from __future__ import annotations

import functools
from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax

AXIS = "batch"


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: Any


def create_state(variables, tx: optax.GradientTransformation) -> TrainState:
    params = variables["params"]
    # Jitted: run eagerly, the optimizer's zeros took one dispatch per
    # parameter array, 5.1 s for r2plus1d_152's 1860 arrays (1.1 s jitted).
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, batch_stats=variables["batch_stats"],
                      opt_state=jax.jit(tx.init)(params))


def replicate(state):
    """`state` on every local device, sharded as the pmapped steps' outputs
    are: with `jax_utils.replicate`'s sharding the train step compiled a
    second time at its second call (20-40 s in the demo). One `device_put`
    of the whole tree; `jax_utils.replicate` and a pmapped identity took
    15 s for r2plus1d_152's state, one dispatch per array."""
    count = jax.local_device_count()
    sharding = jax.pmap(lambda x: x, axis_name=AXIS)(np.zeros(count)).sharding
    stacked = jax.tree_util.tree_map(lambda x: np.broadcast_to(np.asarray(x), (count, *np.shape(x))), state)
    return jax.device_put(stacked, sharding)


def first_replica(pstate):
    """One replica of a replicated tree, as host arrays, without a device op
    per array (`jax_utils.unreplicate` took 1.9 s for r2plus1d_152's state)."""
    return jax.tree_util.tree_map(lambda x: np.asarray(x.addressable_shards[0].data)[0], pstate)


def train_step(state: TrainState, batch, with_norms=True, *, model, tx: optax.GradientTransformation,
               schedule: Callable) -> tuple[TrainState, dict]:
    """One SGD step; `with_norms` (per device) adds the gradient and
    parameter norms to the metrics (zeros otherwise)."""
    mask = batch["mask"]
    count = lax.psum(mask.sum(), AXIS)

    def loss_fn(params):
        logits, updates = model.apply({"params": params, "batch_stats": state.batch_stats}, batch["clip"],
                                      train=True, mutable=["batch_stats"])
        logits = logits.astype(jnp.float32)
        losses = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"])
        return (losses * mask).sum() / jnp.maximum(count, 1), (logits, updates["batch_stats"])

    (loss, (logits, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    if lax.axis_size(AXIS) > 1:
        # On one device XLA:CPU still runs this as an all-reduce that copies
        # every gradient: 40 ms of the demo's 0.5 s step.
        grads = lax.psum(grads, AXIS)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    correct = (jnp.argmax(logits, -1) == batch["label"]) * mask
    metrics = {"loss": lax.psum(loss, AXIS), "correct": lax.psum(correct.sum(), AXIS), "count": count,
               "bad": lax.psum(batch["bad"].sum(), AXIS), "lr": schedule(state.step)}
    # XLA:CPU reduces the parameter arrays at ~2 GB/s: the two norms cost
    # 60 ms of the demo's step, so the loop asks for them on logged steps only.
    norms = lambda: (optax.tree.norm(grads), optax.tree.norm(params))
    zeros = lambda: tuple(jnp.zeros(n.shape, n.dtype) for n in jax.eval_shape(norms))
    metrics["grad_norm"], metrics["param_norm"] = lax.cond(with_norms, norms, zeros)
    new_state = state.replace(step=state.step + 1, params=params, batch_stats=batch_stats, opt_state=opt_state)
    return new_state, metrics


def pmapped_train_step(model, tx: optax.GradientTransformation, schedule: Callable):
    """`train_step` over all local devices, the state donated (updated in place)."""
    return jax.pmap(functools.partial(train_step, model=model, tx=tx, schedule=schedule), axis_name=AXIS,
                    donate_argnums=0)


def eval_step(state: TrainState, batch, *, model):
    """Softmax scores of each clip (three crops averaged), for host-side
    clip and video accuracy."""
    clips = batch["clip"]
    crops = clips.shape[1] if clips.ndim == 7 else 1
    clips = clips.reshape(-1, *clips.shape[-4:])
    logits = model.apply({"params": state.params, "batch_stats": state.batch_stats}, clips, train=False)
    scores = jax.nn.softmax(logits.astype(jnp.float32), -1)
    return scores.reshape(-1, crops, scores.shape[-1]).mean(1)


def sync_batch_stats(state: TrainState) -> TrainState:
    """Average the running statistics across replicas (integer counters are
    equal on every replica)."""
    mean = lambda x: lax.pmean(x, AXIS) if jnp.issubdtype(x.dtype, jnp.floating) else x
    return state.replace(batch_stats=jax.tree_util.tree_map(mean, state.batch_stats))
