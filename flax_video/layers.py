"""The two layers the video ResNets are made of: a bias-free 3D conv and a
BatchNorm that updates its statistics exactly as PyTorch's does."""
from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax.numpy as jnp
from jax import lax

from flax_video.conv3d import conv3d

# torchvision: kaiming_normal_(mode="fan_out", nonlinearity="relu"), untruncated.
kaiming_fan_out = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


class Conv(nn.Module):
    """3D convolution without bias, PyTorch-style symmetric padding.

    The kernel is stored float32 as `(kt, kh, kw, in, out)`; the computation
    runs in `dtype`. `lowering=None` picks the fastest lowering for the
    backend (see `flax_video.conv3d`).
    """
    features: int
    kernel_size: tuple[int, int, int]
    strides: tuple[int, int, int] = (1, 1, 1)
    padding: tuple[int, int, int] = (0, 0, 0)
    dtype: Any = jnp.float32
    lowering: str | None = None

    @nn.compact
    def __call__(self, x):
        kernel = self.param("kernel", kaiming_fan_out,
                            (*self.kernel_size, x.shape[-1], self.features), jnp.float32)
        return conv3d(x.astype(self.dtype), kernel.astype(self.dtype),
                      self.strides, self.padding, self.lowering)


class BatchNorm(nn.Module):
    """BatchNorm over the channel (last) axis, matching torch.nn.BatchNorm3d.

    Normalizes with the biased batch variance, as torch does, but updates the
    running variance with the unbiased one (n / (n - 1)), as torch does and
    Flax's `nn.BatchNorm` does not. `momentum` is Flax's convention: 0.9 here
    is PyTorch's 0.1. With `axis_name`, statistics are taken over all replicas
    (SyncBatchNorm). Parameters `scale`, `bias` and statistics `mean`, `var`
    carry the same names as in `nn.BatchNorm`; `num_batches_tracked` counts
    training batches as torch's buffer does, so a torchvision state dict and
    Flax variables map one to one.
    """
    use_running_average: bool
    momentum: float = 0.9
    epsilon: float = 1e-5
    dtype: Any = jnp.float32
    axis_name: str | None = None

    @nn.compact
    def __call__(self, x):
        features = x.shape[-1]
        scale = self.param("scale", nn.initializers.ones, (features,), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (features,), jnp.float32)
        running_mean = self.variable("batch_stats", "mean", jnp.zeros, (features,), jnp.float32)
        running_var = self.variable("batch_stats", "var", jnp.ones, (features,), jnp.float32)
        batches = self.variable("batch_stats", "num_batches_tracked", jnp.zeros, (), jnp.int32)

        if self.use_running_average:
            mean, var = running_mean.value, running_var.value
        else:
            mean, var, count = self._batch_statistics(x)
            if not self.is_initializing():
                m = self.momentum
                unbiased = var * (count / max(count - 1, 1))
                running_mean.value = m * running_mean.value + (1 - m) * mean
                running_var.value = m * running_var.value + (1 - m) * unbiased
                batches.value = batches.value + 1

        # (x - mean) * mul + bias, as torch computes it: folding the mean into
        # the bias cancels badly when |mean| >> std.
        mul = scale * lax.rsqrt(var + self.epsilon)
        x = x.astype(self.dtype)
        return (x - mean.astype(self.dtype)) * mul.astype(self.dtype) + bias.astype(self.dtype)

    def _batch_statistics(self, x):
        axes = tuple(range(x.ndim - 1))
        x = x.astype(jnp.promote_types(self.dtype, jnp.float32))
        count = math.prod(x.shape[:-1])
        mean = x.mean(axes)
        if self.axis_name is not None:
            mean = lax.pmean(mean, self.axis_name)
            count *= lax.axis_size(self.axis_name)
        # Two passes (mean, then centered squares) for float32 accuracy.
        var = jnp.square(x - mean).mean(axes)
        if self.axis_name is not None:
            var = lax.pmean(var, self.axis_name)
        return mean, var, count
