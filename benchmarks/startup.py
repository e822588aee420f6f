"""Time the start-up of the demo's training run, phase by phase, as
`train.loop.train_and_evaluate` runs them: the model's initial variables,
the train state on the devices, the first (compiling) train and eval steps.

    python -m benchmarks.startup --variant r2plus1d_152 [--tfds-dir DIR]

Builds the motion_shapes dataset first if DIR (default: a temporary folder)
does not hold it.
"""
from __future__ import annotations

import argparse
import functools
import tempfile
import time
from pathlib import Path

import flax_video  # noqa: F401  (sets XLA:CPU flags before JAX starts)
import jax
import numpy as np

from flax_video.data import loader
from train import config as config_lib, data, steps
from train.loop import create_model, initial_variables, optimizer_and_restore_target, steps_and_schedule


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variant", default="r2plus1d")
    p.add_argument("--tfds-dir", help="built datasets (default: a temporary folder)")
    args = p.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        flags = ["--variant", args.variant, "--tfds-dir", args.tfds_dir or str(Path(tmp) / "tfds")]
        config = config_lib.from_args(config_lib.parser().parse_args(flags))
        sources = data.sources(config, Path(tmp) / "workdir")
        clock = time.perf_counter()

        def lap(phase: str):
            nonlocal clock
            now = time.perf_counter()
            print(f"{phase}: {now - clock:.1f} s", flush=True)
            clock = now

        devices = jax.local_device_count()
        _, schedule = steps_and_schedule(config, len(sources.train))
        model = create_model(config, sources.num_classes)
        tx, _ = optimizer_and_restore_target(config, model, schedule)
        lap("optimizer and restore target")
        variables = initial_variables(config, model, sources.num_classes)
        lap("initial variables")
        pstate = steps.replicate(steps.create_state(variables, tx))
        jax.block_until_ready(pstate)
        lap("train state on the devices")
        batches = iter(loader.train_loader(sources.train, data.train_spec(config), per_device_batch=config.per_device_batch,
                                           epochs=1, seed=0, sharding=data.sharding()))
        batch = next(batches)
        lap("first batch")
        p_train = steps.pmapped_train_step(model, tx, schedule)
        pstate, metrics = p_train(pstate, batch, np.full(devices, False))
        jax.block_until_ready(metrics)
        lap("first train step (compiles)")
        pstate, metrics = p_train(pstate, next(batches), np.full(devices, False))
        jax.block_until_ready(metrics)
        lap("second train step")
        p_eval = jax.pmap(functools.partial(steps.eval_step, model=model), axis_name=steps.AXIS)
        jax.block_until_ready(p_eval(pstate, {"clip": batch["clip"]}))
        lap("first eval step (compiles)")


if __name__ == "__main__":
    main()
