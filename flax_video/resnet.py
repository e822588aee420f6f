"""VideoResNet: torchvision's video ResNet as one Flax module."""
from __future__ import annotations

import functools
from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from flax_video.blocks import zero_init_mode
from flax_video.layers import BatchNorm, Conv

STAGE_PLANES = (64, 128, 256, 512)
STAGE_STRIDES = (1, 2, 2, 2)
# torchvision's classifier initialization.
HEAD_KERNEL_INIT = nn.initializers.normal(0.01)
HEAD_BIAS_INIT = nn.initializers.zeros


class VideoResNet(nn.Module):
    """Input `(batch, time, height, width, 3)`; output logits `(batch, num_classes)`.

    With `num_classes=0` there is no head and the output is the pooled
    feature vector (512 or 2048 wide); such a model applies to the variables
    of one with a head, which it ignores. Stage outputs (`stem_out`,
    `layer1_out` .. `layer4_out`, `pooled`) are sown into the `intermediates`
    collection: `model.apply(variables, x, mutable=["intermediates"])`.
    """
    block: Any
    conv_builders: Sequence[Any]
    layers: Sequence[int]
    stem: Any
    num_classes: int = 400
    dtype: Any = jnp.float32
    bn_epsilon: float = 1e-5
    midplanes_per_conv: bool = False
    # Name of the pmap axis to take BatchNorm statistics over (SyncBN).
    bn_axis_name: str | None = None
    conv_lowering: str | None = None
    # Which blocks start as their shortcut, their last BatchNorm scale at 0:
    # False / "none", True / "all" (Goyal et al. 2017), or "identity" (blocks
    # with an identity shortcut only; `zero_init_mode`). torchvision's
    # video VideoResNet takes a bool flag but finds no such BatchNorm in its
    # video blocks.
    zero_init_residual: bool | str = False

    @nn.compact
    def __call__(self, x, train: bool = False):
        zero_init_mode(self.zero_init_residual)  # a bad value fails here, not in a block
        conv = functools.partial(Conv, dtype=self.dtype, lowering=self.conv_lowering)
        norm = functools.partial(BatchNorm, use_running_average=not train,
                                 epsilon=self.bn_epsilon, dtype=self.dtype,
                                 axis_name=self.bn_axis_name)
        x = self.stem(conv=conv, norm=norm, name="stem")(x)
        self.sow("intermediates", "stem_out", x)
        for stage, (planes, stride, blocks, builder) in enumerate(
                zip(STAGE_PLANES, STAGE_STRIDES, self.layers, self.conv_builders), start=1):
            for i in range(blocks):
                x = self.block(planes=planes, conv_builder=builder,
                               stride=stride if i == 0 else 1, conv=conv, norm=norm,
                               midplanes_per_conv=self.midplanes_per_conv,
                               zero_init_residual=self.zero_init_residual,
                               name=f"layer{stage}_{i}")(x)
            self.sow("intermediates", f"layer{stage}_out", x)
        x = jnp.mean(x.astype(jnp.float32), axis=(1, 2, 3))
        self.sow("intermediates", "pooled", x)
        if not self.num_classes:
            return x
        x = nn.Dense(self.num_classes, dtype=self.dtype,
                     kernel_init=HEAD_KERNEL_INIT, bias_init=HEAD_BIAS_INIT, name="fc")(x)
        return x.astype(jnp.float32)
