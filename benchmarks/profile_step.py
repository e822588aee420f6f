"""Where a flax_video step spends its time on CPU, per kind of XLA op.

    python -m benchmarks.profile_step [--variant r3d_18] [--mode training] [--dtype float32] [--steps 3]

Runs the step of `benchmarks.vs_torchvision` (batch 4 x 16x112x112) under
`jax.profiler`, then sums the time of the ops XLA:CPU ran, per step: oneDNN's
custom calls by target, XLA's fusions and other ops by their HLO name, so
the share of the convs against the rest can be read off.
"""
from __future__ import annotations

import argparse
import collections
import gzip
import json
import re
import tempfile
from pathlib import Path

import jax
import numpy as np

from benchmarks.machine import cpu_info, describe
from benchmarks.vs_torchvision import FlaxRunner


def custom_call_targets(hlo_text: str) -> dict[str, str]:
    """HLO op name -> its custom call target, from the compiled module's text."""
    return dict(re.findall(r"%?([\w.-]+) = .*?custom-call\(.*?custom_call_target=\"([\w.-]+)\"", hlo_text))


def op_kind(name: str, targets: dict[str, str]) -> str:
    """The group an XLA op's trace event is counted in: a custom call by its
    target, any other op by its HLO name without the numeric suffix."""
    if name in targets:
        return targets[name].removeprefix("flax_video_")
    return re.sub(r"(\.\d+)+$", "", name)


def trace_events(log_dir: Path) -> list[dict]:
    [path] = log_dir.rglob("perfetto_trace.json.gz")
    with gzip.open(path) as f:
        return json.load(f)["traceEvents"]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variant", default="r3d_18")
    p.add_argument("--mode", default="training", choices=["inference", "training"])
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--size", type=int, default=112)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--top", type=int, default=25, help="ops listed by name")
    args = p.parse_args(argv)

    rng = np.random.default_rng(0)
    x = rng.standard_normal((args.batch, args.frames, args.size, args.size, 3), dtype=np.float32)
    labels = rng.integers(0, 400, args.batch).astype(np.int32)
    runner = FlaxRunner(args.variant, args.mode, x, labels, args.dtype)
    runner.timed(1)
    with tempfile.TemporaryDirectory() as log_dir:
        with jax.profiler.trace(log_dir, create_perfetto_trace=True):
            seconds = runner.timed(args.steps) / args.steps
        events = trace_events(Path(log_dir))

    # One complete ("X") event per op XLA:CPU ran, named by its HLO op.
    targets = custom_call_targets(runner.compiled.as_text())
    spans = [e for e in events if e.get("ph") == "X" and "dur" in e]
    by_name = collections.defaultdict(float)
    for e in spans:
        name = e["name"]
        if "hlo_op" not in e.get("args", {}):
            continue
        by_name[name] += e["dur"] / 1e3 / args.steps  # ms per step
    by_kind = collections.defaultdict(float)
    for name, ms in by_name.items():
        by_kind[op_kind(name, targets)] += ms
    total = sum(by_kind.values())

    print(f"{describe(cpu_info())}, jax {jax.__version__}: {args.variant} {args.mode} {args.dtype}, batch "
          f"{args.batch} x {args.frames}x{args.size}x{args.size}: {seconds * 1e3:.0f} ms per step (wall), "
          f"{total:.0f} ms of ops traced (ops on two threads overlap)")
    print(f"{'op kind':40} {'ms/step':>8} {'share':>6}")
    for kind, ms in sorted(by_kind.items(), key=lambda kv: -kv[1])[:args.top]:
        print(f"{kind:40} {ms:8.1f} {ms / total:6.1%}")


if __name__ == "__main__":
    main()
