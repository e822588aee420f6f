"""Reading source videos into dataset examples at build time, in parallel,
with every unusable file counted and named instead of crashing the build."""
from __future__ import annotations

import concurrent.futures
import contextlib
import functools
import logging
import multiprocessing
import os
from dataclasses import dataclass, field

import numpy as np

from flax_video.video import VideoDecodeError, VideoInfo, encode_video, probe_video, read_video

log = logging.getLogger(__name__)

VIDEO_SUFFIXES = (".mp4", ".avi", ".mkv", ".webm", ".mov")


@dataclass(frozen=True)
class Source:
    """One video to store: where it is and what it is."""
    video_id: str
    label: int
    path: str


@dataclass
class Report:
    """What a build skipped, per split, so nothing unusable goes unnoticed."""
    problems: dict[str, list[tuple[str, str]]] = field(default_factory=dict)

    def add(self, split: str, file: str, reason: str) -> None:
        self.problems.setdefault(split, []).append((file, reason))

    def summary(self, split: str, stored: int) -> str:
        problems = self.problems.get(split, [])
        lines = [f"{split}: {stored} videos stored, {len(problems)} problems"]
        lines += [f"  {file}: {reason}" for file, reason in problems]
        return "\n".join(lines)

    def as_metadata(self) -> dict:
        return {split: [{"file": f, "reason": r} for f, r in items] for split, items in self.problems.items()}


def _even(x: float) -> int:
    return max(2, int(round(x / 2)) * 2)


def reencoded(path: str, short_side: int) -> tuple[bytes, VideoInfo]:
    """The video decoded, resized so its short side is `short_side` (even
    sizes, aspect kept), and encoded as H.264 at its own frame rate."""
    import av

    video = read_video(path)
    height, width = video.frames.shape[1:3]
    scale = short_side / min(height, width)
    size = (_even(height * scale), _even(width * scale))
    frames = np.stack([
        av.VideoFrame.from_ndarray(f, format="rgb24").reformat(width=size[1], height=size[0], interpolation="BILINEAR").to_ndarray(format="rgb24")
        for f in video.frames])
    data = encode_video(frames, video.source_fps)
    return data, probe_video(data)


def load_source(path: str, short_side: int | None) -> tuple[bytes, VideoInfo]:
    """(encoded bytes, info) to store; raises VideoDecodeError for an
    unusable file."""
    if short_side:
        return reencoded(path, short_side)
    info = probe_video(path)
    with open(path, "rb") as file:
        return file.read(), info


def _load_or_reason(path: str, short_side: int | None):
    try:
        return load_source(path, short_side)
    except VideoDecodeError as error:
        return str(error).removeprefix(f"{path}: ")
    except Exception as error:  # a decoder bug must not end a day-long build
        return f"{type(error).__name__}: {error}"


@contextlib.contextmanager
def parallel_map(workers: int | None):
    """An ordered `map` over worker processes (inline for one worker)."""
    workers = workers or os.cpu_count() or 1
    if workers == 1:
        yield map
        return
    context = multiprocessing.get_context("spawn")  # the parent may have started JAX threads
    with concurrent.futures.ProcessPoolExecutor(workers, mp_context=context) as pool:
        yield functools.partial(pool.map, chunksize=4)


def examples(sources: list[Source], split: str, report: Report, short_side: int | None,
             workers: int | None = None):
    """Yield `(key, example)` for each usable source, reading files in worker
    processes; unusable ones go to `report`."""
    stored = 0
    with parallel_map(workers) as map_:
        results = map_(_load_or_reason, [s.path for s in sources], [short_side] * len(sources))
        for source, result in zip(sources, results):
            if isinstance(result, str):
                report.add(split, source.path, result)
                continue
            data, info = result
            stored += 1
            yield source.video_id, {
                "video": data, "label": source.label, "video_id": source.video_id,
                "fps": info.fps, "num_frames": info.num_frames, "duration": info.duration,
                "height": info.height, "width": info.width,
            }
    message = report.summary(split, stored)
    (log.warning if report.problems.get(split) else log.info)(message)
    print(message, flush=True)
