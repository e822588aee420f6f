"""3D convolutions and train-mode BatchNorm on CPU through oneDNN, the library
torch's CPU convs run on.

XLA:CPU reaches neither oneDNN's blocked direct convolutions nor AMX: no XLA
flag brought r3d_18's bf16 inference near torch's (`benchmarks/results/`).
`flax_video._onednn` (C++, built by `pip install`) calls oneDNN's forward,
input-gradient and kernel-gradient convolutions as XLA FFI custom calls, on
the NDHWC / DHWIO arrays JAX already holds; `conv3d` below ties them together
with a custom VJP, so `jit`, `grad`, `vmap` and `pmap` work as for any
JAX function. `batch_norm` does the same for BatchNorm's statistics and
gradients, which XLA:CPU computes in several passes (60 ms for one bf16
BatchNorm of r3d_18's layer1, forward and backward; oneDNN: 5 ms). The library is the `onednn-cpu-gomp` wheel's `libdnnl.so.3`,
opened at run time.

It is used on x86-64 CPUs with AVX-512 (float32 and bfloat16 convs,
BatchNorm) or AVX2 and FMA (float32 convs only: oneDNN 3.2 has no bfloat16
conv there, and XLA's BatchNorm trains faster), where it was measured to
win, when the extension and the library load; `FLAX_VIDEO_ONEDNN=0` turns
it off. Which path runs is logged once, on the
"flax_video" logger.
"""
from __future__ import annotations

import contextlib
import contextvars
import functools
import importlib.metadata
import logging
import os
import platform
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

ENV_VAR = "FLAX_VIDEO_ONEDNN"
LIBRARY_PACKAGE = "onednn-cpu-gomp"
DTYPES = (jnp.float32, jnp.bfloat16)  # what the FFI handlers take

log = logging.getLogger("flax_video")


def _library_path() -> Path | None:
    try:
        files = importlib.metadata.distribution(LIBRARY_PACKAGE).files or []
    except importlib.metadata.PackageNotFoundError:
        return None
    dist = importlib.metadata.distribution(LIBRARY_PACKAGE)
    return next((Path(dist.locate_file(f)) for f in files if f.name == "libdnnl.so.3"), None)


@functools.cache
def isa() -> str | None:
    """The vector ISA flax_video's CPU kernels use here: "avx512" (F and BW),
    "avx2" (with FMA) or None (neither, or the extension was not built). The
    extension's answer, on which its Winograd kernels also dispatch."""
    try:
        from flax_video import _onednn
    except ImportError:
        return None
    found = _onednn.cpu_isa()
    return None if found == "none" else found


def dtypes() -> tuple:
    """The dtypes whose convs oneDNN runs on this CPU: bfloat16 needs AVX-512
    (oneDNN 3.2 has no bfloat16 conv for AVX2: it refuses to create one)."""
    return DTYPES if isa() == "avx512" else (jnp.float32,)


@functools.cache
def status() -> tuple[bool, str]:
    """(whether convs can run through oneDNN, what runs or why not). Opens the
    library and registers the FFI targets on first call."""
    if os.environ.get(ENV_VAR, "1") == "0":
        return False, f"{ENV_VAR}=0"
    if platform.system() != "Linux" or platform.machine() != "x86_64":
        return False, "oneDNN is used only on x86-64 Linux CPUs, where it was measured"
    try:
        from flax_video import _onednn
    except ImportError as e:
        return False, f"the extension flax_video._onednn was not built ({e}); reinstall with a C++ compiler"
    if isa() is None:
        return False, "oneDNN is used only on CPUs with AVX2 and FMA or AVX-512, where it was measured"
    path = _library_path()
    if path is None:
        return False, f"libdnnl.so.3 not found: pip install {LIBRARY_PACKAGE}"
    # oneDNN's OpenMP threads spin after each call by default, taking the cores
    # XLA's threads need for the ops between (the demo's r2plus1d step on 2
    # AVX2 cores: 0.53 s spinning, 0.42 s passive, as without oneDNN). Read
    # when libgomp loads, which is next; a value the user set is kept.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    try:
        version = _onednn.load(str(path))
    except OSError as e:
        return False, str(e)
    for name, handler in _onednn.targets().items():
        jax.ffi.register_ffi_target(name, handler, platform="cpu")
    return True, version


