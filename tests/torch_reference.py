"""torchvision's own video ResNet code, and torch models for every name in
our registry built from it.

The registry's torchvision 0.28 wheel is a CUDA build whose C extension cannot
load next to CPU torch, so a plain `import torchvision` fails here. Its model
code is pure Python: when the plain import fails we load
`torchvision/models/video/resnet.py` with the package `__init__`s bypassed.
"""
from __future__ import annotations

import importlib
import importlib.util
import os
import sys
import types

import torch


def _import_video_resnet():
    try:
        return importlib.import_module("torchvision.models.video.resnet")
    except Exception:  # noqa: BLE001 - any failure of the C extension import
        for name in [n for n in sys.modules if n == "torchvision" or n.startswith("torchvision.")]:
            del sys.modules[name]
    spec = importlib.util.find_spec("torchvision")
    if spec is None:
        raise ImportError("torchvision is not installed (pip install --no-deps torchvision==0.28.0)")
    root = spec.submodule_search_locations[0]
    for name, sub in (("torchvision", ""), ("torchvision.models", "models"),
                      ("torchvision.models.video", "models/video")):
        package = types.ModuleType(name)
        package.__path__ = [os.path.join(root, sub)]
        sys.modules[name] = package
    return importlib.import_module("torchvision.models.video.resnet")


tv = _import_video_resnet()

_BLOCKS = {"BasicBlock": tv.BasicBlock, "Bottleneck": tv.Bottleneck}
_BUILDERS = {"Conv3DSimple": tv.Conv3DSimple, "Conv3DNoTemporal": tv.Conv3DNoTemporal,
             "Conv2Plus1D": tv.Conv2Plus1D}
_STEMS = {"BasicStem": tv.BasicStem, "R2Plus1dStem": tv.R2Plus1dStem}


def torch_model(name: str, num_classes: int = 400) -> torch.nn.Module:
    """torchvision's VideoResNet for a registry name, built from the same
    block, builders, layers and stem as ours (torchvision's own constructor for
    r3d_18, mc3_18 and r2plus1d_18)."""
    if name in ("r3d_18", "mc3_18", "r2plus1d_18"):
        return getattr(tv, name)(num_classes=num_classes)
    from flax_video.registry import get_spec
    spec = get_spec(name)
    model = tv.VideoResNet(
        block=_BLOCKS[spec.block.__name__],
        conv_makers=[_BUILDERS[b.__name__] for b in spec.conv_builders],
        layers=list(spec.layers), stem=_STEMS[spec.stem.__name__], num_classes=num_classes)
    if name.endswith("_ig65m"):
        # As the community port of VMZ's IG65M weights builds it.
        model.layer2[0].conv2[0] = tv.Conv2Plus1D(128, 128, 288)
        model.layer3[0].conv2[0] = tv.Conv2Plus1D(256, 256, 576)
        model.layer4[0].conv2[0] = tv.Conv2Plus1D(512, 512, 1152)
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm3d):
                module.eps = 1e-3
    return model


def randomize_(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Random BatchNorm affine parameters and running statistics, random head bias."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm3d):
                n = module.num_features
                module.weight.copy_(0.5 + torch.rand(n, generator=generator))
                module.bias.copy_(0.2 * torch.randn(n, generator=generator))
                module.running_mean.copy_(0.2 * torch.randn(n, generator=generator))
                module.running_var.copy_(0.5 + 1.5 * torch.rand(n, generator=generator))
        model.fc.bias.copy_(0.1 * torch.randn(model.fc.out_features, generator=generator))
    return model
