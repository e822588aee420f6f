"""Label videos: the top-k classes with probabilities, softmax averaged over
uniformly sampled clips with the evaluation transform.

    python -m flax_video.predict VIDEO [VIDEO ...] --weights r2plus1d_18 [--topk 5] [--clips 10]

`--weights` names published weights (downloaded once and cached), or is a
converted directory or a torchvision weight file. Clips are prepared as the
weights were published (16 frames at 15 fps for torchvision's).

An unreadable video gets an error line and the others are still processed;
the exit status is 0 only if every video succeeded.
"""
from __future__ import annotations

import argparse
import sys

import numpy as np

from flax_video.inference import (add_model_arguments, eval_transform_of, jitted_model, load_weights,
                                  video_clips)
from flax_video.labels import KINETICS400_CLASSES
from flax_video.video import VideoDecodeError


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


def class_names(num_classes: int) -> list[str]:
    if num_classes == len(KINETICS400_CLASSES):
        return list(KINETICS400_CLASSES)
    return [f"class {i}" for i in range(num_classes)]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flax_video.predict", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("videos", nargs="+", metavar="VIDEO")
    add_model_arguments(parser)
    parser.add_argument("--topk", type=int, default=5)
    args = parser.parse_args(argv)

    try:
        variables, name = load_weights(args.weights, args.variant)
    except (OSError, ValueError) as error:  # ConversionError is a ValueError
        print(f"error: --weights: {error}", file=sys.stderr)
        return 2
    transform = eval_transform_of(args.weights, args.clip_len, args.fps)
    num_classes = variables["params"]["fc"]["bias"].shape[0]
    names = class_names(num_classes)
    logits_of = jitted_model(name, variables, num_classes)
    failures = 0
    for video in args.videos:
        try:
            clips, _ = video_clips(video, args.clips, transform)
        except VideoDecodeError as error:
            print(f"error: {error}", file=sys.stderr, flush=True)
            failures += 1
            continue
        probabilities = softmax(logits_of(clips)).mean(axis=0)
        print(video)
        for index in np.argsort(-probabilities, kind="stable")[:args.topk]:
            print(f"  {probabilities[index]:.4f}  {names[index]}")
        sys.stdout.flush()
    if failures:
        print(f"{failures} of {len(args.videos)} videos failed", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
