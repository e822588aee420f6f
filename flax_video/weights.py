"""Published weights by name, as torchvision's `Weights` enums describe them.

    model, variables = flax_video.load_pretrained("r2plus1d_18")
    model = flax_video.create_model("r2plus1d_18", pretrained=True)   # bound to its variables

A weights name is `MODEL.TAG` (`r2plus1d_18.kinetics400`); a model name alone
means its default tag. The first load fetches the publisher's `.pth` file
(`flax_video.hub`), converts it and caches the converted variables in
`$FLAX_VIDEO_HOME/converted/`; later loads read those.
"""
from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from flax_video import hub
from flax_video.labels import KINETICS400_CLASSES
from flax_video.pretrained import load_converted, save_variables
from flax_video.registry import create_model
from flax_video.resnet import HEAD_BIAS_INIT, HEAD_KERNEL_INIT, VideoResNet
from flax_video.transforms import CROP, KINETICS_MEAN, KINETICS_STD, RESIZE


@dataclass(frozen=True)
class EvalTransform:
    """How the weights' publisher prepared evaluation clips: `clip_len` frames
    at `fps` (None: the video's own rate, consecutive frames), each resized
    to `resize` (height, width), center-cropped to `crop`, normalized."""
    clip_len: int = 16
    fps: float | None = 15
    resize: tuple[int, int] = RESIZE
    crop: int = CROP
    mean: tuple[float, ...] = KINETICS_MEAN
    std: tuple[float, ...] = KINETICS_STD


@dataclass(frozen=True)
class Weights:
    name: str  # MODEL.TAG
    url: str  # its file name ends in the first hex digits of the file's sha256
    sha256: str
    num_classes: int
    num_params: int
    gflops: float  # multiply-adds of one clip of `transform.clip_len` x 112 x 112, as torchvision counts
    transform: EvalTransform
    categories: tuple[str, ...] | None = field(repr=False)  # None: the publisher names no classes
    metrics: dict = field(default_factory=dict)  # as its publisher reports them; {} where none does
    dataset: str = "Kinetics-400"
    docs: str = ""

    @property
    def model(self) -> str:
        return self.name.split(".", 1)[0]

    @property
    def file_name(self) -> str:
        return self.url.rsplit("/", 1)[-1]


_TORCHVISION_DOCS = ("The weights reproduce closely the accuracy of the paper. The accuracies are estimated "
                     "on video-level with parameters frame_rate=15, clips_per_video=5, and clip_len=16.")
_IG65M = "https://github.com/moabitcoin/ig65m-pytorch/releases/download/v1.0.0/"
_IG65M_DOCS = ("R(2+1)D-34 of Facebook's VMZ (Ghadiyaram et al. 2019), converted to PyTorch by "
               "moabitcoin/ig65m-pytorch, which reports no accuracy. It read consecutive frames at the "
               "video's own rate, resized (short side 128) and center-cropped to 112.")


def _torchvision(model, sha256, num_params, gflops, acc1, acc5, clip_acc1) -> Weights:
    return Weights(f"{model}.kinetics400", f"https://download.pytorch.org/models/{model}-{sha256}.pth",
                   sha256, 400, num_params, gflops, EvalTransform(), KINETICS400_CLASSES,
                   {"video_acc@1": acc1, "video_acc@5": acc5, "clip_acc@1": clip_acc1}, docs=_TORCHVISION_DOCS)


def _ig65m(tag, file_stem, sha256, num_classes, num_params, clip_len, gflops) -> Weights:
    kinetics = num_classes == 400
    return Weights(f"r2plus1d_34_ig65m.{tag}", f"{_IG65M}{file_stem}-{sha256}.pth", sha256, num_classes,
                   num_params, gflops, EvalTransform(clip_len=clip_len, fps=None),
                   KINETICS400_CLASSES if kinetics else None,
                   dataset="IG65M, fine-tuned on Kinetics-400" if kinetics else "IG65M", docs=_IG65M_DOCS)


