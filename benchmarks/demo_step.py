"""Time the demo's own train step: `train.steps.train_step` under `jax.pmap`,
with the variant's demo config (clip length, crop, batch, optimizer), on
random clips, plain and logged (with the gradient and parameter norms).

    python -m benchmarks.demo_step --variant r2plus1d_152 [--calls 28]

Prints the first call (compilation included) and the median plain and
logged step. The loop logs every `--log-every` (10) steps.
"""
from __future__ import annotations

import argparse
import statistics
import time

import flax_video  # noqa: F401  (sets XLA:CPU flags before JAX starts)
import jax
import numpy as np

from train import config as config_lib, steps
from train.loop import create_model, create_optimizer, initial_variables, steps_and_schedule

NUM_CLASSES = 5  # motion_shapes
TRAIN_VIDEOS = 500  # its training split


def random_batch(config, devices: int, rng) -> dict:
    batch = (devices, config.per_device_batch)
    return {"clip": rng.standard_normal((*batch, config.clip_len, config.crop, config.crop, 3), dtype=np.float32),
            "label": rng.integers(0, NUM_CLASSES, batch).astype(np.int32),
            "mask": np.ones(batch, np.float32), "bad": np.zeros(batch, np.int32)}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variant", default="r2plus1d")
    p.add_argument("--calls", type=int, default=28, help="timed calls; every fourth is logged")
    args = p.parse_args(argv)

    config = config_lib.from_args(config_lib.parser().parse_args(["--variant", args.variant]))
    model = create_model(config, NUM_CLASSES)
    devices = jax.local_device_count()
    _, schedule = steps_and_schedule(config, TRAIN_VIDEOS)  # the loop's, also with several devices
    variables = initial_variables(config, model, NUM_CLASSES)
    tx = create_optimizer(config, variables["params"], schedule)
    pstate = steps.replicate(steps.create_state(variables, tx))
    p_train = steps.pmapped_train_step(model, tx, schedule)
    batch = random_batch(config, devices, np.random.default_rng(0))

    def call(logged: bool) -> float:
        nonlocal pstate
        start = time.perf_counter()
        pstate, metrics = p_train(pstate, batch, np.full(devices, logged))
        jax.block_until_ready(metrics)
        return time.perf_counter() - start

    first = call(True)
    times = {False: [], True: []}
    for i in range(args.calls):
        logged = i % 4 == 3
        times[logged].append(call(logged))
    print(f"{config.variant}, {devices} device(s) x {config.per_device_batch} clips of {config.clip_len}x"
          f"{config.crop}x{config.crop}: first call {first:.1f} s, plain step {statistics.median(times[False]):.3f} s, "
          f"logged step {statistics.median(times[True]):.3f} s (medians of {len(times[False])} and {len(times[True])})")


if __name__ == "__main__":
    main()
