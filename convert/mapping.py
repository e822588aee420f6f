"""The table from torchvision state-dict keys to Flax variable paths.

`key_table(model_name)` lists one `Entry` per torch layer, in torchvision's
module order: its key prefix, its Flax module path and its kind. Each kind
names the tensors it owns and how each one moves between layouts.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from flax_video import blocks
from flax_video.registry import get_spec
from flax_video.resnet import STAGE_PLANES, STAGE_STRIDES


@dataclass(frozen=True)
class Tensor:
    """One torch tensor of a layer: `{prefix}.{suffix}` <-> `[collection][path][leaf]`."""
    suffix: str
    collection: str
    leaf: str
    to_flax: Callable[[np.ndarray], np.ndarray]
    to_torch: Callable[[np.ndarray], np.ndarray]


def _same(a):
    return a


def _c(a):
    # Transposed views would reach writers (safetensors.numpy writes raw
    # memory) and torch.from_numpy with permuted strides: copy to C order.
    return np.ascontiguousarray(a)


def _as_int32(a):
    a = np.asarray(a)
    if a.min(initial=0) < 0 or a.max(initial=0) > np.iinfo(np.int32).max:
        raise ValueError(f"num_batches_tracked {a} does not fit in int32")
    return a.astype(np.int32)


def _as_int64(a):
    return np.asarray(a).astype(np.int64)


KINDS: dict[str, tuple[Tensor, ...]] = {
    # Conv3d weight (out, in, kt, kh, kw) <-> kernel (kt, kh, kw, in, out).
    "conv": (Tensor("weight", "params", "kernel",
                    lambda w: _c(w.transpose(2, 3, 4, 1, 0)), lambda k: _c(k.transpose(4, 3, 0, 1, 2))),),
    "bn": (Tensor("weight", "params", "scale", _same, _same),
           Tensor("bias", "params", "bias", _same, _same),
           Tensor("running_mean", "batch_stats", "mean", _same, _same),
           Tensor("running_var", "batch_stats", "var", _same, _same),
           Tensor("num_batches_tracked", "batch_stats", "num_batches_tracked", _as_int32, _as_int64)),
    # Linear weight (out, in) <-> kernel (in, out).
    "linear": (Tensor("weight", "params", "kernel", lambda w: _c(w.T), lambda k: _c(k.T)),
               Tensor("bias", "params", "bias", _same, _same)),
}


@dataclass(frozen=True)
class Entry:
    torch_prefix: str
    flax_path: tuple[str, ...]
    kind: str


def _builder_entries(builder, prefix: str, path: tuple[str, ...]) -> list[Entry]:
    if builder is blocks.Conv2Plus1D:  # nn.Sequential(conv, BN, ReLU, conv)
        return [Entry(f"{prefix}.0", path + ("spatial",), "conv"),
                Entry(f"{prefix}.1", path + ("spatial_bn",), "bn"),
                Entry(f"{prefix}.3", path + ("temporal",), "conv")]
    return [Entry(prefix, path + ("conv",), "conv")]  # Conv3DSimple, Conv3DNoTemporal


def _stem_entries(stem) -> list[Entry]:
    if stem is blocks.R2Plus1dStem:
        return [Entry("stem.0", ("stem", "spatial"), "conv"),
                Entry("stem.1", ("stem", "spatial_bn"), "bn"),
                Entry("stem.3", ("stem", "temporal"), "conv"),
                Entry("stem.4", ("stem", "bn"), "bn")]
    return [Entry("stem.0", ("stem", "conv"), "conv"), Entry("stem.1", ("stem", "bn"), "bn")]


def _block_entries(block, builder, t: str, f: str, downsample: bool) -> list[Entry]:
    if block is blocks.Bottleneck:
        entries = [Entry(f"{t}.conv1.0", (f, "conv1"), "conv"),
                   Entry(f"{t}.conv1.1", (f, "bn1"), "bn"),
                   *_builder_entries(builder, f"{t}.conv2.0", (f, "conv2")),
                   Entry(f"{t}.conv2.1", (f, "bn2"), "bn"),
                   Entry(f"{t}.conv3.0", (f, "conv3"), "conv"),
                   Entry(f"{t}.conv3.1", (f, "bn3"), "bn")]
    else:
        entries = [*_builder_entries(builder, f"{t}.conv1.0", (f, "conv1")),
                   Entry(f"{t}.conv1.1", (f, "bn1"), "bn"),
                   *_builder_entries(builder, f"{t}.conv2.0", (f, "conv2")),
                   Entry(f"{t}.conv2.1", (f, "bn2"), "bn")]
    if downsample:
        entries += [Entry(f"{t}.downsample.0", (f, "downsample_conv"), "conv"),
                    Entry(f"{t}.downsample.1", (f, "downsample_bn"), "bn")]
    return entries


def key_table(model_name: str) -> list[Entry]:
    """Every torch layer of `model_name`, in torchvision's state-dict order."""
    spec = get_spec(model_name)
    entries = _stem_entries(spec.stem)
    inplanes = 64
    for stage, (planes, stage_stride, blocks_in_stage, builder) in enumerate(
            zip(STAGE_PLANES, STAGE_STRIDES, spec.layers, spec.conv_builders), start=1):
        for i in range(blocks_in_stage):
            stride = stage_stride if i == 0 else 1
            out_planes = planes * spec.block.expansion
            downsample = i == 0 and (stride != 1 or inplanes != out_planes)
            entries += _block_entries(spec.block, builder, f"layer{stage}.{i}",
                                      f"layer{stage}_{i}", downsample)
            inplanes = out_planes
    return entries + [Entry("fc", ("fc",), "linear")]
