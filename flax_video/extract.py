"""Pooled backbone features for many videos.

    python -m flax_video.extract --weights NAME_OR_PATH [--variant NAME] --inputs LIST_OR_DIR --output DIR [--clips 10]

`--inputs` is a directory (searched recursively for .mp4 .avi .mkv .webm .mov)
or a text file with one video path per line. For each video, the output holds
`DIR/<name>.npz`, where <name> is the video's path relative to the input
directory (or to the list file's directory) without its suffix:

    clips       (num_clips, D) float32   pooled features of each clip
    mean        (D,) float32             their average
    clip_starts (num_clips,) int64       first frame of each clip (at --fps)
    source      str                      the video's path

D is 512 for BasicBlock models and 2048 for Bottleneck ones. Load with
`numpy.load(path)`. Each file is written atomically, so a rerun after an
interruption skips the videos already done. Failures are listed in
`DIR/failures.tsv` (path, error) and in the summary; the exit status is 0 only
if no video failed.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np
from tqdm import tqdm

from flax_video.inference import (add_model_arguments, eval_transform_of, jitted_model, load_weights,
                                  video_clips)
from flax_video.video import VideoDecodeError

VIDEO_SUFFIXES = (".mp4", ".avi", ".mkv", ".webm", ".mov")


def list_videos(inputs: str | os.PathLike) -> list[tuple[Path, Path]]:
    """(video path, output name) pairs, sorted."""
    inputs = Path(inputs)
    if inputs.is_dir():
        videos = sorted(p for p in inputs.rglob("*") if p.suffix.lower() in VIDEO_SUFFIXES)
        root = inputs
    elif inputs.is_file():
        root = inputs.parent
        lines = [line.strip() for line in inputs.read_text().splitlines()]
        videos = [root / line for line in lines if line and not line.startswith("#")]
    else:
        raise FileNotFoundError(f"--inputs {inputs}: no such directory or list file")
    pairs = []
    for video in videos:
        try:
            name = video.relative_to(root)
        except ValueError:  # absolute path outside the list's directory
            name = Path(*video.parts[1:])
        pairs.append((video, name.with_suffix(".npz")))
    return pairs


def save_atomically(path: Path, **arrays) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(f".{path.stem}.tmp.npz")
    np.savez(staging, **arrays)
    os.replace(staging, path)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flax_video.extract", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(parser)
    parser.add_argument("--inputs", required=True, help="directory of videos, or a file listing them")
    parser.add_argument("--output", required=True, help="directory to write features to")
    args = parser.parse_args(argv)

    try:
        videos = list_videos(args.inputs)
    except FileNotFoundError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    out = Path(args.output)
    todo = [(video, out / name) for video, name in videos if not (out / name).exists()]
    print(f"{len(videos)} videos, {len(videos) - len(todo)} already done, {len(todo)} to extract")
    failures = []
    if todo:
        try:
            variables, name = load_weights(args.weights, args.variant)
        except (OSError, ValueError) as error:
            print(f"error: --weights: {error}", file=sys.stderr)
            return 2
        transform = eval_transform_of(args.weights, args.clip_len, args.fps)
        features_of = jitted_model(name, variables, num_classes=0)
        for video, target in tqdm(todo, unit="video", file=sys.stdout):
            try:
                clips, starts = video_clips(video, args.clips, transform)
            except VideoDecodeError as error:
                failures.append((video, str(error)))
                continue
            features = features_of(clips)
            save_atomically(target, clips=features, mean=features.mean(axis=0),
                            clip_starts=starts, source=str(video))
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "failures.tsv", "w") as f:
        f.writelines(f"{video}\t{error}\n" for video, error in failures)
    print(f"done: {len(todo) - len(failures)} extracted, {len(videos) - len(todo)} skipped, "
          f"{len(failures)} failed")
    for video, error in failures:
        print(f"  failed: {error}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
