"""The grain loader: clips decoded and transformed in worker processes,
batched for `jax.pmap`, deterministic and resumable.

Every element is a pure function of its position, so the batches do not
depend on the number of workers, and the global batch at a step does not
depend on the number of processes (each process takes its own slice of it).

Training (torchvision's RandomClipSampler): each epoch, each video gives
`clips_per_video` clips at distinct random starts, in a fresh random order
over the whole dataset; the last partial global batch is dropped. A video
with fewer candidate clips than that repeats its clips (torchvision would
give fewer), and a video shorter than one clip is looped (torchvision drops
it). Evaluation (UniformClipSampler): `clips_per_video` uniformly spaced
clips per video, in order, with the video's index, so clip scores can be
summed per video; each process takes whole videos, and batches are padded
(mask 0) so that every process runs the same number of steps.

A clip that fails to decode becomes zeros with mask 0 and bad 1: the step
ignores it and the training loop counts it.
"""
from __future__ import annotations

import functools
import logging
import math
from dataclasses import dataclass

import numpy as np

from flax_video import sampling, transforms
from flax_video.video import VideoDecodeError, VideoInfo, kept_frames, read_clip

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ClipSpec:
    """How clips are cut and prepared (torchvision's recipe by default)."""
    clip_len: int = 16
    fps: float = 15.0
    clips_per_video: int = 5
    resize: tuple[int, int] = transforms.RESIZE
    crop: int = transforms.CROP
    three_crop: bool = False  # evaluation only: left, center and right crops


def frames_at_fps(info: VideoInfo, fps: float) -> int:
    return len(kept_frames(info.num_frames, info.fps, fps))


def _info(record) -> VideoInfo:
    return VideoInfo(float(record["fps"]), int(record["num_frames"]), int(record["height"]), int(record["width"]))


class _Clips:
    """Position -> element, shared by training and evaluation (picklable, so
    it runs in grain's worker processes)."""

    def __init__(self, source, spec: ClipSpec, seed: int):
        self.source, self.spec, self.seed = source, spec, seed

    def _element(self, video: int, start_of, transform, mask: float = 1.0):
        spec = self.spec
        record = self.source[video]
        info = _info(record)
        shape = (3,) * spec.three_crop + (spec.clip_len, spec.crop, spec.crop, 3)
        element = {"label": np.int32(record["label"]), "video": np.int32(video), "mask": np.float32(mask),
                   "bad": np.int32(0)}
        try:
            start = start_of(frames_at_fps(info, spec.fps))
            clip = read_clip(record["video"], info, start, spec.clip_len, spec.fps)
            element["clip"] = transform(clip)
        except (VideoDecodeError, ValueError) as error:
            log.warning("video %d (%s): %s", video, record.get("video_id", b"").decode(), error)
            element.update(clip=np.zeros(shape, np.float32), mask=np.float32(0), bad=np.int32(1))
        return element


class TrainClips(_Clips):
    """Global training position -> element, for all epochs."""

    def __init__(self, source, spec, seed):
        super().__init__(source, spec, seed)
        self.per_epoch = len(source) * spec.clips_per_video

    @functools.lru_cache(maxsize=2)
    def _order(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, 0, epoch]).permutation(self.per_epoch)

    def __call__(self, position: int):
        epoch, offset = divmod(position, self.per_epoch)
        item = int(self._order(epoch)[offset])
        video, k = divmod(item, self.spec.clips_per_video)
        rng = np.random.default_rng([self.seed, 1, epoch, item])

        def start_of(num_frames):
            candidates = max(num_frames - self.spec.clip_len + 1, 1)
            starts = np.random.default_rng([self.seed, 2, epoch, video]).permutation(candidates)
            return int(starts[k % candidates])

        spec = self.spec
        return self._element(video, start_of, lambda c: transforms.train_transform(c, rng, spec.resize, spec.crop))


class EvalClips(_Clips):
    """(video, clip number) -> element; video -1 is padding."""

    def __call__(self, item):
        video, k = item
        if video < 0:
            element = self._element(0, lambda n: 0, self._transform, mask=0.0)
            return {**element, "video": np.int32(-1), "bad": np.int32(0)}
        return self._element(video, lambda n: int(sampling.uniform_clip_starts(n, self.spec.clip_len, self.spec.clips_per_video)[k]),
                             self._transform)

    def _transform(self, clip):
        spec = self.spec
        if spec.three_crop:
            return transforms.three_crop_eval_transform(clip, spec.resize, spec.crop)
        return transforms.eval_transform(clip, spec.resize, spec.crop)


