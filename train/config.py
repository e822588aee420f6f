"""Training configuration: torchvision's video recipe, overridable by flags.

Kinetics-400 defaults follow torchvision's reference (model card of
r2plus1d_18): SGD momentum 0.9, weight decay 1e-4, lr 0.01 per device, 10
warmup epochs from 0.001 x lr, x0.1 at epochs 20, 30, 40, 45 epochs, 16
clips per device of 16 frames at 15 fps, resize 128x171, crop 112.

The embedded motion_shapes dataset has its own demo settings per variant
(`train/demos.py`), sized to train each on 2 CPU cores within 10 minutes.
"""
from __future__ import annotations

import argparse
import dataclasses
import typing
from dataclasses import dataclass, field

from flax_video import blocks, registry
from train import demos

FAMILIES = ("r3d", "mc3", "r2plus1d")


@dataclass
class Config:
    variant: str = "r2plus1d_18"
    dataset: str = "motion_shapes"
    data_dir: str | None = None
    tfds_dir: str | None = None
    short_side: int | None = None
    epochs: int = 45
    per_device_batch: int = 16
    lr: float = 0.01
    head_lr_scale: float = 1.0
    momentum: float = 0.9
    weight_decay: float = 1e-4
    decay_bn_and_bias: bool = True
    warmup_epochs: float = 10
    warmup_factor: float = 0.001
    milestones: tuple[float, ...] = (20, 30, 40)
    gamma: float = 0.1
    clip_len: int = 16
    fps: float = 15
    clips_per_video: int = 5
    resize: tuple[int, int] = (128, 171)
    crop: int = 112
    eval_clips_per_video: int = 5
    three_crop: bool = False
    sync_bn: bool = False
    zero_init_residual: str = "none"
    dtype: str = "float32"
    seed: int = 0
    workers: int = 2
    init_from: str | None = None
    num_classes: int | None = None
    checkpoint_every: int = 200
    keep_checkpoints: int = 3
    log_every: int = 10
    eval_every_epochs: int = 1
    max_steps: int | None = None
    parallel: str = "pmap"
    motion_shapes: dict = field(default_factory=dict)

    def __post_init__(self):
        # Flags and JSON give lists.
        self.milestones, self.resize = tuple(self.milestones), tuple(self.resize)
        if self.dtype not in ("float32", "bfloat16"):
            raise ValueError(f"--dtype must be float32 or bfloat16, not {self.dtype}")
        if self.parallel not in ("pmap", "jit"):
            raise ValueError(f"--parallel must be pmap or jit, not {self.parallel}")
        if self.head_lr_scale < 0:
            raise ValueError(f"--head-lr-scale must be at least 0, not {self.head_lr_scale}")
        if self.checkpoint_every < 0:
            raise ValueError(f"--checkpoint-every must be at least 0 (0: at epoch ends only), not {self.checkpoint_every}")
        for name in ("per_device_batch", "log_every", "eval_every_epochs", "keep_checkpoints"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be positive, not {getattr(self, name)}")
        # Also maps the bools of configs saved before the modes existed.
        self.zero_init_residual = blocks.zero_init_mode(self.zero_init_residual)


HELP = {
    "variant": "model: r3d, mc3 or r2plus1d (depth 18), or a full name such as r2plus1d_34",
    "dataset": "motion_shapes (generated, the default demo), kinetics400 or folder",
    "data_dir": "source videos: the Kinetics-400 download, or the folder root/<split>/<class>/<video>",
    "tfds_dir": "where built datasets are stored (default: WORKDIR/../tfds for motion_shapes, DATA_DIR/tfds otherwise)",
    "short_side": "re-encode source videos to this short side when building (e.g. 128)",
    "epochs": "training epochs",
    "per_device_batch": "clips per device per step",
    "lr": "learning rate per device (scaled by the number of devices)",
    "head_lr_scale": "the classifier's learning rate is this multiple of the lr (torchvision: 1)",
    "momentum": "SGD momentum",
    "weight_decay": "L2 weight decay, added to the gradient before momentum as torch.optim.SGD does",
    "decay_bn_and_bias": "apply weight decay to BatchNorm and bias parameters too (torchvision does)",
    "warmup_epochs": "linear warmup length in epochs",
    "warmup_factor": "the warmup starts at this fraction of the learning rate",
    "milestones": "epochs at which the learning rate is multiplied by gamma",
    "gamma": "learning-rate decay factor at each milestone",
    "clip_len": "frames per clip",
    "fps": "frame rate clips are resampled to",
    "clips_per_video": "training clips per video per epoch",
    "resize": "frames are resized to HEIGHT WIDTH",
    "crop": "square crop size (random for training, centered for evaluation)",
    "eval_clips_per_video": "uniformly spaced clips per video for evaluation",
    "three_crop": "evaluate on left, center and right crops",
    "sync_bn": "BatchNorm statistics across all devices (default: per device, as torchvision without SyncBN)",
    "zero_init_residual": "start residual blocks as their shortcut (last BatchNorm scale 0): none (torchvision), "
                          "all blocks, or identity: only those whose shortcut is the identity",
    "dtype": "compute dtype, float32 or bfloat16 (parameters stay float32)",
    "seed": "seed of the initialization and the data order",
    "workers": "data-loader worker processes (0: in the main process)",
    "init_from": "start from these weights: published weights by name (r2plus1d_18), a converted directory, "
                 "or a torchvision .pth/.safetensors file",
    "num_classes": "classifier size (default: the dataset's); a different size re-initializes the head",
    "checkpoint_every": "save a checkpoint every this many steps and at each epoch end (0: at epoch ends only)",
    "keep_checkpoints": "how many recent checkpoints to keep",
    "log_every": "write training metrics every this many steps",
    "eval_every_epochs": "evaluate every this many epochs (and at the end)",
    "max_steps": "stop after this many steps (for quick checks)",
    "parallel": "how steps run over devices: pmap (per-device state), or jit over a 1-D device mesh "
                "(global batch arrays, replicated state)",
}


def full_variant(name: str) -> str:
    """'r2plus1d' -> 'r2plus1d_18'; raises ValueError for unknown names."""
    name = f"{name}_18" if name in FAMILIES else name
    if name not in registry.list_models():
        raise ValueError(f"unknown variant {name!r}; choose one of {', '.join(FAMILIES)} or {', '.join(registry.list_models())}")
    return name


def parser() -> argparse.ArgumentParser:
    result = argparse.ArgumentParser(
        prog="python -m train.main", description="Train a video ResNet (torchvision's recipe) with pmap (or jit over a device mesh).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    result.add_argument("--workdir", default="runs/demo", help="checkpoints, metrics and plots go here; rerun to resume")
    result.add_argument("--print-config", action="store_true",
                        help="print the effective config of this command as JSON and exit")
    hints = typing.get_type_hints(Config)
    for f in dataclasses.fields(Config):
        if f.name == "motion_shapes":
            result.add_argument("--motion-shapes", nargs="+", default=None, metavar="KEY=VALUE",
                                help="motion_shapes size: train_videos, validation_videos, frames, size, fps, seed")
            continue
        flag = "--" + f.name.replace("_", "-")
        hint = hints[f.name]
        if hint is bool:
            result.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=HELP[f.name])
        elif typing.get_origin(hint) is tuple:
            result.add_argument(flag, type=typing.get_args(hint)[0], nargs="+", default=None, help=HELP[f.name])
        else:
            # The annotation, not the default's type: `fps: float = 15` takes 7.5.
            kind = next(t for t in typing.get_args(hint) or (hint,) if t is not type(None))
            choices = {"zero_init_residual": blocks.ZERO_INIT_MODES, "parallel": ("pmap", "jit")}.get(f.name)
            result.add_argument(flag, type=kind, default=None, choices=choices, help=HELP[f.name])
    result.add_argument("--coordinator-address", help="multi-host: host:port of process 0 (or JAX_COORDINATOR_ADDRESS)")
    result.add_argument("--num-processes", type=int, help="multi-host: number of processes (or JAX_NUM_PROCESSES)")
    result.add_argument("--process-id", type=int, help="multi-host: this process (or JAX_PROCESS_ID)")
    return result


def from_args(args: argparse.Namespace) -> Config:
    """Flags over the dataset's defaults over the recipe."""
    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(Config) if getattr(args, f.name) is not None}
    if "motion_shapes" in given:
        given["motion_shapes"] = {k: int(v) for k, v in (item.split("=", 1) for item in given["motion_shapes"])}
    given["variant"] = full_variant(given.get("variant", Config.variant))
    dataset = given.get("dataset", Config.dataset)
    demo = demos.settings(given["variant"], given.get("epochs")) if dataset == "motion_shapes" else {}
    return Config(**{**demo, **given})
