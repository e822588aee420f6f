"""Orbax checkpoints in WORKDIR/checkpoints: one step folder per save, each
written to a temporary folder and renamed when complete, so a run killed at
any moment resumes from the latest complete one.

Each holds the train state (one replica), the data iterator's state and the
config. Restoring goes into an abstract target, so optax states come back
with their structure. A checkpoint that cannot be restored (truncated or
missing files, e.g. from a full disk) is moved to `WORKDIR/damaged_checkpoints/`
and the next newest is tried. Old checkpoints are deleted only after a newer
one is complete; a save that fails stops the run (`CheckpointWriteError`)
with the earlier ones intact.
"""
from __future__ import annotations

import shutil
import time
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp


class CheckpointWriteError(OSError):
    """A checkpoint could not be written (a full disk, say)."""


def manager(workdir: str | Path, keep: int) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True)
    return ocp.CheckpointManager(Path(workdir).absolute() / "checkpoints", options=options,
                                 item_names=("state", "data", "config"))


def _write_failed(error: Exception, mngr: ocp.CheckpointManager) -> CheckpointWriteError:
    step = getattr(mngr, "flax_video_writing", "?")
    folder = Path(mngr.directory)
    kept = ", ".join(str(s) for s in sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit())) or "none"
    return CheckpointWriteError(f"writing checkpoint {step} in {mngr.directory} failed ({error}); stopping. "
                                f"The complete checkpoints (steps: {kept}) are kept; free space and rerun to resume.")


def save(mngr: ocp.CheckpointManager, step: int, state, data_state: dict, config: dict) -> None:
    """Start writing a checkpoint (asynchronously); a failure of this or of
    the previous write raises CheckpointWriteError."""
    host_state = jax.tree_util.tree_map(np.asarray, state)
    try:
        mngr.wait_until_finished()  # the previous write, so that its failure names its step
        mngr.flax_video_writing = step
        mngr.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(host_state),
                                                data=ocp.args.JsonSave(data_state),
                                                config=ocp.args.JsonSave(config)))
    except (OSError, ValueError) as error:
        raise _write_failed(error, mngr) from error


def finish(mngr: ocp.CheckpointManager) -> None:
    """Wait for the last write and close; its failure raises CheckpointWriteError."""
    try:
        mngr.wait_until_finished()
    except (OSError, ValueError) as error:
        raise _write_failed(error, mngr) from error
    finally:
        mngr.close()


def _set_aside(mngr: ocp.CheckpointManager, step: int) -> Path:
    damaged = Path(mngr.directory).parent / "damaged_checkpoints"
    damaged.mkdir(exist_ok=True)
    target = damaged / f"{step}-{time.strftime('%Y%m%d-%H%M%S')}"
    shutil.move(str(Path(mngr.directory) / str(step)), target)
    mngr.reload()
    return target


def restore(mngr: ocp.CheckpointManager, like_state, step: int | None = None):
    """(state, data iterator state) of `step`, or of the newest checkpoint
    that restores (damaged newer ones are set aside, saying which and why);
    None when there is none. `like_state` gives the structure, shapes and
    dtypes (arrays or `jax.ShapeDtypeStruct`s)."""
    abstract = jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(np.shape(x), x.dtype), like_state)
    args = ocp.args.Composite(state=ocp.args.StandardRestore(abstract), data=ocp.args.JsonRestore())
    if step is not None:
        restored = mngr.restore(step, args=args)
        return restored["state"], restored["data"]
    for candidate in sorted(mngr.all_steps(), reverse=True):
        try:
            restored = mngr.restore(candidate, args=args)
        except Exception as error:  # noqa: BLE001 - orbax and tensorstore raise many kinds
            reason = str(error).strip().splitlines()[0][:300] if str(error).strip() else type(error).__name__
            if jax.process_index() == 0:
                where = _set_aside(mngr, candidate)
                print(f"warning: checkpoint {candidate} is damaged ({type(error).__name__}: {reason}); "
                      f"moved to {where}, trying the one before", flush=True)
            continue
        return restored["state"], restored["data"]
    return None


def restore_config(mngr: ocp.CheckpointManager, step: int) -> dict:
    """The config a checkpoint was trained with, as saved."""
    return mngr.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))["config"]
