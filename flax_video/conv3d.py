"""3D convolution with a lowering chosen per kernel shape and backend.

Every lowering computes the same function as one `lax.conv_general_dilated`
over NDHWC/DHWIO (up to float rounding); the kernel is always stored in its
standard `(kt, kh, kw, in, out)` layout, so checkpoints and the converter never
see which lowering ran. On CPU, float32 and bfloat16 convs run through
oneDNN's kernels where `flax_video.onednn` is available; otherwise, as
XLA:CPU's 2D convolutions are much faster than its 3D ones, most shapes are
rewritten as 2D convolutions or matmuls (`benchmarks/conv_lowering.py`
measures each choice). On GPU cuDNN's 3D convolution is used as is.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from flax_video import onednn as _onednn
from flax_video import winograd as _winograd

Triple = tuple[int, int, int]

def _conv2d(x, kernel, strides, padding, preferred):
    return lax.conv_general_dilated(
        x, kernel, strides, padding,
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
        preferred_element_type=preferred)


def _accumulator_dtype(dtype):
    # Partial sums of low-precision convs are kept in float32, as a native
    # conv accumulates internally, and rounded once at the end.
    return jnp.float32 if jnp.dtype(dtype).itemsize < 4 else None


def native(x, kernel, strides: Triple, padding: Triple):
    return lax.conv_general_dilated(
        x, kernel, strides, [(p, p) for p in padding],
        dimension_numbers=("NDHWC", "DHWIO", "NDHWC"))


def pointwise(x, kernel, strides: Triple, padding: Triple):
    """1x1x1 conv: subsample, then one matmul over channels."""
    st, sh, sw = strides
    return jnp.einsum("nthwc,co->nthwo", x[:, ::st, ::sh, ::sw], kernel[0, 0, 0])


def spatial2d(x, kernel, strides: Triple, padding: Triple):
    """(1, kh, kw) conv: time folded into the batch, one 2D conv."""
    st, sh, sw = strides
    _, ph, pw = padding
    x = x[:, ::st]
    n, t, h, w, c = x.shape
    y = _conv2d(x.reshape(n * t, h, w, c), kernel[0], (sh, sw),
                [(ph, ph), (pw, pw)], None)
    return y.reshape(n, t, *y.shape[1:])


def temporal2d(x, kernel, strides: Triple, padding: Triple):
    """(kt, 1, 1) conv: a 2D conv over (T, H*W) with a (kt, 1) kernel."""
    st, sh, sw = strides
    pt, _, _ = padding
    x = x[:, :, ::sh, ::sw]
    n, t, h, w, c = x.shape
    y = _conv2d(x.reshape(n, t, h * w, c), kernel[:, 0], (st, 1),
                [(pt, pt), (0, 0)], None)
    return y.reshape(n, y.shape[1], h, w, y.shape[-1])


def sum2d(x, kernel, strides: Triple, padding: Triple):
    """(kt, kh, kw) conv as the sum over kt of 2D convs of shifted frames."""
    st, sh, sw = strides
    pt, ph, pw = padding
    kt = kernel.shape[0]
    x = jnp.pad(x, ((0, 0), (pt, pt), (0, 0), (0, 0), (0, 0)))
    n, t, h, w, c = x.shape
    t_out = (t - kt) // st + 1
    acc_dtype = _accumulator_dtype(x.dtype)
    out = None
    for dt in range(kt):
        frames = x[:, dt:dt + st * (t_out - 1) + 1:st].reshape(n * t_out, h, w, c)
        y = _conv2d(frames, kernel[dt], (sh, sw), [(ph, ph), (pw, pw)], acc_dtype)
        out = y if out is None else out + y
    return out.astype(x.dtype).reshape(n, t_out, *out.shape[1:])


def im2col(x, kernel, strides: Triple, padding: Triple):
    """Any conv as one matmul: the kt*kh*kw shifted views of the input are
    concatenated along channels. Its gradients are matmuls too, where XLA:CPU's
    own kernel-gradient convolution is slow on small frames."""
    st, sh, sw = strides
    pt, ph, pw = padding
    kt, kh, kw, _, out = kernel.shape
    x = jnp.pad(x, ((0, 0), (pt, pt), (ph, ph), (pw, pw), (0, 0)))
    _, t, h, w, _ = x.shape
    t_out, h_out, w_out = (t - kt) // st + 1, (h - kh) // sh + 1, (w - kw) // sw + 1
    views = [x[:, dt:dt + st * (t_out - 1) + 1:st, dh:dh + sh * (h_out - 1) + 1:sh, dw:dw + sw * (w_out - 1) + 1:sw]
             for dt in range(kt) for dh in range(kh) for dw in range(kw)]
    patches = jnp.concatenate(views, axis=-1)
    # No float32 preferred type for bf16: its gradient matmuls would then run
    # in float32 (XLA:CPU accumulates bf16 matmuls in float32 anyway).
    return jnp.einsum("nthwk,ko->nthwo", patches, kernel.reshape(-1, out))


def onednn(x, kernel, strides: Triple, padding: Triple):
    """oneDNN's own 3D convolution, as torch runs it on CPU (AMX in bf16 where
    the CPU has it); an XLA custom call, CPU only."""
    return _onednn.conv3d(x, kernel, strides, padding)


def winograd(x, kernel, strides: Triple, padding: Triple):
    """Winograd F(2, 3) for stride-1 convs of 3-tap and 1-tap axes (3x3x3,
    1x3x3, 3x1x1): about 3.4x fewer multiplies than the direct conv in 3D;
    an XLA custom call, CPU only."""
    return _winograd.conv3d(x, kernel, strides, padding)


LOWERINGS = {f.__name__: f for f in (native, pointwise, spatial2d, temporal2d, sum2d, im2col, onednn, winograd)}


def applicable(name: str, kernel_shape, strides: Triple, padding: Triple) -> bool:
    kt, kh, kw = kernel_shape[:3]
    pt, ph, pw = padding
    if name == "pointwise":
        return (kt, kh, kw) == (1, 1, 1) and padding == (0, 0, 0)
    if name == "spatial2d":
        return kt == 1 and pt == 0
    if name == "temporal2d":
        return kh == kw == 1 and ph == pw == 0
    if name == "onednn":
        return _onednn.available()
    if name == "winograd":
        return _winograd.available() and _winograd.axes(kernel_shape, strides, padding) is not None
    return name in ("native", "sum2d", "im2col")


# Where XLA:CPU's convolutions do worst (`benchmarks/conv_lowering.py`), convs
# are computed as one matmul (`im2col`): outputs of at most 2x2 pixels, where
# even its forward pass is up to 40x slower than the matmul (the demo's
# layer3/layer4), and kernels 3D in both time and space (3x3x3, the 3x7x7
# stem) up to 7x7 pixels, where its kernel gradient is slow. For (1, 3, 3)
# and (3, 1, 1) kernels at 4x4 to 7x7 pixels the 2D lowerings win both
# passes (mc3_18's layer4 at 112 px: 76 ms forward against 127).
IM2COL_MAX_PIXELS = 4
IM2COL_MAX_PIXELS_3D = 49


# oneDNN's convs win both passes at every conv shape of the video ResNets at
# 112x112 px, output frames of 7x7 pixels and up (float32 and bfloat16, AMX in
# bf16); on 4x4 pixels and fewer (the demo's 16 px crops past layer1) XLA's
# matmul lowerings train faster (`benchmarks/results/conv_lowering_*`).
ONEDNN_MIN_PIXELS = 49

# Of those, float32 stride-1 convs of 3-tap and 1-tap axes run faster by
# Winograd F(2, 3) where its transformed kernel stays in cache: r3d_18's
# layer1 1.7x and layer2 1.45x in the forward pass (`flax_video.winograd`).
# On AVX2 CPUs (oneDNN without AVX-512) oneDNN's backward passes of
# spatial-only kernels (1x1x1, 1x3x3 on 16+ channels) train slower than XLA's
# 2D lowerings (r2plus1d_18's strided 1x3x3 64->230: 791 ms against 540),
# so those keep XLA's; its 3D kernels still win (3x3x3 stride 2: 268 ms
# against 443).


def _spatial_only(kernel_shape) -> bool:
    return kernel_shape[0] == 1 and kernel_shape[3] >= 16


def _output_pixels(input_shape, kernel_shape, strides: Triple, padding: Triple) -> int:
    _, _, h, w, _ = input_shape
    _, kh, kw = kernel_shape[:3]
    _, sh, sw = strides
    _, ph, pw = padding
    return ((h + 2 * ph - kh) // sh + 1) * ((w + 2 * pw - kw) // sw + 1)


def choose(input_shape, kernel_shape, strides: Triple, padding: Triple, backend: str,
           dtype=jnp.float32) -> str:
    """The fastest lowering measured for this conv shape on `backend`."""
    if backend != "cpu":
        return "native"
    if jnp.dtype(dtype) == jnp.float64:
        # XLA:CPU's float64 convolutions are 4-40x slower than the same conv
        # as one matmul (2x8x32x32 1x3x3 64->144: 528 ms against 125).
        return "pointwise" if applicable("pointwise", kernel_shape, strides, padding) else "im2col"
    if (_onednn.custom_calls(backend)
            and _output_pixels(input_shape, kernel_shape, strides, padding) >= ONEDNN_MIN_PIXELS):
        if _winograd.chosen(kernel_shape, strides, padding, dtype):
            return "winograd"
        if _onednn.enabled(dtype, backend) and not (_onednn.isa() == "avx2" and _spatial_only(kernel_shape)):
            return "onednn"
    return choose_xla(input_shape, kernel_shape, strides, padding)


def choose_xla(input_shape, kernel_shape, strides: Triple, padding: Triple) -> str:
    """The fastest of XLA:CPU's own lowerings for this conv shape."""
    pixels = _output_pixels(input_shape, kernel_shape, strides, padding)
    if applicable("pointwise", kernel_shape, strides, padding):
        return "pointwise"
    if pixels <= IM2COL_MAX_PIXELS:
        return "im2col"
    for name in ("spatial2d", "temporal2d"):
        if applicable(name, kernel_shape, strides, padding):
            return name
    return "im2col" if pixels <= IM2COL_MAX_PIXELS_3D else "sum2d"


