"""TFDS builders for video classification, usable without TensorFlow.

Every dataset stores the compressed video bytes (decoded at load time), the
label, a video id and metadata (fps, frame count, duration, size) in
array_record files, read back with `tfds.data_source`. Files that cannot be
used are skipped, named in the build summary and kept in the dataset's
metadata under "problems".
"""
from __future__ import annotations

import csv
import re
from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds

from flax_video.data import ingest, synthetic
from flax_video.labels import KINETICS400_CLASSES
from flax_video.video import encode_video

VERSION = tfds.core.Version("1.0.0")
SPLIT_NAMES = {"train": "train", "val": "validation", "validate": "validation",
               "validation": "validation", "test": "test"}


def features(class_names) -> tfds.features.FeaturesDict:
    return tfds.features.FeaturesDict({
        # Encoded bytes: TFDS's Video feature would need TensorFlow.
        "video": tfds.features.Tensor(shape=(), dtype=np.object_),
        "label": tfds.features.ClassLabel(names=list(class_names)),
        "video_id": tfds.features.Text(),
        "fps": tfds.features.Scalar(dtype=np.float32),
        "num_frames": tfds.features.Scalar(dtype=np.int32),
        "duration": tfds.features.Scalar(dtype=np.float32),
        "height": tfds.features.Scalar(dtype=np.int32),
        "width": tfds.features.Scalar(dtype=np.int32),
    })


class VideoConfig(tfds.core.BuilderConfig):
    """`short_side`: re-encode every video so its short side has this many
    pixels (None keeps the original files), making training-time decoding cheap."""

    def __init__(self, *, short_side: int | None = None, **kwargs):
        super().__init__(**kwargs)
        self.short_side = short_side


def _short_side_configs():
    return [VideoConfig(name="original", description="The source files, unchanged."),
            VideoConfig(name="short_side_128", short_side=128, description="Re-encoded to a 128 px short side."),
            VideoConfig(name="short_side_256", short_side=256, description="Re-encoded to a 256 px short side.")]


