"""Orbax checkpoints in WORKDIR/checkpoints: one step folder per save, each
written to a temporary folder and renamed when complete, so a run killed at
any moment resumes from the latest complete one.

Each holds the train state (one replica), the data iterator's state and the
config. Restoring goes into an abstract target, so optax states come back
with their structure.
"""
from __future__ import annotations

from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp


def manager(workdir: str | Path, keep: int) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True)
    return ocp.CheckpointManager(Path(workdir).absolute() / "checkpoints", options=options,
                                 item_names=("state", "data", "config"))


def save(mngr: ocp.CheckpointManager, step: int, state, data_state: dict, config: dict) -> None:
    host_state = jax.tree_util.tree_map(np.asarray, state)
    mngr.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(host_state),
                                            data=ocp.args.JsonSave(data_state),
                                            config=ocp.args.JsonSave(config)))


def restore(mngr: ocp.CheckpointManager, like_state, step: int | None = None):
    """(state, data iterator state) of `step` (default: the latest), or
    None when there is no checkpoint. `like_state` gives the structure,
    shapes and dtypes (arrays or `jax.ShapeDtypeStruct`s)."""
    step = mngr.latest_step() if step is None else step
    if step is None:
        return None
    abstract = jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(np.shape(x), x.dtype), like_state)
    restored = mngr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract),
                                                          data=ocp.args.JsonRestore()))
    return restored["state"], restored["data"]


def restore_config(mngr: ocp.CheckpointManager, step: int) -> dict:
    """The config a checkpoint was trained with, as saved."""
    return mngr.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))["config"]
