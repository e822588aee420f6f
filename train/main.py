"""python -m train.main --variant r2plus1d [flags]: see --help.

With no other flag it builds the motion_shapes dataset (if absent) and trains
the demo; `--dataset kinetics400 --data-dir DIR` uses torchvision's recipe.
Rerunning the same command resumes from the workdir's latest checkpoint.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import sys

import flax_video  # noqa: F401  (sets XLA:CPU flags before JAX starts)


def _initialize_distributed(args) -> None:
    import jax

    address = args.coordinator_address or os.environ.get("JAX_COORDINATOR_ADDRESS")
    if not address:
        return
    count = args.num_processes or int(os.environ["JAX_NUM_PROCESSES"])
    index = args.process_id if args.process_id is not None else int(os.environ["JAX_PROCESS_ID"])
    jax.distributed.initialize(address, num_processes=count, process_id=index)


def main(argv=None) -> int:
    from train import config as config_lib, data

    args = config_lib.parser().parse_args(argv)
    try:
        config = config_lib.from_args(args)
        if args.print_config:
            print(json.dumps(dataclasses.asdict(config), indent=2))
            return 0
        data.check(config)
    except (ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    _initialize_distributed(args)
    import jax

    from train import workdir
    from train.checkpoints import CheckpointWriteError
    from train.loop import NonFiniteLoss, train_and_evaluate

    lead = jax.process_index() == 0
    try:
        # Process 0 holds the lock for all: the processes of a multi-host run share the workdir.
        with workdir.owned(args.workdir) if lead else contextlib.nullcontext():
            if lead:
                print(f"{config.variant} on {config.dataset}: {jax.device_count()} devices, "
                      f"{config.per_device_batch * jax.device_count()} clips per step; workdir {args.workdir}",
                      flush=True)
            train_and_evaluate(config, args.workdir)
    except workdir.WorkdirBusy as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except (NonFiniteLoss, CheckpointWriteError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
