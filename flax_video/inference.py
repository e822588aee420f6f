"""What predict and extract share: loading weights, and a video as a batch of
evaluation clips."""
from __future__ import annotations

import argparse
import dataclasses
import os
from pathlib import Path

import jax
import numpy as np

from flax_video.pretrained import load_converted
from flax_video.registry import create_model, list_models
from flax_video.sampling import take_clip, uniform_clip_starts
from flax_video.transforms import eval_transform
from flax_video.video import read_video
from flax_video.weights import EvalTransform, load_pretrained, named_weights, weights_for_file


def load_weights(weights: str | os.PathLike, variant: str | None = None) -> tuple[dict, str]:
    """Variables and model name from published weights by name
    (`r2plus1d_18`, `r2plus1d_34_ig65m.ig65m_clip8`; downloaded and cached),
    a converted directory, or a torchvision `.pth`/`.pt`/`.safetensors` file
    converted in memory (nothing is written). `variant` is checked against,
    or inferred from, the weights."""
    # Imported here: convert depends on flax_video, not the other way round.
    from convert.files import WEIGHT_SUFFIXES
    entry = named_weights(weights, variant)
    if entry:
        return load_pretrained(entry.name)[1], entry.model
    path = Path(weights)
    if path.suffix in WEIGHT_SUFFIXES:
        from convert import load_torchvision_weights
        return load_torchvision_weights(path, variant)
    return load_converted(path, variant)


def eval_transform_of(weights: str | os.PathLike, clip_len: int | None = None,
                      fps: float | None = None) -> EvalTransform:
    """The evaluation transform the weights were published with (by name, or
    by a published file's name), else torchvision's video preset; `clip_len`
    and `fps`, when given, override it."""
    entry = named_weights(weights) or weights_for_file(Path(weights).name)
    transform = entry.transform if entry else EvalTransform()
    overrides = {k: v for k, v in (("clip_len", clip_len), ("fps", fps)) if v is not None}
    return dataclasses.replace(transform, **overrides)


def video_clips(path, num_clips: int, transform: EvalTransform = EvalTransform()) -> tuple[np.ndarray, np.ndarray]:
    """`num_clips` uniformly spaced clips of a video, eval-transformed:
    (num_clips, clip_len, crop, crop, 3) float32, and their start frames."""
    frames = read_video(path, fps=transform.fps).frames
    starts = uniform_clip_starts(len(frames), transform.clip_len, num_clips)
    clips = [eval_transform(take_clip(frames, s, transform.clip_len), transform.resize, transform.crop,
                            transform.mean, transform.std) for s in starts]
    return np.stack(clips), starts


def jitted_model(name: str, variables: dict, num_classes: int):
    """`clips -> outputs` compiled once per clip-batch shape."""
    model = create_model(name, num_classes=num_classes)
    variables = jax.device_put(variables)
    apply = jax.jit(lambda v, x: model.apply(v, x))
    return lambda clips: np.asarray(apply(variables, clips))


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--weights", required=True,
                        help="published weights by name (downloaded and cached: "
                             + ", ".join(sorted(list_models(pretrained=True))) + "; a model name means its first), "
                             "a converted directory (python -m convert torch2flax), or a torchvision "
                             ".pth/.pt/.safetensors file, converted on the fly")
    parser.add_argument("--variant", choices=list_models(), metavar="NAME",
                        help="model name (default: from the weights); one of " + ", ".join(list_models()))
    parser.add_argument("--clips", type=int, default=10, help="uniformly spaced clips per video")
    parser.add_argument("--clip-len", type=int, help="frames per clip (default: as the weights were "
                        "published; torchvision's 16 for other weights)")
    parser.add_argument("--fps", type=float, help="frame rate clips are sampled at (default: as the weights "
                        "were published; torchvision's 15 for other weights)")
