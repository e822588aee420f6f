"""How the loop runs the pure per-device steps of `train.steps` over all
devices (`--parallel`):

- `pmap` (the default): `jax.pmap`; the state has a leading device axis and
  each device keeps its own BatchNorm running statistics, averaged before
  evaluation and checkpoints.
- `jit`: `jax.jit` of `jax.shard_map` over a 1-D mesh of every device: the
  batch is one global array sharded along the mesh, the state is replicated.
  The running statistics are averaged after every step; since their update
  is linear, that equals pmap's average at evaluation and checkpoint time
  (train-mode BatchNorm uses batch statistics, so the trajectory is the
  same).

Both give the loop the same interface, and checkpoints hold the same
single-replica host state, so a run can resume under the other.
"""
from __future__ import annotations

import functools

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from train import steps


class Pmap:
    def __init__(self, model, tx, schedule):
        self._train = steps.pmapped_train_step(model, tx, schedule)
        self._eval = jax.pmap(functools.partial(steps.eval_step, model=model), axis_name=steps.AXIS)
        self._sync = jax.pmap(steps.sync_batch_stats, axis_name=steps.AXIS)

    put_state = staticmethod(steps.replicate)
    host_state = staticmethod(steps.first_replica)

    def train(self, state, batch, logged: bool):
        state, metrics = self._train(state, batch, np.full(jax.local_device_count(), logged))
        return state, {k: float(np.asarray(v)[0]) for k, v in metrics.items()}

    def eval(self, state, clips) -> np.ndarray:
        """Scores `(local devices, per-device batch, classes)`."""
        return np.asarray(self._eval(state, {"clip": clips}))

    def sync(self, state):
        return self._sync(state)


class Jit:
    def __init__(self, model, tx, schedule):
        self.mesh = Mesh(np.array(jax.devices()), (steps.AXIS,))
        self.replicated = NamedSharding(self.mesh, P())
        self.batched = NamedSharding(self.mesh, P(steps.AXIS))

        def train_step(state, batch, with_norms):
            state, metrics = steps.train_step(state, batch, with_norms, model=model, tx=tx, schedule=schedule)
            return steps.sync_batch_stats(state), metrics

        # check_vma off: on one device the step skips its gradient psum, so
        # JAX cannot prove the updated state replicated, though it is.
        shard = functools.partial(jax.shard_map, mesh=self.mesh, check_vma=False)
        self._train = jax.jit(shard(train_step, in_specs=(P(), P(steps.AXIS), P()), out_specs=(P(), P())),
                              donate_argnums=0)
        self._eval = jax.jit(shard(functools.partial(steps.eval_step, model=model),
                                   in_specs=(P(), P(steps.AXIS)), out_specs=P(steps.AXIS)))

    def put_state(self, state):
        def put(x):
            x = np.asarray(x)
            return jax.make_array_from_callback(x.shape, self.replicated, lambda index: x[index])
        return jax.tree_util.tree_map(put, state)

    @staticmethod
    def host_state(state):
        return jax.tree_util.tree_map(lambda x: np.asarray(x.addressable_data(0)), state)

    def _global(self, local):
        """This process's `(local devices, per-device batch, ...)` slice as its
        part of one global batch array."""
        local = np.asarray(local)
        return jax.make_array_from_process_local_data(self.batched, local.reshape(-1, *local.shape[2:]))

    def train(self, state, batch, logged: bool):
        state, metrics = self._train(state, jax.tree_util.tree_map(self._global, batch), np.bool_(logged))
        return state, {k: float(np.asarray(v.addressable_data(0))) for k, v in metrics.items()}

    def eval(self, state, clips) -> np.ndarray:
        scores = self._eval(state, {"clip": self._global(clips)})
        shards = sorted(scores.addressable_shards, key=lambda shard: shard.index[0].start or 0)
        local = np.concatenate([np.asarray(shard.data) for shard in shards])
        return local.reshape(*np.shape(clips)[:2], -1)

    @staticmethod
    def sync(state):
        return state  # averaged after every step


MODES = {"pmap": Pmap, "jit": Jit}


def create(mode: str, model, tx, schedule):
    return MODES[mode](model, tx, schedule)
