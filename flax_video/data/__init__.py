"""Video datasets (TFDS array_record, no TensorFlow) and the grain loader."""
from __future__ import annotations

import os
from pathlib import Path

DATASETS = ("motion_shapes", "kinetics400", "folder")


def builder(dataset: str, data_dir: str | os.PathLike, *, manual_dir: str | None = None,
            short_side: int | None = None, workers: int | None = None, **options):
    """The TFDS builder of `dataset` ("motion_shapes", "kinetics400" or
    "folder") in `data_dir`. `options` go to the builder (e.g. sizes for
    motion_shapes, `dataset_name` / `split_lists` for folders)."""
    from flax_video.data import builders

    common = dict(data_dir=str(data_dir), file_format="array_record", workers=workers)
    if dataset == "motion_shapes":
        config = builders.MotionShapesConfig(**options)
        # TFDS takes the predefined default by name only.
        return builders.MotionShapes(config="default" if config.name == "default" else config, **common)
    if dataset == "kinetics400":
        config = f"short_side_{short_side}" if short_side else "original"
        return builders.Kinetics400(config=config, **common)
    if dataset == "folder":
        if manual_dir is None:
            raise ValueError("the folder dataset needs manual_dir (root/<split>/<class>/<video>)")
        return builders.VideoFolder(manual_dir=manual_dir, short_side=short_side, **options, **common)
    raise ValueError(f"unknown dataset {dataset!r}; choose one of {', '.join(DATASETS)}")


def prepare(dataset: str, data_dir: str | os.PathLike, *, manual_dir: str | None = None, **kwargs):
    """Build `dataset` unless a complete build is already there; return a
    read-only builder of the built files (picklable, so its data sources can
    go to grain's worker processes)."""
    import tensorflow_datasets as tfds

    if dataset == "kinetics400" and manual_dir is not None and not Path(manual_dir).is_dir():
        raise FileNotFoundError(f"Kinetics-400 directory {manual_dir} does not exist")
    result = builder(dataset, data_dir, manual_dir=manual_dir, **kwargs)
    if not result.is_prepared():
        result.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))
    return tfds.builder_from_directory(result.data_dir)