def _to_devices(batch, local_devices: int):
    return {k: v.reshape(local_devices, -1, *v.shape[1:]) for k, v in batch.items()}


def _parse_absl_flags():
    # grain's worker processes read absl flags; a program not started by
    # absl.app.run has not parsed them.
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


@dataclass(frozen=True)
class Sharding:
    process_index: int = 0
    process_count: int = 1
    local_devices: int = 1


@dataclass(frozen=True)
class _TrainPosition:
    """This process's i-th element -> position in the global order: the
    global batch of step s is positions [s * global_batch, (s + 1) * global_batch)
    of its epoch, and each process takes its own contiguous slice."""
    local_batch: int
    global_batch: int
    steps_per_epoch: int
    clips_per_epoch: int
    process_index: int

    def __call__(self, i: int) -> int:
        step, b = divmod(i, self.local_batch)
        epoch, s = divmod(step, self.steps_per_epoch)
        return epoch * self.clips_per_epoch + s * self.global_batch + self.process_index * self.local_batch + b


def steps_per_epoch(num_videos: int, spec: ClipSpec, global_batch: int) -> int:
    return num_videos * spec.clips_per_video // global_batch


def train_loader(source, spec: ClipSpec, *, per_device_batch: int, epochs: int, seed: int,
                 sharding: Sharding = Sharding(), workers: int = 0):
    """Grain IterDataset of training batches `{clip: (local_devices,
    per_device_batch, T, H, W, 3), label, video, mask, bad}` for `epochs`."""
    import grain

    local_batch = per_device_batch * sharding.local_devices
    global_batch = local_batch * sharding.process_count
    per_epoch = steps_per_epoch(len(source), spec, global_batch)
    if per_epoch == 0:
        raise ValueError(f"{len(source)} videos x {spec.clips_per_video} clips cannot fill one global batch of {global_batch}")
    clips = TrainClips(source, spec, seed)
    position = _TrainPosition(local_batch, global_batch, per_epoch, clips.per_epoch, sharding.process_index)
    dataset = (grain.MapDataset.range(epochs * per_epoch * local_batch)
               .map(position).map(clips).batch(local_batch, drop_remainder=True)
               .map(functools.partial(_to_devices, local_devices=sharding.local_devices)))
    return _iterable(dataset, workers)


def eval_items(num_videos: int, spec: ClipSpec, local_batch: int, sharding: Sharding) -> list[tuple[int, int]]:
    """This process's (video, clip) items: whole videos, padded to the same
    number of batches on every process."""
    per_process = math.ceil(num_videos / sharding.process_count) * spec.clips_per_video
    count = math.ceil(per_process / local_batch) * local_batch
    videos = range(sharding.process_index, num_videos, sharding.process_count)
    items = [(v, k) for v in videos for k in range(spec.clips_per_video)]
    return items + [(-1, 0)] * (count - len(items))


def eval_loader(source, spec: ClipSpec, *, per_device_batch: int, sharding: Sharding = Sharding(), workers: int = 0,
                passes: int | None = 1):
    """Grain IterDataset of evaluation batches (see `eval_items`), `passes`
    times over them (None: endlessly; each pass is the same batches)."""
    import grain

    local_batch = per_device_batch * sharding.local_devices
    items = eval_items(len(source), spec, local_batch, sharding)
    dataset = (grain.MapDataset.source(items).repeat(passes).map(EvalClips(source, spec, seed=0))
               .batch(local_batch, drop_remainder=True)
               .map(functools.partial(_to_devices, local_devices=sharding.local_devices)))
    return _iterable(dataset, workers)


def _iterable(dataset, workers: int):
    import grain

    # Two batches at a time, at most four ahead. grain's default (16 threads,
    # 500 elements ahead; an element here is a batch) had the demo's workers
    # decode its whole run at start-up, which made the train step's
    # compilation 2.5x slower and a partly read iterator take 25 s per worker
    # to close; with Kinetics batches it would hold ~19 GB per worker. Two
    # threads still let one worker decode on two cores (PyAV releases the GIL).
    dataset = dataset.to_iter_dataset(grain.ReadOptions(num_threads=2, prefetch_buffer_size=4))
    if workers > 0:
        _parse_absl_flags()
        dataset = dataset.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers, per_worker_buffer_size=2))
    return dataset
