"""Loader throughput: training clips/s of 16x112x112 clips (16 frames at
15 fps, resized to 128x171, cropped to 112) for several worker counts.

    python -m benchmarks.loader [--size 256 340] [--videos 24] [--seconds 10] [--workers 0 1 2] [--json PATH]

Generates 10 s, 30 fps H.264 videos (the default 340x256 is a Kinetics clip
as downloaded; `--size 128 170` one re-encoded with `--short-side 128`) with
a keyframe every 2 s, stores them as a folder dataset and reads `--batches`
batches of 8 clips from the grain loader per setting. Each clip is decoded
from the keyframe before it.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from flax_video import data
from flax_video.data import loader, synthetic
from benchmarks.machine import cpu_info, describe
from flax_video.video import encode_video


def make_videos(root: Path, count: int, seconds: float, size: tuple[int, int], fps: int = 30) -> None:
    rng = np.random.default_rng(0)
    for i in range(count):
        folder = root / "train" / synthetic.CLASSES[i % len(synthetic.CLASSES)]
        folder.mkdir(parents=True, exist_ok=True)
        frames = synthetic.render(i % len(synthetic.CLASSES), int(seconds * fps), *size, rng)
        (folder / f"{i:03d}.mp4").write_bytes(encode_video(frames, fps, keyframe_interval=2 * fps))


def measure(source, workers: int, batches: int, batch: int = 8) -> float:
    spec = loader.ClipSpec()  # the Kinetics recipe: 16 frames at 15 fps, 128x171, crop 112
    iterator = iter(loader.train_loader(source, spec, per_device_batch=batch, epochs=100, seed=0, workers=workers))
    next(iterator)  # start-up (worker processes) is not throughput
    start = time.perf_counter()
    for _ in range(batches):
        next(iterator)
    return batches * batch / (time.perf_counter() - start)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, nargs=2, default=[256, 340], metavar=("HEIGHT", "WIDTH"))
    parser.add_argument("--videos", type=int, default=24)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--batches", type=int, default=8)
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "videos"
        height, width = args.size
        print(f"{describe(cpu_info())}: generating {args.videos} videos of {args.seconds:g} s at "
              f"{width}x{height} ...", flush=True)
        make_videos(root, args.videos, args.seconds, (height, width))
        built = data.prepare("folder", Path(tmp) / "tfds", manual_dir=str(root), dataset_name="bench")
        source = built.as_data_source("train")
        rows = []
        for workers in args.workers:
            rate = measure(source, workers, args.batches)
            rows.append({"workers": workers, "clips_per_s": rate, "clips_per_s_per_worker": rate / max(workers, 1)})
            print(f"workers {workers}: {rate:6.1f} clips/s ({rows[-1]['clips_per_s_per_worker']:.1f} per worker)", flush=True)
    if args.json:
        clip = f"16x112x112 from {args.size[1]}x{args.size[0]} @30fps -> 15fps"
        Path(args.json).write_text(json.dumps({"clip": clip, "cpu": cpu_info(), "results": rows}, indent=1))


if __name__ == "__main__":
    main()
