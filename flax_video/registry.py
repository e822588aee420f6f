"""Model names: `{family}_{depth}` for families r3d, mc3, r2plus1d and depths
10, 18, 34, 50, 101, 152, plus `r2plus1d_34_ig65m`."""
from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from typing import Any

import jax.numpy as jnp

from flax_video import blocks
from flax_video.resnet import VideoResNet


@dataclass(frozen=True)
class ModelSpec:
    family: str
    depth: int
    block: Any
    layers: tuple[int, int, int, int]
    conv_builders: tuple[Any, Any, Any, Any]
    stem: Any
    bn_epsilon: float = 1e-5
    midplanes_per_conv: bool = False


DEPTHS = {
    10: (blocks.BasicBlock, (1, 1, 1, 1)),
    18: (blocks.BasicBlock, (2, 2, 2, 2)),
    34: (blocks.BasicBlock, (3, 4, 6, 3)),
    50: (blocks.Bottleneck, (3, 4, 6, 3)),
    101: (blocks.Bottleneck, (3, 4, 23, 3)),
    152: (blocks.Bottleneck, (3, 8, 36, 3)),
}

FAMILIES = {
    "r3d": ((blocks.Conv3DSimple,) * 4, blocks.BasicStem),
    "mc3": ((blocks.Conv3DSimple,) + (blocks.Conv3DNoTemporal,) * 3, blocks.BasicStem),
    "r2plus1d": ((blocks.Conv2Plus1D,) * 4, blocks.R2Plus1dStem),
}

MODELS: dict[str, ModelSpec] = {
    f"{family}_{depth}": ModelSpec(family, depth, block, layers, builders, stem)
    for family, (builders, stem) in FAMILIES.items()
    for depth, (block, layers) in DEPTHS.items()
}
# R(2+1)D-34 of Facebook's VMZ, pre-trained on IG65M (Ghadiyaram et al. 2019)
# and ported onto torchvision's VideoResNet: Caffe2's per-conv midplanes and
# BatchNorm epsilon 1e-3.
MODELS["r2plus1d_34_ig65m"] = ModelSpec(
    "r2plus1d", 34, blocks.BasicBlock, DEPTHS[34][1], FAMILIES["r2plus1d"][0], blocks.R2Plus1dStem,
    bn_epsilon=1e-3, midplanes_per_conv=True)


def list_models(pattern: str = "*", pretrained: bool = False) -> list[str]:
    """Registered model names matching a glob pattern, sorted; with
    `pretrained=True`, the names of published weights (MODEL.TAG) instead."""
    if pretrained:
        from flax_video.weights import list_pretrained
        return list_pretrained(pattern)
    return sorted((name for name in MODELS if fnmatch.fnmatch(name, pattern)),
                  key=lambda name: (MODELS[name].family, MODELS[name].depth, name))


def get_spec(name: str) -> ModelSpec:
    try:
        return MODELS[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; known models: "
                         f"{', '.join(list_models())}") from None


def create_model(name: str, num_classes: int | None = None, dtype: Any = jnp.float32,
                 pretrained: bool = False, **kwargs) -> VideoResNet:
    """Build a registered model (400 classes unless told). `num_classes=0`
    gives the backbone, whose output is the pooled features. Other keyword
    arguments (`bn_axis_name`, `conv_lowering`, `zero_init_residual`) go to
    `VideoResNet`.

    `pretrained=True` returns it bound to published weights (`name` may then
    name them: `r2plus1d_34_ig65m.ig65m_clip8`), with the weights' classes
    unless `num_classes` says otherwise (a new head; `flax_video.weights`)."""
    if pretrained:
        from flax_video.weights import pretrained_model
        return pretrained_model(name, num_classes, dtype=dtype, **kwargs)
    spec = get_spec(name)
    return VideoResNet(block=spec.block, conv_builders=spec.conv_builders,
                       layers=spec.layers, stem=spec.stem,
                       num_classes=400 if num_classes is None else num_classes,
                       dtype=dtype, bn_epsilon=spec.bn_epsilon,
                       midplanes_per_conv=spec.midplanes_per_conv, **kwargs)