@functools.cache
def available() -> bool:
    """True where convs run through oneDNN; logs which path runs, once."""
    ok, what = status()
    if ok:
        log.info("flax_video: %s 3D convolutions on CPU run through %s (%s)",
                 " and ".join(jnp.dtype(d).name for d in dtypes()), what, isa())
    else:
        log.info("flax_video: 3D convolutions on CPU run through XLA (oneDNN not used: %s)", what)
    return ok


_portable = contextvars.ContextVar("flax_video_portable", default=False)


@contextlib.contextmanager
def portable():
    """Trace without flax_video's custom calls (for `jax.export`, whose
    artifacts must run where this extension is not registered)."""
    token = _portable.set(True)
    try:
        yield
    finally:
        _portable.reset(token)


def enabled(dtype, backend: str | None = None) -> bool:
    """Whether an op of `dtype` traced now, for `backend` (default: JAX's),
    runs through oneDNN."""
    return jnp.dtype(dtype) in dtypes() and custom_calls(backend)


def custom_calls(backend: str | None = None) -> bool:
    """Whether ops traced now, for `backend` (default: JAX's), may use
    flax_video's custom calls (oneDNN's and the Winograd kernels)."""
    backend = backend or jax.default_backend()
    return backend == "cpu" and not _portable.get() and available()


def plans() -> list[str]:
    """The convs planned so far, each with the oneDNN implementation it runs
    (`brgconv:avx512_core_amx` where AMX serves it)."""
    from flax_video import _onednn
    return _onednn.plans() if status()[0] else []


def _like(x):
    return jax.ShapeDtypeStruct(x.shape, x.dtype)


def _output_shape(x_shape, kernel_shape, strides, padding):
    spatial = [(size + 2 * p - k) // s + 1
               for size, k, s, p in zip(x_shape[1:4], kernel_shape[:3], strides, padding)]
    return (x_shape[0], *spatial, kernel_shape[4])


def _call(target: str, like, a, b, strides, padding):
    return jax.ffi.ffi_call(f"flax_video_onednn_conv_{target}", _like(like),
                            vmap_method="expand_dims")(
        a, b, strides=np.asarray(strides, np.int64), padding=np.asarray(padding, np.int64))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _conv(x, kernel, strides, padding):
    y = jax.ShapeDtypeStruct(_output_shape(x.shape, kernel.shape, strides, padding), x.dtype)
    return _call("forward", y, x, kernel, strides, padding)


def _conv_fwd(x, kernel, strides, padding):
    return _conv(x, kernel, strides, padding), (x, kernel)


def _conv_bwd(strides, padding, residuals, dy):
    x, kernel = residuals
    dx = _call("backward_data", x, dy, kernel, strides, padding)
    dkernel = _call("backward_weights", kernel, x, dy, strides, padding)
    return dx, dkernel


_conv.defvjp(_conv_fwd, _conv_bwd)


def _check_cpu_takes(dtype):
    if jnp.dtype(dtype) not in dtypes():
        raise ValueError(f"oneDNN has no {jnp.dtype(dtype).name} kernels on this CPU ({isa()}: they need AVX-512)")


def conv3d(x, kernel, strides, padding):
    """The conv of `flax_video.conv3d` (NDHWC input, DHWIO kernel, symmetric
    padding) through oneDNN; x and kernel of one dtype, float32 or bfloat16."""
    if not available():
        raise RuntimeError(f"oneDNN convs are not available: {status()[1]}")
    if x.dtype != kernel.dtype or x.dtype not in DTYPES:
        raise ValueError(f"oneDNN convs take float32 or bfloat16 operands of one dtype, not {x.dtype} and "
                         f"{kernel.dtype}")
    _check_cpu_takes(x.dtype)
    return _conv(x, kernel, tuple(int(s) for s in strides), tuple(int(p) for p in padding))


