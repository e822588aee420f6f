"""Conv builders, stems and residual blocks of torchvision's video ResNets
(`torchvision/models/video/resnet.py`), one Flax module each.

Modules receive `conv` and `norm` partials from the top-level model (which
binds dtype, train mode and BatchNorm settings), so blocks never see `train`.
Submodule names mirror torchvision's structure; `convert/mapping.py` maps
torchvision's state-dict keys onto them.
"""
from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn


def midplanes(inplanes: int, planes: int) -> int:
    """Width of the (2+1)D intermediate layer: keeps the parameter count of
    the 3x3x3 conv it replaces (Tran et al. 2018)."""
    return (inplanes * planes * 3 * 3 * 3) // (inplanes * 3 * 3 + 3 * planes)


# --- conv builders: a conv of `features` outputs at spatial/temporal `stride`.

class _ConvBuilder(nn.Module):
    features: int
    midplanes: int
    stride: int
    conv: Callable
    norm: Callable
    # `midplanes` is used by Conv2Plus1D only; `norm` too.


class Conv3DSimple(_ConvBuilder):
    """3x3x3 conv, stride s in all three dims (r3d, mc3 layer1)."""

    @staticmethod
    def downsample_stride(stride: int):
        return (stride, stride, stride)

    @nn.compact
    def __call__(self, x):
        return self.conv(self.features, (3, 3, 3), (self.stride,) * 3, (1, 1, 1),
                         name="conv")(x)


class Conv3DNoTemporal(_ConvBuilder):
    """1x3x3 conv, stride (1, s, s) (mc3 layers 2-4)."""

    @staticmethod
    def downsample_stride(stride: int):
        return (1, stride, stride)

    @nn.compact
    def __call__(self, x):
        return self.conv(self.features, (1, 3, 3), (1, self.stride, self.stride),
                         (0, 1, 1), name="conv")(x)


class Conv2Plus1D(_ConvBuilder):
    """(2+1)D conv: 1x3x3 spatial conv to `midplanes`, BN, ReLU, then a 3x1x1
    temporal conv with stride (s, 1, 1)."""

    @staticmethod
    def downsample_stride(stride: int):
        return (stride, stride, stride)

    @nn.compact
    def __call__(self, x):
        s = self.stride
        x = self.conv(self.midplanes, (1, 3, 3), (1, s, s), (0, 1, 1), name="spatial")(x)
        x = nn.relu(self.norm(name="spatial_bn")(x))
        return self.conv(self.features, (3, 1, 1), (s, 1, 1), (1, 0, 0), name="temporal")(x)


# --- stems

class BasicStem(nn.Module):
    """3x7x7 conv, stride (1, 2, 2), 64 channels, BN, ReLU; no max-pool."""
    conv: Callable
    norm: Callable

    @nn.compact
    def __call__(self, x):
        x = self.conv(64, (3, 7, 7), (1, 2, 2), (1, 3, 3), name="conv")(x)
        return nn.relu(self.norm(name="bn")(x))


class R2Plus1dStem(nn.Module):
    """1x7x7 conv to 45 channels, BN, ReLU, then 3x1x1 conv to 64, BN, ReLU."""
    conv: Callable
    norm: Callable

    @nn.compact
    def __call__(self, x):
        x = self.conv(45, (1, 7, 7), (1, 2, 2), (0, 3, 3), name="spatial")(x)
        x = nn.relu(self.norm(name="spatial_bn")(x))
        x = self.conv(64, (3, 1, 1), (1, 1, 1), (1, 0, 0), name="temporal")(x)
        return nn.relu(self.norm(name="bn")(x))


# --- residual blocks

ZERO_INIT_MODES = ("none", "all", "identity")


def zero_init_mode(value: bool | str) -> str:
    """Which residual branches start silent (last BatchNorm scale 0):
    "none" (torchvision's init; also False), "all" (every block, Goyal et al.
    2017; also True) or "identity" (only blocks whose shortcut is the
    identity, so each stage's first, projection block starts live)."""
    mode = {False: "none", True: "all"}[value] if isinstance(value, bool) else value
    if mode not in ZERO_INIT_MODES:
        raise ValueError(f"zero_init_residual must be True, False or one of {', '.join(ZERO_INIT_MODES)}; "
                         f"got {value!r}")
    return mode


class _Block(nn.Module):
    planes: int
    conv_builder: Any
    stride: int
    conv: Callable
    norm: Callable
    # torchvision computes the (2+1)D midplanes once per block from
    # (inplanes, planes); Caffe2/VMZ (IG65M weights) computes them per conv
    # from that conv's own input and output widths.
    midplanes_per_conv: bool = False
    # Whether the block's last BatchNorm starts with scale 0, so that the
    # residual branch adds nothing at first: `zero_init_mode`'s values.
    zero_init_residual: bool | str = False

    expansion = 1

    def _midplanes(self, block_inplanes: int, conv_inplanes: int) -> int:
        if self.midplanes_per_conv:
            return midplanes(conv_inplanes, self.planes)
        return midplanes(block_inplanes, self.planes)

    def _identity_shortcut(self, x) -> bool:
        return self.stride == 1 and x.shape[-1] == self.planes * self.expansion

    def _shortcut(self, x):
        if self._identity_shortcut(x):
            return x
        strides = self.conv_builder.downsample_stride(self.stride)
        x = self.conv(self.planes * self.expansion, (1, 1, 1), strides, (0, 0, 0), name="downsample_conv")(x)
        return self.norm(name="downsample_bn")(x)

    def _last_norm(self, name, x):
        """The branch's last BatchNorm; `x` is the block's input."""
        mode = zero_init_mode(self.zero_init_residual)
        zero = mode == "all" or (mode == "identity" and self._identity_shortcut(x))
        return self.norm(name=name, scale_init=nn.initializers.zeros if zero else nn.initializers.ones)

    def _builder(self, features, mid, stride, name):
        return self.conv_builder(features=features, midplanes=mid, stride=stride,
                                 conv=self.conv, norm=self.norm, name=name)


class BasicBlock(_Block):
    expansion = 1

    @nn.compact
    def __call__(self, x):
        inplanes = x.shape[-1]
        y = self._builder(self.planes, self._midplanes(inplanes, inplanes), self.stride, "conv1")(x)
        y = nn.relu(self.norm(name="bn1")(y))
        y = self._builder(self.planes, self._midplanes(inplanes, self.planes), 1, "conv2")(y)
        y = self._last_norm("bn2", x)(y)
        return nn.relu(y + self._shortcut(x))


class Bottleneck(_Block):
    expansion = 4

    @nn.compact
    def __call__(self, x):
        inplanes = x.shape[-1]
        y = self.conv(self.planes, (1, 1, 1), name="conv1")(x)
        y = nn.relu(self.norm(name="bn1")(y))
        y = self._builder(self.planes, self._midplanes(inplanes, self.planes), self.stride, "conv2")(y)
        y = nn.relu(self.norm(name="bn2")(y))
        y = self.conv(self.planes * self.expansion, (1, 1, 1), name="conv3")(y)
        y = self._last_norm("bn3", x)(y)
        return nn.relu(y + self._shortcut(x))