class _SourceVideos(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """A builder over video files listed by `_list_sources`."""

    VERSION = VERSION

    def __init__(self, *, workers: int | None = None, **kwargs):
        self._workers = workers
        self._report = ingest.Report()
        super().__init__(**kwargs)

    def _class_names(self) -> list[str]:
        raise NotImplementedError

    def _list_sources(self, manual_dir: Path) -> dict[str, list[ingest.Source]]:
        raise NotImplementedError

    def _info(self):
        return tfds.core.DatasetInfo(builder=self, features=features(self._class_names()),
                                     metadata=tfds.core.MetadataDict(), supervised_keys=("video", "label"))

    def _split_generators(self, dl_manager):
        manual_dir = Path(dl_manager.manual_dir)
        if not manual_dir.is_dir():
            raise FileNotFoundError(f"{self.name}: manual directory {manual_dir} does not exist")
        sources = self._list_sources(manual_dir)
        if not any(sources.values()):
            raise ValueError(f"{self.name}: no videos found under {manual_dir}")
        return {split: self._generate_examples(split, items) for split, items in sources.items()}

    def _generate_examples(self, split, items):
        yield from ingest.examples(items, split, self._report, self.builder_config.short_side, self._workers)
        self.info.metadata["problems"] = self._report.as_metadata()


def _class_folders(split_dir: Path, report: ingest.Report, split: str):
    """Class folder name -> its video files; empty folders are reported."""
    folders = {}
    for folder in sorted(p for p in split_dir.iterdir() if p.is_dir()):
        files = sorted(str(f) for f in folder.iterdir() if f.suffix.lower() in ingest.VIDEO_SUFFIXES)
        others = [f for f in folder.iterdir() if f.is_file() and f.suffix.lower() not in ingest.VIDEO_SUFFIXES]
        for other in others:
            report.add(split, str(other), "not a video file name")
        if not files:
            report.add(split, str(folder), "empty class folder")
        folders[folder.name] = files
    return folders


def _split_dirs(root: Path) -> dict[str, Path]:
    return {SPLIT_NAMES[p.name]: p for p in sorted(root.iterdir()) if p.is_dir() and p.name in SPLIT_NAMES}


class VideoFolder(_SourceVideos):
    """Any `root/<split>/<class>/*.{mp4,avi,mkv,webm,mov}` tree (UCF101 and
    HMDB51 style), or class folders plus split lists such as UCF101's
    `trainlist01.txt` / `testlist01.txt` (one relative path per line)."""

    MANUAL_DOWNLOAD_INSTRUCTIONS = "Pass the folder as manual_dir: root/<split>/<class>/<video>."

    def __init__(self, *, manual_dir: str, dataset_name: str = "default", short_side: int | None = None,
                 split_lists: dict[str, str] | None = None, **kwargs):
        """Stored under `<data_dir>/video_folder/<dataset_name>[_<short_side>]/`."""
        self._root = Path(manual_dir)
        self._split_lists = split_lists
        name = f"{dataset_name}_short_side_{short_side}" if short_side else dataset_name
        super().__init__(config=VideoConfig(name=name, short_side=short_side), **kwargs)

    def _class_names(self) -> list[str]:
        if not self._root.is_dir():
            raise FileNotFoundError(f"video folder {self._root} does not exist")
        if self._split_lists:
            return sorted(p.name for p in self._root.iterdir() if p.is_dir())
        names = set()
        for split_dir in _split_dirs(self._root).values():
            names.update(p.name for p in split_dir.iterdir() if p.is_dir())
        return sorted(names)

    def _list_sources(self, manual_dir):
        labels = {name: i for i, name in enumerate(self._class_names())}
        sources = {}
        if self._split_lists:
            for split, list_file in self._split_lists.items():
                items = []
                for line in Path(list_file).read_text().split("\n"):
                    if not line.strip():
                        continue
                    relative = line.split()[0]
                    items.append(ingest.Source(relative, labels[Path(relative).parts[0]], str(manual_dir / relative)))
                sources[split] = items
            return sources
        for split, split_dir in _split_dirs(manual_dir).items():
            items = []
            for name, files in _class_folders(split_dir, self._report, split).items():
                items += [ingest.Source(f"{name}/{Path(f).name}", labels[name], f) for f in files]
            sources[split] = items
        return sources


def _kinetics_name(folder_or_label: str) -> str:
    """'air_drumming' and '"air drumming"' both name 'air drumming'."""
    return folder_or_label.strip().strip('"').replace("_", " ")


KINETICS_FILE = re.compile(r"^(?P<id>.{11})_(?P<start>\d{6})_(?P<end>\d{6})$")


class Kinetics400(_SourceVideos):
    """Kinetics-400 from a manual directory in either common layout:

    * class folders: `{train,val}/<class name>/<video>.mp4` (spaces or
      underscores in the class names);
    * flat folders of `{youtube_id}_{start:06d}_{end:06d}.mp4` anywhere
      under the directory, plus the official annotation CSVs (`train.csv`,
      `validate.csv`; columns label,youtube_id,time_start,time_end,split).
      Annotated clips that were never downloaded are reported as missing.

    Labels follow the 400 sorted class names (torchvision's order).
    """

    BUILDER_CONFIGS = _short_side_configs()
    MANUAL_DOWNLOAD_INSTRUCTIONS = "Download Kinetics-400 and pass its directory as manual_dir."

    def _class_names(self):
        return KINETICS400_CLASSES

    def _list_sources(self, manual_dir):
        labels = {name: i for i, name in enumerate(KINETICS400_CLASSES)}
        csvs = sorted(manual_dir.rglob("*.csv"))
        if csvs:
            return self._from_annotations(manual_dir, csvs, labels)
        sources = {}
        for split, split_dir in _split_dirs(manual_dir).items():
            items = []
            for folder, files in _class_folders(split_dir, self._report, split).items():
                name = _kinetics_name(folder)
                if name not in labels:
                    self._report.add(split, str(split_dir / folder), "not a Kinetics-400 class")
                    continue
                items += [ingest.Source(Path(f).stem, labels[name], f) for f in files]
            sources[split] = items
        return sources

    def _from_annotations(self, manual_dir, csvs, labels):
        videos = {p.stem: str(p) for p in manual_dir.rglob("*") if p.suffix.lower() in ingest.VIDEO_SUFFIXES}
        sources = {}
        for csv_file in csvs:
            with open(csv_file, newline="") as file:
                for row in csv.DictReader(file):
                    split = SPLIT_NAMES.get(row.get("split", "").strip())
                    name = _kinetics_name(row.get("label", ""))
                    if split is None or name not in labels:
                        continue  # e.g. the unlabelled test set
                    video_id = f"{row['youtube_id']}_{int(float(row['time_start'])):06d}_{int(float(row['time_end'])):06d}"
                    if video_id not in videos:
                        self._report.add(split, video_id, "annotated but not downloaded")
                        continue
                    sources.setdefault(split, []).append(ingest.Source(video_id, labels[name], videos[video_id]))
        return sources


class MotionShapesConfig(tfds.core.BuilderConfig):
    def __init__(self, *, train_videos: int = 500, validation_videos: int = 100, frames: int = 32,
                 size: int = 32, fps: int = 15, seed: int = 0):
        self.sizes = {"train": train_videos, "validation": validation_videos}
        self.frames, self.size, self.fps, self.seed = frames, size, fps, seed
        default = (train_videos, validation_videos, frames, size, fps, seed) == (500, 100, 32, 32, 15, 0)
        name = "default" if default else f"train{train_videos}_val{validation_videos}_{frames}x{size}px_{fps}fps_seed{seed}"
        super().__init__(name=name, description=f"{size}x{size}, {frames} frames at {fps} fps, "
                                                f"{train_videos} train / {validation_videos} validation videos, seed {seed}")


class MotionShapes(tfds.core.GeneratorBasedBuilder):
    """Generated videos whose classes differ only in motion (see
    `flax_video.data.synthetic`). Deterministic from the config's seed; the
    default (500 + 100 videos of 32 frames at 32x32) builds in seconds."""

    VERSION = tfds.core.Version("3.0.0")
    RELEASE_NOTES = {"3.0.0": "a diagonal drift instead of spinning, which the demo's models barely resolved",
                     "2.1.0": "deterministic encoding: the same videos on every build and machine",
                     "2.0.0": "bright objects on darker clutter, larger and faster; 32x32 frames",
                     "1.0.0": "first release"}
    BUILDER_CONFIGS = [MotionShapesConfig()]

    def __init__(self, *, workers: int | None = None, **kwargs):
        self._workers = workers
        super().__init__(**kwargs)

    def _info(self):
        c = self.builder_config
        return tfds.core.DatasetInfo(builder=self, features=features(synthetic.CLASSES),
                                     metadata=tfds.core.MetadataDict(frames=c.frames, size=c.size, fps=c.fps,
                                                                     seed=c.seed, problems={}))

    def _split_generators(self, dl_manager):
        return {split: self._generate_examples(split, count) for split, count in self.builder_config.sizes.items()}

    def _generate_examples(self, split, count):
        c = self.builder_config
        with ingest.parallel_map(self._workers) as map_:
            args = [(c.seed, split, i, c.frames, c.size, c.fps) for i in range(count)]
            for index, (label, data) in enumerate(map_(_render_encoded, args)):
                video_id = f"{split}_{index:05d}"
                yield video_id, {"video": data, "label": label, "video_id": video_id, "fps": c.fps,
                                 "num_frames": c.frames, "duration": c.frames / c.fps,
                                 "height": c.size, "width": c.size}


def _render_encoded(args):
    seed, split, index, frames, size, fps = args
    rng = np.random.default_rng([seed, index, split == "train"])
    label = index % len(synthetic.CLASSES)
    return label, encode_video(synthetic.render(label, frames, size, size, rng), fps)
