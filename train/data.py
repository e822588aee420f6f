"""The config's dataset, built if absent, as train/validation data sources."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import jax

import flax_video.data
from flax_video.data import loader
from train.config import Config


@dataclass
class Sources:
    train: object
    validation: object
    num_classes: int


def sharding() -> loader.Sharding:
    """This process's place among all processes, and its local devices."""
    return loader.Sharding(jax.process_index(), jax.process_count(), jax.local_device_count())


def train_spec(config: Config) -> loader.ClipSpec:
    return loader.ClipSpec(config.clip_len, config.fps, config.clips_per_video, tuple(config.resize), config.crop)


def eval_spec(config: Config) -> loader.ClipSpec:
    return loader.ClipSpec(config.clip_len, config.fps, config.eval_clips_per_video, tuple(config.resize),
                           config.crop, config.three_crop)


def tfds_dir(config: Config, workdir: Path) -> Path:
    if config.tfds_dir:
        return Path(config.tfds_dir)
    if config.dataset == "motion_shapes":
        return Path(workdir).absolute().parent / "tfds"
    return Path(config.data_dir) / "tfds"


def check(config: Config) -> None:
    """Fail before any work on a dataset that cannot be used."""
    if config.dataset not in flax_video.data.DATASETS:
        raise ValueError(f"unknown dataset {config.dataset!r}; choose one of {', '.join(flax_video.data.DATASETS)}")
    if config.dataset != "motion_shapes":
        if not config.data_dir:
            raise ValueError(f"--dataset {config.dataset} needs --data-dir")
        if not Path(config.data_dir).is_dir():
            raise FileNotFoundError(f"--data-dir {config.data_dir} does not exist")


def sources(config: Config, workdir: Path) -> Sources:
    check(config)
    options = {"short_side": config.short_side} if config.dataset != "motion_shapes" else dict(config.motion_shapes)
    if config.dataset == "folder":
        options["dataset_name"] = Path(config.data_dir).name
    def prepare():
        return flax_video.data.prepare(config.dataset, tfds_dir(config, workdir), manual_dir=config.data_dir, **options)

    if jax.process_count() == 1:
        builder = prepare()
    else:
        # Process 0 builds while the others wait, so that processes sharing a
        # filesystem do not race to write the same dataset; the others then
        # open it (or, on a disk of their own, build their own copy).
        from jax.experimental import multihost_utils

        builder = prepare() if jax.process_index() == 0 else None
        multihost_utils.sync_global_devices("dataset prepared")
        builder = builder or prepare()
    splits = builder.info.splits
    validation = "validation" if "validation" in splits else "test"
    return Sources(builder.as_data_source("train"), builder.as_data_source(validation),
                   builder.info.features["label"].num_classes)
