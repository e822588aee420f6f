"""Decoding videos to RGB frames with PyAV, resampled to a target frame rate."""
from __future__ import annotations

import io
import math
import os
from dataclasses import dataclass

import numpy as np


class VideoDecodeError(ValueError):
    """The file is missing, empty, not a video, or broken before any frame."""


@dataclass(frozen=True)
class Video:
    frames: np.ndarray  # (T, H, W, 3) uint8
    fps: float  # of `frames`, after resampling
    source_fps: float
    source_frames: int  # frames decoded from the file


def resample_indices(num_frames: int, source_fps: float, target_fps: float) -> np.ndarray:
    """Indices of the source frames kept at `target_fps`, as torchvision's
    VideoClips picks them: floor(i * source_fps / target_fps)."""
    step = float(source_fps) / target_fps
    count = int(math.floor(num_frames * (float(target_fps) / source_fps)))
    return np.floor(np.arange(count) * step).astype(np.int64)


def read_video(source: str | os.PathLike | bytes, fps: float | None = None) -> Video:
    """All frames of the first video stream, resampled to `fps` (None: as is).

    Raises `VideoDecodeError` for missing, empty, unreadable or frameless
    input; a file truncated after some frames yields the frames before the
    damage.
    """
    import av

    name = "<bytes>" if isinstance(source, bytes) else str(source)
    if isinstance(source, bytes):
        if not source:
            raise VideoDecodeError(f"{name}: empty")
        source = io.BytesIO(source)
    elif not os.path.isfile(source):
        raise VideoDecodeError(f"{name}: no such file")
    elif os.path.getsize(source) == 0:
        raise VideoDecodeError(f"{name}: empty file")
    frames = []
    try:
        with av.open(source) as container:
            if not container.streams.video:
                raise VideoDecodeError(f"{name}: no video stream")
            stream = container.streams.video[0]
            source_fps = float(stream.average_rate or stream.guessed_rate or 0) or 30.0
            try:
                # Kept decoded; converted to RGB (the costly part) only if sampled.
                frames.extend(container.decode(stream))
            except av.error.FFmpegError:
                if not frames:
                    raise
    except av.error.FFmpegError as error:
        raise VideoDecodeError(f"{name}: not a readable video ({error})") from None
    if not frames:
        raise VideoDecodeError(f"{name}: no frames could be decoded")
    if fps is None or fps >= source_fps:
        keep, fps = range(len(frames)), source_fps
    else:
        keep = resample_indices(len(frames), source_fps, fps)
    rgb = np.stack([frames[i].to_ndarray(format="rgb24") for i in keep])
    return Video(rgb, fps, source_fps, len(frames))


def write_video(path: str | os.PathLike, frames: np.ndarray, fps: int = 30, codec: str = "libx264") -> None:
    """Encode (T, H, W, 3) uint8 frames (even H and W for libx264)."""
    import av

    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.height, stream.width = frames.shape[1:3]
        stream.pix_fmt = "yuv420p"
        for image in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