def _norm_forward(x, scale, shift, epsilon):
    stats = jax.ShapeDtypeStruct(scale.shape, jnp.float32)
    return jax.ffi.ffi_call("flax_video_onednn_batch_norm_forward", (_like(x), stats, stats),
                            vmap_method="sequential")(x, scale, shift, epsilon=np.float32(epsilon))


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _batch_norm(x, scale, shift, epsilon):
    return _norm_forward(x, scale, shift, epsilon)


def _batch_norm_fwd(x, scale, shift, epsilon):
    x, scale, shift = x.value, scale.value, shift.value  # symbolic_zeros: CustomVJPPrimal
    y, mean, var = _norm_forward(x, scale, shift, epsilon)
    return (y, mean, var), (x, scale, mean, var)


def _batch_norm_bwd(epsilon, residuals, cotangents):
    x, scale, mean, var = residuals
    dy, dmean, dvar = cotangents
    zero = lambda t: isinstance(t, jax.custom_derivatives.SymbolicZero)
    if zero(dy):
        dy = jnp.zeros_like(x)
    stats = jax.ShapeDtypeStruct(scale.shape, jnp.float32)
    dx, dscale, dshift = jax.ffi.ffi_call("flax_video_onednn_batch_norm_backward", (_like(x), stats, stats),
                                          vmap_method="sequential")(
        x, dy.astype(x.dtype), scale, mean, var, epsilon=np.float32(epsilon))
    if not (zero(dmean) and zero(dvar)):
        # The statistics' own cotangents (zero when, as in training, they only
        # feed the running averages): d mean/dx = 1/n, d var/dx = 2 (x - mean)/n.
        dmean = jnp.zeros_like(mean) if zero(dmean) else dmean
        dvar = jnp.zeros_like(var) if zero(dvar) else dvar
        count = x.size // x.shape[-1]
        dx = (dx.astype(jnp.float32) + (dmean + 2 * (x.astype(jnp.float32) - mean) * dvar) / count).astype(x.dtype)
    return dx, dscale, dshift


_batch_norm.defvjp(_batch_norm_fwd, _batch_norm_bwd, symbolic_zeros=True)


@functools.cache
def batch_norm_wins(dtype, rows: int, channels: int, epsilon: float) -> bool:
    """Whether train-mode BatchNorm runs faster in oneDNN than in XLA: on
    AVX-512 CPUs, where oneDNN has a JIT kernel for it in both passes (its
    generic fallback `nspc_bnorm:any`, where channels are not a multiple of
    the vector width: (2+1)D's 45, 230, 460, 921, is slower than XLA's). On
    AVX2 XLA's, fused with its neighbours, trains faster in whole steps
    (2-core Zen 3: the demo's r2plus1d_18 step 319 ms against 382, at 112 px
    7.64 s against 8.45)."""
    if isa() != "avx512":
        return False
    from flax_video import _onednn
    implementations = _onednn.batch_norm_implementations(jnp.dtype(dtype).name, rows, channels, epsilon)
    return all("jit" in name for name in implementations)


def batch_norm(x, scale, shift, epsilon: float):
    """Train-mode BatchNorm over the last axis: `(y, mean, biased variance)`,
    the statistics over all other axes, computed in float32 from x (float32 or
    bfloat16); y = (x - mean) / sqrt(var + epsilon) * scale + shift in x's dtype."""
    if not available():
        raise RuntimeError(f"oneDNN is not available: {status()[1]}")
    if x.dtype not in DTYPES:
        raise ValueError(f"oneDNN's batch norm takes float32 or bfloat16, not {x.dtype}")
    _check_cpu_takes(x.dtype)
    return _batch_norm(x, scale.astype(jnp.float32), shift.astype(jnp.float32), float(epsilon))
