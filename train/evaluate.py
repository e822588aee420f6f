"""python -m train.evaluate --workdir DIR [--checkpoint STEP]: clip and video
accuracy (acc@1/@5) of a checkpoint on the validation split, with the config
it was trained with."""
from __future__ import annotations

import argparse
import sys

import flax_video  # noqa: F401  (XLA:CPU flags before JAX starts)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m train.evaluate", description=__doc__)
    parser.add_argument("--workdir", required=True, help="a training workdir")
    parser.add_argument("--checkpoint", type=int, help="step to evaluate (default: the latest)")
    parser.add_argument("--three-crop", action="store_true", help="average left, center and right crops")
    args = parser.parse_args(argv)

    from train import checkpoints, data, parallel
    from train.config import Config
    from train.loop import Evaluator, create_model, format_metrics, optimizer_and_restore_target

    mngr = checkpoints.manager(args.workdir, keep=1_000_000)
    step = args.checkpoint or mngr.latest_step()
    if step is None or step not in mngr.all_steps():
        print(f"error: no checkpoint {step if args.checkpoint else ''} in {args.workdir}/checkpoints", file=sys.stderr)
        return 2
    config = Config(**checkpoints.restore_config(mngr, step))
    config.three_crop = config.three_crop or args.three_crop
    sources = data.sources(config, args.workdir)
    num_classes = config.num_classes or sources.num_classes
    model = create_model(config, num_classes)
    # The model gives the structure; the checkpoint gives the values. Only
    # the optimizer state's structure matters, so its schedule is a stand-in.
    _, target = optimizer_and_restore_target(config, model, lambda step: 0.0)
    state, _ = checkpoints.restore(mngr, target, step)
    par = parallel.create(config.parallel, model, tx=None, schedule=None)
    evaluator = Evaluator(config, sources.validation, data.sharding(), True)
    result = evaluator(par.put_state(state), par)
    evaluator.close()
    print(f"step {step}: " + format_metrics(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
