"""Training configuration: torchvision's video recipe, overridable by flags.

Kinetics-400 defaults follow torchvision's reference (model card of
r2plus1d_18): SGD momentum 0.9, weight decay 1e-4, lr 0.01 per device, 10
warmup epochs from 0.001 x lr, x0.1 at epochs 20, 30, 40, 45 epochs, 16
clips per device of 16 frames at 15 fps, resize 128x171, crop 112.

The embedded motion_shapes dataset has its own demo defaults, sized to train
each depth on 2 CPU cores within 10 minutes (see DEMO).
"""
from __future__ import annotations

import argparse
import dataclasses
import typing
from dataclasses import dataclass, field

from flax_video import blocks, registry

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
    motion_shapes: dict = field(default_factory=dict)

    def __post_init__(self):
        # Flags and JSON give lists.
        self.milestones, self.resize = tuple(self.milestones), tuple(self.resize)
        if self.dtype not in ("float32", "bfloat16"):
            raise ValueError(f"--dtype must be float32 or bfloat16, not {self.dtype}")
        if self.head_lr_scale < 0:
            raise ValueError(f"--head-lr-scale must be at least 0, not {self.head_lr_scale}")
        if self.checkpoint_every < 0:
            raise ValueError(f"--checkpoint-every must be at least 0 (0: at epoch ends only), not {self.checkpoint_every}")
        for name in ("per_device_batch", "log_every", "eval_every_epochs", "keep_checkpoints"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be positive, not {getattr(self, name)}")
        # Also maps the bools of configs saved before the modes existed.
        self.zero_init_residual = blocks.zero_init_mode(self.zero_init_residual)


# The demo: motion_shapes (32x32 frames), clips of 8 frames resized to 20 and
# cropped to 16, 20 epochs, x0.1 at 3/4 of them (`decay_at`; depth 34 and up
# decay at their own point). Measured on 2 CPU cores: train/DEMO.md.
# - 20 epochs: with 16 (x0.1 at 12) r2plus1d ended at 89% on a third VM,
#   90% on the Intel VM and 94% on the AMD VM (rounding differs by CPU);
#   with 20 (x0.1 at 15) at 98% in 5m24s there. 24 took 11-12 minutes on
#   the AMD VM before the steps got 9-20% cheaper.
# - Checkpoints at epoch ends only (an epoch is 31 steps): at depth 101 each
#   save costs 5-9 s of the 2 cores.
# - No loader worker processes: decoding the demo's 20x20 clips in the main
#   process's threads steps as fast, and grain's close of the endless eval
#   loader's worker waited 25 s (its kill timeout) at the end of many runs.
DEMO = dict(epochs=20, decay_at=3 / 4, per_device_batch=16, lr=0.003, warmup_epochs=1, clip_len=8,
            clips_per_video=1, eval_clips_per_video=2, resize=(20, 20), crop=16, checkpoint_every=0,
            eval_every_epochs=2, workers=0)
# Depth 34 and up evaluate every 4 epochs and start residual branches
# silent, so that fewer, faster-learning epochs fit in 10 minutes.
# - BasicBlock (34): at lr 0.003 r2plus1d_34 learned half as fast as depth
#   18; with every block zero-initialized it trains at higher rates (after 8
#   epochs: 54% at lr 0.01, 73% at 0.02, 70% at 0.04). At depth 18 that
#   change cost r3d 11 points.
# - Bottleneck (50, 101, 152): with every block silent the network sees one
#   stem pixel (the strided 1x1 projection shortcuts subsample it to 1x1x1)
#   and did not learn at any lr tried (0.001-0.02); so only blocks with an identity shortcut
#   start silent. The 2048-wide head, unpooled at 1x1x1, memorizes each
#   batch's noise (its logits move 4x more per step than depth 34's 512-wide
#   head's), so it steps at 0.1x the lr: without that, lr 0.01 drove the
#   loss to 5.7.
# Measured: train/DEMO.md.
DEMO_DEEP = dict(eval_every_epochs=4)
# When the lr drops x0.1, as a fraction of the epochs: the Bottleneck depths
# still learn fast at the full rate at mid-run (mc3_50 ended at 88% with the
# drop at epoch 6 of 12, at 97% with it at 9).
DEMO_OF_BLOCK = {blocks.BasicBlock: dict(zero_init_residual="all", lr=0.02, decay_at=1 / 2),
                 blocks.Bottleneck: dict(zero_init_residual="identity", lr=0.01, head_lr_scale=0.1, decay_at=3 / 4)}
# Depths 34, 101 and 152 see 4 frames at 7.5 fps: the same span of the video as
# 8 at 15 fps for half the frames. r2plus1d_101 steps ~30% faster and
# learned faster (75% after 4 epochs, against 69%; 4 frames at 15 fps, half
# the motion: 46%). Depth 34 with 8 frames needed 20 epochs (24 for mc3_34)
# and ~8 minutes on the Intel VM, which steps ~2x faster than the AMD VM;
# with 4, 16 epochs (20 for mc3_34) pass on the AMD VM in 6m21s-7m54s.
SHORT_CLIPS = dict(clip_len=4, fps=7.5)
DEMO_OF_DEPTH = {34: dict(epochs=16, **SHORT_CLIPS), 50: dict(epochs=12), 101: dict(epochs=8, **SHORT_CLIPS),
                 152: dict(epochs=8, **SHORT_CLIPS)}
# Measured overrides for single variants:
# - mc3_34, mc3_101 and r3d_101 step fast enough for more of their depth's
#   slow learning: mc3_34 (4 frames, x0.1 at epoch 10) 95% after 20 epochs
#   (6m21s on the AMD VM; with 8 frames 86% after 20, 92% after 24);
#   mc3_101 89% after 8 on the Intel VM (90% on the AMD VM), 93% after 10,
#   96% after 12 (4m23s there); r3d_101 88% after 8, 93% after 10 (9m34s);
#   r3d_34 91% after 16 on the AMD VM and 89% on the AVX-512 AMD VM (after
#   the 2026-12-03 rounding changes), 97% after 20 (x0.1 at 10; 6m35s there,
#   9m43s on the AMD VM before the steps got cheaper).
# - r2plus1d_101 learns faster at twice the lr with the head at the same
#   rate (0.02 x 0.05): 69% after 4 epochs and 92% after 8, against 56% and
#   89% at 0.01 x 0.1. So does mc3_152 (on the AVX-512 AMD VM): 94% after
#   8 epochs in 5m22s, against 90% at 0.01 x 0.1 and 92% after 10 (6m54s).
FASTER_BODY = dict(lr=0.02, head_lr_scale=0.05)
DEMO_OF_VARIANT = {"mc3_34": dict(epochs=20), "r3d_34": dict(epochs=20), "mc3_101": dict(epochs=12), "r3d_101": dict(epochs=10),
                   "r2plus1d_101": FASTER_BODY, "mc3_152": FASTER_BODY}


def demo_defaults(variant: str, epochs: int | None = None) -> dict:
    """DEMO for `variant`'s depth, with the lr decay at its `decay_at`
    fraction of `epochs` (default: the depth's)."""
    name = full_variant(variant)
    spec = registry.get_spec(name)
    if spec.depth in DEMO_OF_DEPTH:
        base = {**DEMO, **DEMO_DEEP, **DEMO_OF_BLOCK[spec.block], **DEMO_OF_DEPTH[spec.depth],
                **DEMO_OF_VARIANT.get(name, {})}
    else:
        base = DEMO
    base = dict(base)
    decay_at = base.pop("decay_at")
    epochs = epochs or base["epochs"]
    return {**base, "epochs": epochs, "milestones": (epochs * decay_at,)}


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
}


def full_variant(name: str) -> str:
    """'r2plus1d' -> 'r2plus1d_18'; raises ValueError for unknown names."""
    name = f"{name}_18" if name in FAMILIES else name
    if name not in registry.list_models():
        raise ValueError(f"unknown variant {name!r}; choose one of {', '.join(FAMILIES)} or {', '.join(registry.list_models())}")
    return name


def parser() -> argparse.ArgumentParser:
    result = argparse.ArgumentParser(
        prog="python -m train.main", description="Train a video ResNet (torchvision's recipe) with pmap.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    result.add_argument("--workdir", default="runs/demo", help="checkpoints, metrics and plots go here; rerun to resume")
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
            choices = blocks.ZERO_INIT_MODES if f.name == "zero_init_residual" else None
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
    dataset = given.get("dataset", Config.dataset)
    variant = given.get("variant", Config.variant)
    demo = demo_defaults(variant, given.get("epochs")) if dataset == "motion_shapes" else {}
    config = Config(**{**demo, **given})
    config.variant = full_variant(config.variant)
    return config
