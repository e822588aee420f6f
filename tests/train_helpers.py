"""Running `python -m train.main` in tests: the tiny motion_shapes run, the
checkpointed parameters, forced CPU devices."""
import os
import subprocess
import sys
from pathlib import Path

import orbax.checkpoint as ocp

ROOT = Path(__file__).resolve().parents[1]
# Depth 10 (one block a stage) compiles in half the time of depth 18; what the
# depths change is tested on the models themselves (test_models, test_equivalence).
TINY = ["--variant", "mc3_10", "--motion-shapes", "train_videos=10", "validation_videos=5", "frames=8", "size=32",
        "--clip-len", "4", "--resize", "20", "20", "--crop", "16", "--per-device-batch", "2", "--epochs", "2",
        "--workers", "0", "--checkpoint-every", "2", "--log-every", "1"]


def run_train(args, **kwargs):
    return subprocess.run([sys.executable, "-m", "train.main", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=600, **kwargs)


def saved_params(workdir, step=None):
    folder = Path(workdir) / "checkpoints"
    step = step or max(int(p.name) for p in folder.iterdir() if p.name.isdigit())
    state = ocp.StandardCheckpointer().restore(folder / str(step) / "state")
    return step, state


def leaves(tree):
    import jax

    return jax.tree_util.tree_leaves(tree)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def devices_env(count: int, **extra) -> dict:
    flags = os.environ.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={count}"
    return {**os.environ, "XLA_FLAGS": flags, **extra}