WEIGHTS: dict[str, Weights] = {w.name: w for w in (
    _torchvision("r3d_18", "b3b3357e", 33_371_472, 40.697, 63.200, 83.479, 52.75),
    _torchvision("mc3_18", "a90a0ba3", 11_695_440, 43.343, 63.960, 84.130, 53.90),
    _torchvision("r2plus1d_18", "91a641e6", 31_505_325, 40.519, 67.463, 86.175, 57.50),
    _ig65m("ig65m_kinetics_clip32", "r2plus1d_34_clip32_ft_kinetics_from_ig65m", "ade133f1", 400,
           63_697_175, 32, 152.356),
    _ig65m("ig65m_kinetics_clip8", "r2plus1d_34_clip8_ft_kinetics_from_ig65m", "0aa0550b", 400,
           63_697_175, 8, 38.089),
    _ig65m("ig65m_clip32", "r2plus1d_34_clip32_ig65m_from_scratch", "449a7af9", 359, 63_676_142, 32, 152.356),
    _ig65m("ig65m_clip8", "r2plus1d_34_clip8_ig65m_from_scratch", "9bae36ae", 487, 63_741_806, 8, 38.089),
)}
# A model name alone means the first of its entries above.
DEFAULT_TAGS = {w.model: w.name for w in reversed(WEIGHTS.values())}


def list_pretrained(pattern: str = "*") -> list[str]:
    """Names of the published weights (MODEL.TAG) matching a glob pattern."""
    return [name for name in WEIGHTS if fnmatch.fnmatch(name, pattern)
            or fnmatch.fnmatch(name.split(".", 1)[0], pattern)]


def is_weights_name(name: str) -> bool:
    return name in WEIGHTS or name in DEFAULT_TAGS


def get_weights(name: str) -> Weights:
    """The entry of `MODEL.TAG`, or of a model name's default weights."""
    entry = WEIGHTS.get(DEFAULT_TAGS.get(name, name))
    if entry is None:
        raise ValueError(f"no published weights named {name!r}; weights exist for: "
                         f"{', '.join(list_pretrained())} (a model name means its first tag: "
                         f"{', '.join(sorted(DEFAULT_TAGS))})")
    return entry


def named_weights(source, variant: str | None = None) -> Weights | None:
    """The entry `source` names, when it is not an existing path but a
    weights name (what the CLIs' weight arguments accept); `variant`, when
    given, must be its model."""
    if Path(source).exists() or not is_weights_name(str(source)):
        return None
    entry = get_weights(str(source))
    if variant and variant != entry.model:
        raise ValueError(f"{source} are {entry.model} weights, not {variant}")
    return entry


def weights_for_file(file_name: str) -> Weights | None:
    """The entry whose published file has this name, if any."""
    return next((w for w in WEIGHTS.values() if w.file_name == file_name), None)


def _converted(entry: Weights, progress: bool) -> dict:
    """The entry's variables, converted once and cached."""
    cached = hub.home() / "converted" / entry.file_name.rsplit(".", 1)[0]
    if not (cached / "model.json").is_file():
        with hub.locked(cached.name):
            if not (cached / "model.json").is_file():
                from convert import load_torchvision_weights  # torch is needed only here, once
                path = hub.fetch(entry.url, entry.sha256, progress)
                variables, _ = load_torchvision_weights(path, entry.model)
                save_variables(variables, cached, entry.model, entry.num_classes)
    return load_converted(cached, entry.model)[0]


def with_head(variables: dict, num_classes: int, rng: jax.Array | None = None) -> dict:
    """`variables` with a classifier of `num_classes` outputs: the same one if
    it has that many, else a fresh one initialized as torchvision does (the
    start of fine-tuning); `num_classes=0` drops it (the backbone)."""
    params = dict(variables["params"])
    head = params.pop("fc")
    if num_classes:
        width, published = head["kernel"].shape
        if published != num_classes:
            rng = jax.random.key(0) if rng is None else rng
            head = {"kernel": np.asarray(HEAD_KERNEL_INIT(rng, (width, num_classes), jnp.float32)),
                    "bias": np.asarray(HEAD_BIAS_INIT(rng, (num_classes,), jnp.float32))}
        params["fc"] = head
    return {**variables, "params": params}


def load_pretrained(name: str, num_classes: int | None = None, dtype: Any = jnp.float32,
                    progress: bool = True, rng: jax.Array | None = None, **model_kwargs
                    ) -> tuple[VideoResNet, dict]:
    """`(model, variables)` of published weights. `num_classes` (default: the
    weights') other than theirs re-initializes the head from `rng`; 0 gives
    the backbone. Other keyword arguments go to `create_model`."""
    entry = get_weights(name)
    num_classes = entry.num_classes if num_classes is None else num_classes
    variables = with_head(_converted(entry, progress), num_classes, rng)
    return create_model(entry.model, num_classes=num_classes, dtype=dtype, **model_kwargs), variables


def pretrained_model(name: str, num_classes: int | None = None, **kwargs) -> VideoResNet:
    """`load_pretrained`'s model bound to its variables: `model(clips)` gives
    eval-mode logits, `model.variables` the variables, `model.unbind()` both."""
    model, variables = load_pretrained(name, num_classes, **kwargs)
    return model.bind(variables)

