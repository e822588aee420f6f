"""Winograd F(2, 3) convolutions on CPU, for the stride-1 3x3x3, 1x3x3 and
3x1x1 convs that are most of the video ResNets' work.

A 3x3x3 conv computed by Winograd's minimal filtering (Lavin & Gray 2016,
"Fast Algorithms for Convolutional Neural Networks") takes 64 multiplies per
2x2x2 output tile where the direct conv takes 216, a 1x3x3 conv 16 per 2x2
where it takes 36. oneDNN has no Winograd kernel on x86-64 today, and its
direct convs already run near the CPU's peak (as torch's do), so this is what
runs faster than torch in float32: `flax_video._onednn` has the kernel
(csrc/winograd.cc); the kernel's transform is computed here, in JAX.

The input gradient of such a conv is the same kind of conv (the kernel
mirrored, its channels swapped) and runs through the same kernel; the kernel
gradient is the transformed tiles of the input times those of the output
gradient, summed over tiles, by a kernel of the same making (AVX-512 or AVX2
code, picked at run time). Used where the transformed kernel fits in cache
(`MAX_KERNEL_BYTES`), for float32 convs, and for bfloat16 ones where oneDNN
has no bfloat16 conv (AVX2 CPUs: there XLA's bfloat16 convs are all there is
besides, and Winograd with float32 inside beats them); `FLAX_VIDEO_WINOGRAD=0`
turns it off.
"""
from __future__ import annotations

import functools
import logging
import os

import jax
import jax.numpy as jnp
import numpy as np

from flax_video import onednn

ENV_VAR = "FLAX_VIDEO_WINOGRAD"

# Beyond this the transformed kernel (16x 64-channel planes, 2.4x the kernel for
# 3x3x3) no longer stays in cache between tile blocks and the kernel loses to
# oneDNN's direct conv (r3d_18's layer3 and layer4: 0.4x and 0.1x).
MAX_KERNEL_BYTES = 4 << 20

# F(2, 3): input transform B^T, kernel transform G, output transform A^T.
_G = np.array([[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]], np.float32)
_IDENTITY = np.ones((1, 1), np.float32)

log = logging.getLogger("flax_video")


@functools.cache
def available() -> bool:
    """Whether Winograd convs run here (the oneDNN extension loads and the CPU
    has AVX-512 BW or AVX2 with FMA); logs once which, or why not."""
    if os.environ.get(ENV_VAR, "1") == "0":
        log.info("flax_video: Winograd convs off (%s=0)", ENV_VAR)
        return False
    if not onednn.available():  # needs the extension and the ISA, and logs why not
        return False
    log.info("flax_video: stride-1 3-tap %s convs on CPU run through Winograd F(2, 3) (%s)",
             " and ".join(jnp.dtype(d).name for d in dtypes()), onednn.isa())
    return True


def dtypes() -> tuple:
    """The dtypes whose convs Winograd takes: float32, and bfloat16 where
    oneDNN has no bfloat16 conv (with it, oneDNN's bf16 kernels win)."""
    return (jnp.float32,) if jnp.bfloat16 in onednn.dtypes() else onednn.DTYPES


def chosen(kernel_shape, strides, padding, dtype) -> bool:
    """Whether `conv3d.choose` should take Winograd for this conv: it
    applies, the dtype is one of `dtypes()`, and the transformed kernel fits
    in cache."""
    winograd_axes = axes(kernel_shape, strides, padding)
    return (winograd_axes is not None and jnp.dtype(dtype) in dtypes() and available()
            and kernel_bytes(kernel_shape, winograd_axes) <= MAX_KERNEL_BYTES)


def axes(kernel_shape, strides, padding) -> tuple[int, int, int] | None:
    """Per (t, h, w), 1 where the conv takes Winograd's transform (3 taps,
    padding 1), 0 where it is pointwise (1 tap, no padding); None if the
    conv is not of that form (or its channels are not multiples of 16)."""
    kt, kh, kw, c, o = kernel_shape
    per_axis = []
    for k, s, p in zip((kt, kh, kw), strides, padding):
        if s != 1 or (k, p) not in ((3, 1), (1, 0)):
            return None
        per_axis.append(int(k == 3))
    if not any(per_axis) or c % 16 or o % 16:
        return None
    return tuple(per_axis)


