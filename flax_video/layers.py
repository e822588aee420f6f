"""The two layers the video ResNets are made of: a bias-free 3D conv and a
BatchNorm that updates its statistics exactly as PyTorch's does."""
from __future__ import annotations

import math
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from flax_video import onednn
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
    scale_init: Callable = nn.initializers.ones

    @nn.compact
    def __call__(self, x):
        features = x.shape[-1]
        scale = self.param("scale", self.scale_init, (features,), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (features,), jnp.float32)
        running_mean = self.variable("batch_stats", "mean", jnp.zeros, (features,), jnp.float32)
        running_var = self.variable("batch_stats", "var", jnp.ones, (features,), jnp.float32)
        batches = self.variable("batch_stats", "num_batches_tracked", jnp.zeros, (), jnp.int32)

        if self.use_running_average:
            mul = scale * lax.rsqrt(running_var.value + self.epsilon)
            return _affine(x.astype(self.dtype), running_mean.value, mul, bias, self.dtype)

        y, mean, var, count = _normalize_in_train_mode(x, scale, bias, self.epsilon, self.dtype, self.axis_name)
        if not self.is_initializing():
            m = self.momentum
            unbiased = var * (count / max(count - 1, 1))
            running_mean.value = m * running_mean.value + (1 - m) * mean
            running_var.value = m * running_var.value + (1 - m) * unbiased
            batches.value = batches.value + 1
        return y


def _affine(x, mean, mul, bias, dtype):
    # (x - mean) * mul + bias, as torch computes it: folding the mean into the
    # bias cancels badly when |mean| >> std.
    return (x - mean.astype(dtype)) * mul.astype(dtype) + bias.astype(dtype)


def _channel_sum(x, dtype):
    """Sum over every axis but the last, as a matmul with a ones vector: on
    XLA:CPU that runs 2-7x faster than `reduce`, which it splits into a slow
    reduce-window for accuracy."""
    rows = x.reshape(-1, x.shape[-1])
    return jnp.einsum("rc,r->c", rows, jnp.ones(rows.shape[0], rows.dtype), preferred_element_type=dtype)


def _normalize_in_train_mode(x, scale, bias, epsilon, dtype, axis_name):
    """Train-mode BatchNorm: (y, batch mean, biased batch variance, count),
    the statistics over every replica when `axis_name` is set. On AVX-512
    CPUs oneDNN's BatchNorm computes it where it can (no replicas to average
    over): a pass or two over x where XLA:CPU needs several."""
    stats_dtype = jnp.promote_types(x.dtype, jnp.float32)
    count = math.prod(x.shape[:-1]) * (lax.axis_size(axis_name) if axis_name else 1)
    if (axis_name is None and x.dtype == jnp.dtype(dtype) and onednn.enabled(dtype)
            and onednn.batch_norm_wins(dtype, count, x.shape[-1], epsilon)):
        return (*onednn.batch_norm(x, scale, bias, epsilon), count)
    total = (lambda v: lax.psum(v, axis_name)) if axis_name else (lambda v: v)

    @jax.custom_vjp
    def normalize(x, scale, bias):
        return forward(x, scale, bias)[0]

    def forward(x, scale, bias):
        mean = total(_channel_sum(x, stats_dtype)) / count
        # Two passes (mean, then centered squares) for float32 accuracy.
        centered = x.astype(stats_dtype) - mean
        var = total(_channel_sum(jnp.square(centered), stats_dtype)) / count
        rstd = lax.rsqrt(var + epsilon)
        y = _affine(x.astype(dtype), mean, scale * rstd, bias, dtype)
        return (y, mean, var), (x, mean, rstd, scale)

    def backward(residuals, cotangents):
        # The gradient autodiff would give (through the replicas' statistics
        # too), with its four reductions as matmuls.
        x, mean, rstd, scale = residuals
        dy, dmean, dvar = cotangents
        dy = dy.astype(stats_dtype)
        centered = x.astype(stats_dtype) - mean
        normalized = centered * rstd
        dbias = _channel_sum(dy, stats_dtype)
        dscale = _channel_sum(dy * normalized, stats_dtype)
        dx = (scale * rstd) * (dy - (total(dbias) + normalized * total(dscale)) / count) \
            + (total(dmean) + 2 * centered * total(dvar)) / count
        return dx.astype(x.dtype), dscale.astype(scale.dtype), dbias.astype(scale.dtype)

    normalize.defvjp(forward, backward)
    y, mean, var = normalize(x, scale, bias)
    return y, mean, var, count
