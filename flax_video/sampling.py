"""Which clips of a video to use, as torchvision's reference recipe samples them.

Candidate clips are every window of `clip_len` consecutive frames (torchvision's
VideoClips with step 1). Training takes up to `num_clips` random ones;
evaluation takes `num_clips` uniformly spaced ones (UniformClipSampler).
A video shorter than a clip is looped: frames 0, 1, .., n-1, 0, 1, .. until
`clip_len` frames (torchvision drops such videos; we keep and count them).
"""
from __future__ import annotations

import numpy as np


def uniform_clip_starts(num_frames: int, clip_len: int, num_clips: int) -> np.ndarray:
    """Start frames of `num_clips` uniformly spaced clips (repeats allowed when
    the video has fewer candidate clips)."""
    candidates = max(num_frames - clip_len + 1, 1)
    return np.floor(np.linspace(0, candidates - 1, num_clips)).astype(np.int64)


def random_clip_starts(num_frames: int, clip_len: int, num_clips: int,
                       rng: np.random.Generator) -> np.ndarray:
    """Start frames of up to `num_clips` distinct random clips."""
    candidates = max(num_frames - clip_len + 1, 1)
    return np.sort(rng.choice(candidates, size=min(num_clips, candidates), replace=False))


def take_clip(frames: np.ndarray, start: int, clip_len: int) -> np.ndarray:
    """`clip_len` frames from `start`, looping a video shorter than a clip."""
    index = (start + np.arange(clip_len)) % len(frames)
    return frames[index]