def live_taps(size: int, k: int, stride: int, pad: int) -> tuple[int, int, int]:
    """`(lo, hi, pad')`: along one axis, only kernel offsets lo..hi-1 ever meet
    the input; the others multiply padding zeros at every output. The conv
    with just those taps and symmetric padding pad' is the same conv, where
    the output count allows it (else `(0, k, pad)`)."""
    outputs = (size + 2 * pad - k) // stride + 1
    lo, hi = max(0, pad - (outputs - 1) * stride), min(k, size + pad)
    if (size + 2 * (pad - lo) - (hi - lo)) // stride + 1 != outputs:
        return 0, k, pad
    return lo, hi, pad - lo


def drop_dead_taps(input_shape, kernel, strides: Triple, padding: Triple):
    """The kernel without the taps that meet only zero padding, and the
    padding left. On small frames this is much of the work: at 1x1 pixels a
    3x3 conv is its centre tap, and at one frame a 3x1x1 conv is pointwise
    (the demo's layer4, and layer3 with 4-frame clips). The dropped taps'
    gradient is exactly zero either way."""
    (t0, t1, pt), (h0, h1, ph), (w0, w1, pw) = (
        live_taps(*args) for args in zip(input_shape[1:4], kernel.shape[:3], strides, padding))
    return kernel[t0:t1, h0:h1, w0:w1], (pt, ph, pw)


def conv3d(x, kernel, strides: Triple, padding: Triple, lowering: str | None = None):
    """Conv over (N, T, H, W, C) with a (kt, kh, kw, in, out) kernel and
    PyTorch-style symmetric zero padding `(pt, ph, pw)`. Without an explicit
    `lowering`, taps that meet only padding are dropped first and the
    fastest lowering for the backend computes the rest."""
    strides, padding = tuple(strides), tuple(padding)
    if lowering is None:
        kernel, padding = drop_dead_taps(x.shape, kernel, strides, padding)
        lowering = choose(x.shape, kernel.shape, strides, padding, jax.default_backend(), x.dtype)
    if lowering not in LOWERINGS or not applicable(lowering, kernel.shape, strides, padding):
        raise ValueError(f"lowering {lowering!r} does not apply to kernel "
                         f"{kernel.shape[:3]} with padding {padding}")
    return LOWERINGS[lowering](x, kernel, strides, padding)
