"""Decoding videos to RGB frames with PyAV, resampled to a target frame rate."""
from __future__ import annotations

import bisect
import fractions
import io
import math
import os
from dataclasses import dataclass

import numpy as np

from flax_video.sampling import take_clip


class VideoDecodeError(ValueError):
    """The file is missing, empty, not a video, or broken before any frame."""


@dataclass(frozen=True)
class VideoInfo:
    fps: float
    num_frames: int
    height: int
    width: int

    @property
    def duration(self) -> float:
        return self.num_frames / self.fps


@dataclass(frozen=True)
class Video:
    frames: np.ndarray  # (T, H, W, 3) uint8
    fps: float  # of `frames`, after resampling
    source_fps: float
    source_frames: int  # frames decoded from the file


def resample_indices(num_frames: int, source_fps: float, target_fps: float) -> np.ndarray:
    """Indices of the source frames kept at `target_fps`, as torchvision's
    VideoClips picks them: floor(i * source_fps / target_fps); at least the
    first (torchvision keeps none of a video shorter than one output frame)."""
    step = float(source_fps) / target_fps
    count = max(1, int(math.floor(num_frames * (float(target_fps) / source_fps))))
    return np.floor(np.arange(count) * step).astype(np.int64)


def resample_by_time(ticks: list[int], time_base: fractions.Fraction, fps: float) -> np.ndarray:
    """Indices of the frames shown at times 0, 1/fps, 2/fps, ... of a video
    whose frames start `ticks` x `time_base` seconds after the first
    (increasing): at each, the last frame whose time has come, timestamps
    being rounded to the tick (half a tick of slack). The video lasts its
    frames' mean spacing past the last one. In integer arithmetic."""
    count = len(ticks)
    if count == 1:
        return np.zeros(1, np.int64)
    rate = fractions.Fraction(fps) * time_base  # output frames per tick
    # Frame i is shown from output k on where k >= (ticks[i] - 1/2) * rate.
    scaled = [(2 * tick - 1) * rate.numerator for tick in ticks]
    outputs = max(1, ticks[-1] * count * rate.numerator // ((count - 1) * rate.denominator))
    return np.array([max(bisect.bisect_right(scaled, 2 * k * rate.denominator) - 1, 0) for k in range(outputs)],
                    np.int64)


def constant_rate(ticks: list[int]) -> bool:
    """Whether the timestamps are those of a constant frame rate, each
    within one tick of its place (rounding to the time base)."""
    step = fractions.Fraction(ticks[-1], max(len(ticks) - 1, 1))
    return all(abs(tick - i * step) <= 1 for i, tick in enumerate(ticks))


def kept_frames(num_frames: int, source_fps: float, fps: float | None) -> np.ndarray:
    """Source frames kept at `fps`: all of them when `fps` is None or not
    below the source rate (frames are never repeated), else `resample_indices`."""
    if fps is None or fps >= source_fps:
        return np.arange(num_frames)
    return resample_indices(num_frames, source_fps, fps)


def _open(source: str | os.PathLike | bytes):
    """An open PyAV container and the name to report, or VideoDecodeError."""
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
    try:
        container = av.open(source)
    except av.error.FFmpegError as error:
        raise VideoDecodeError(f"{name}: not a readable video ({error})") from None
    if not container.streams.video:
        container.close()
        raise VideoDecodeError(f"{name}: no video stream")
    return container, name


def _fps(stream) -> float:
    return float(stream.average_rate or stream.guessed_rate or 0) or 30.0


def probe_video(source: str | os.PathLike | bytes) -> VideoInfo:
    """Frame rate, frame count and size, by demuxing (not decoding) the
    stream and decoding only its first frame. Raises VideoDecodeError when no
    frame decodes or the stream breaks off (a truncated file)."""
    import av

    container, name = _open(source)
    with container:
        stream = container.streams.video[0]
        count, first = 0, None
        try:
            for packet in container.demux(stream):
                if packet.size == 0:  # the flush packet at the end: it drains a decoder that holds frames back
                    if first is None:
                        first = next(iter(packet.decode()), None)
                    continue
                count += 1
                if first is None:
                    first = next(iter(packet.decode()), None)
        except av.error.FFmpegError as error:
            raise VideoDecodeError(f"{name}: broken after {count} packets ({error})") from None
        if first is None or count == 0:
            raise VideoDecodeError(f"{name}: no frames could be decoded")
        return VideoInfo(_fps(stream), count, first.height, first.width)


def _rgb(frames) -> np.ndarray:
    """uint8 (T, H, W, 3) of decoded frames. One reformatter for them all:
    the same pixels as `frame.to_ndarray(format="rgb24")`, which sets up a
    new one per frame (0.28 ms against 0.16 per 32x32 frame)."""
    from av.video.reformatter import VideoReformatter

    reformatter = VideoReformatter()
    return np.stack([reformatter.reformat(frame, format="rgb24").to_ndarray() for frame in frames])


def read_clip(source: str | os.PathLike | bytes, info: VideoInfo, start: int, clip_len: int,
              fps: float | None = None) -> np.ndarray:
    """Frames `start .. start + clip_len - 1` of the video resampled to `fps`
    (looped when the video is shorter), decoding only from the keyframe
    before the clip: uint8 (clip_len, H, W, 3).

    Equal to `take_clip(read_video(source, fps).frames, start, clip_len)`
    for a constant-frame-rate video whose `info` came from `probe_video`;
    falls back to exactly that when the stream does not match `info` (frames
    missing, or off the nominal rate's grid: a variable frame rate).
    """
    import av

    kept = kept_frames(info.num_frames, info.fps, fps)
    needed = kept[(start + np.arange(clip_len)) % len(kept)]
    first, last = int(needed.min()), int(needed.max())
    frames = {}
    container, name = _open(source)
    with container:
        stream = container.streams.video[0]
        origin = stream.start_time or 0
        try:
            if first > 0:
                container.seek(origin + int(first / info.fps / stream.time_base), stream=stream, backward=True)
            for frame in container.decode(stream):
                position = float((frame.pts - origin) * stream.time_base) * info.fps
                index = round(position)
                if abs(position - index) > 0.01:  # off the nominal grid: a variable frame rate
                    frames = {}
                    break
                if index in frames or index < first:
                    continue
                if index > last:
                    break
                frames[index] = frame
        except av.error.FFmpegError:
            pass  # judged below by what was decoded
    if not all(int(i) in frames for i in needed):
        video = read_video(source, fps)
        return take_clip(video.frames, start, clip_len)
    return _rgb([frames[int(i)] for i in needed])


def _ticks(frames) -> list[int] | None:
    """Each frame's presentation time from the first, in time-base ticks;
    None when a frame has none or they do not increase."""
    if any(frame.pts is None for frame in frames):
        return None
    ticks = [int(frame.pts - frames[0].pts) for frame in frames]
    return ticks if all(a < b for a, b in zip(ticks, ticks[1:])) else None


def read_video(source: str | os.PathLike | bytes, fps: float | None = None) -> Video:
    """All frames of the first video stream, resampled to `fps` (None: as is)
    as torchvision does for a constant frame rate (`resample_indices`), and
    for a variable one by the frames' timestamps (`resample_by_time`): the
    frames shown at each output time.

    Raises `VideoDecodeError` for missing, empty, unreadable or frameless
    input; a file truncated after some frames yields the frames before the
    damage.
    """
    import av

    container, name = _open(source)
    frames = []
    with container:
        stream = container.streams.video[0]
        source_fps, time_base = _fps(stream), stream.time_base  # read while the container is open
        try:
            # Kept decoded; converted to RGB (the costly part) only if sampled.
            frames.extend(container.decode(stream))
        except av.error.FFmpegError as error:
            if not frames:
                raise VideoDecodeError(f"{name}: not a readable video ({error})") from None
    if not frames:
        raise VideoDecodeError(f"{name}: no frames could be decoded")
    if fps is None or fps >= source_fps:
        keep, fps = np.arange(len(frames)), source_fps
    else:
        # A constant rate keeps torchvision's choice of frames (by index); a
        # variable one takes the frames shown at each output time.
        ticks = _ticks(frames)
        if ticks and time_base and not constant_rate(ticks):
            keep = resample_by_time(ticks, time_base, fps)
        else:
            keep = resample_indices(len(frames), source_fps, fps)
    rgb = _rgb([frames[i] for i in keep])
    return Video(rgb, fps, source_fps, len(frames))


def encode_video(frames: np.ndarray, fps: float, keyframe_interval: int = 15) -> bytes:
    """(T, H, W, 3) uint8 frames (even H and W) as H.264 in MP4. A short
    keyframe interval keeps seeking to a clip cheap.

    The same frames always give the same bytes, on any machine: x264 runs on
    one thread (its output depends on the thread count) and without the
    macroblock tree, which re-encoded ~7% of 32x32 motion_shapes videos
    differently from run to run (decoded pixels off by up to 67)."""
    import av

    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=fractions.Fraction(fps).limit_denominator(1001))
        stream.height, stream.width = frames.shape[1:3]
        stream.pix_fmt = "yuv420p"
        stream.options = {"g": str(keyframe_interval), "preset": "veryfast", "crf": "20", "threads": "1",
                          "x264-params": "mbtree=0"}
        for image in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buffer.getvalue()


def write_video(path: str | os.PathLike, frames: np.ndarray, fps: float = 30) -> None:
    """Encode (T, H, W, 3) uint8 frames (even H and W) to an H.264 MP4 file."""
    with open(path, "wb") as file:
        file.write(encode_video(frames, fps))