def kernel_bytes(kernel_shape, winograd_axes) -> int:
    """Size of the transformed kernel: 4 ** (Winograd axes) planes of c x o floats."""
    c, o = kernel_shape[3:]
    return 4 ** sum(winograd_axes) * c * o * 4


def _kron_g(winograd_axes):
    """kron(G_t, G_h, G_w): (components, taps), taps in (t, h, w) order."""
    return functools.reduce(np.kron, [_G if a else _IDENTITY for a in winograd_axes])


def transform_kernel(kernel, winograd_axes):
    """G k G^T along each Winograd axis: (components, c, o) in float32, as one
    matmul of kron(G_t, G_h, G_w) with the kernel's taps."""
    g = _kron_g(winograd_axes)
    taps = kernel.astype(jnp.float32).reshape(g.shape[1], -1)
    return jnp.matmul(g, taps, precision=jax.lax.Precision.HIGHEST).reshape(-1, *kernel.shape[3:])


def _forward(x, kernel, winograd_axes):
    y = jax.ShapeDtypeStruct((*x.shape[:-1], kernel.shape[-1]), x.dtype)
    return jax.ffi.ffi_call("flax_video_winograd_forward", y, vmap_method="expand_dims")(
        x, transform_kernel(kernel, winograd_axes), axes=np.asarray(winograd_axes, np.int64))


def _kernel_gradient(x, dy, kernel, winograd_axes):
    """The kernel's gradient: that of the transformed kernel (summed over
    tiles by the custom call), mapped back through G (transform_kernel's
    transpose)."""
    g = _kron_g(winograd_axes)
    du = jax.ShapeDtypeStruct((g.shape[0], *kernel.shape[3:]), jnp.float32)
    du = jax.ffi.ffi_call("flax_video_winograd_kernel_gradient", du, vmap_method="sequential")(
        x, dy, axes=np.asarray(winograd_axes, np.int64))
    dk = jnp.matmul(g.T, du.reshape(g.shape[0], -1), precision=jax.lax.Precision.HIGHEST)
    return dk.reshape(kernel.shape).astype(kernel.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _conv(x, kernel, winograd_axes):
    return _forward(x, kernel, winograd_axes)


def _conv_fwd(x, kernel, winograd_axes):
    return _forward(x, kernel, winograd_axes), (x, kernel)


def _conv_bwd(winograd_axes, residuals, dy):
    x, kernel = residuals
    # dx is dy convolved with the mirrored kernel, in and out channels swapped.
    mirrored = jnp.flip(kernel, axis=(0, 1, 2)).swapaxes(3, 4)
    dx = _forward(dy, mirrored, winograd_axes)
    dkernel = _kernel_gradient(x, dy, kernel, winograd_axes)
    return dx, dkernel


_conv.defvjp(_conv_fwd, _conv_bwd)


def conv3d(x, kernel, strides, padding):
    """The conv of `flax_video.conv3d` (NDHWC input, DHWIO kernel, symmetric
    padding) by Winograd F(2, 3); it must be of the form `axes` accepts."""
    if not available():
        raise RuntimeError("Winograd convs are not available here (see the 'flax_video' log)")
    winograd_axes = axes(kernel.shape, tuple(strides), tuple(padding))
    if winograd_axes is None:
        raise ValueError(f"no Winograd F(2, 3) conv for kernel {kernel.shape}, strides {tuple(strides)}, "
                         f"padding {tuple(padding)}: it needs stride 1, 3 taps with padding 1 or 1 tap "
                         f"without, and channels in multiples of 16")
    if x.dtype != kernel.dtype or x.dtype not in onednn.DTYPES:
        raise ValueError(f"Winograd convs take float32 or bfloat16 operands of one dtype, not {x.dtype} and "
                         f"{kernel.dtype}")
    return _conv(x, kernel, winograd_axes)
