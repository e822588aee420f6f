"""What predict and extract share: loading weights, and a video as a batch of
evaluation clips."""
from __future__ import annotations

import argparse
import os
from pathlib import Path

import jax
import numpy as np

from flax_video.pretrained import load_converted
from flax_video.registry import create_model, list_models
from flax_video.sampling import take_clip, uniform_clip_starts
from flax_video.transforms import eval_transform
from flax_video.video import read_video


def load_weights(weights: str | os.PathLike, variant: str | None = None) -> tuple[dict, str]:
    """Variables and model name from a converted directory, or from a
    torchvision `.pth`/`.pt`/`.safetensors` file converted in memory (nothing
    is written). `variant` is checked against, or inferred from, the weights."""
    # Imported here: convert depends on flax_video, not the other way round.
    from convert.files import WEIGHT_SUFFIXES
    path = Path(weights)
    if path.suffix in WEIGHT_SUFFIXES:
        from convert import load_torchvision_weights
        return load_torchvision_weights(path, variant)
    return load_converted(path, variant)


def video_clips(path, clip_len: int, num_clips: int, fps: float) -> tuple[np.ndarray, np.ndarray]:
    """`num_clips` uniformly spaced clips of a video, eval-transformed:
    (num_clips, clip_len, 112, 112, 3) float32, and their start frames."""
    frames = read_video(path, fps=fps).frames
    starts = uniform_clip_starts(len(frames), clip_len, num_clips)
    return np.stack([eval_transform(take_clip(frames, s, clip_len)) for s in starts]), starts


def jitted_model(name: str, variables: dict, num_classes: int):
    """`clips -> outputs` compiled once per clip-batch shape."""
    model = create_model(name, num_classes=num_classes)
    variables = jax.device_put(variables)
    apply = jax.jit(lambda v, x: model.apply(v, x))
    return lambda clips: np.asarray(apply(variables, clips))


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--weights", required=True,
                        help="converted directory (python -m convert torch2flax) or torchvision "
                             ".pth/.pt/.safetensors file, converted on the fly")
    parser.add_argument("--variant", choices=list_models(), metavar="NAME",
                        help="model name (default: from the weights); one of " + ", ".join(list_models()))
    parser.add_argument("--clips", type=int, default=10, help="uniformly spaced clips per video")
    parser.add_argument("--clip-len", type=int, default=16, help="frames per clip")
    parser.add_argument("--fps", type=float, default=15, help="frame rate clips are sampled at")
