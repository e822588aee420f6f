"""oneDNN's convs and BatchNorm (flax_video.onednn) compute what XLA does:
both passes, float32 and bfloat16, under jit, vmap and pmap; they are used
where the CPU has AVX2 or AVX-512 (bfloat16 only with AVX-512), and turned
off they leave the XLA lowerings."""
import logging
import platform
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from flax_video import conv3d, onednn
from tests.train_helpers import devices_env

REPO = Path(__file__).resolve().parents[1]
_FLAGS = next((set(line.split(":", 1)[1].split()) for line in Path("/proc/cpuinfo").read_text().splitlines()
               if line.startswith("flags")), set()) if platform.machine() == "x86_64" else set()
# The vector ISA flax_video's CPU kernels should find here.
ISA = "avx512" if {"avx512f", "avx512bw"} <= _FLAGS else "avx2" if {"avx2", "fma"} <= _FLAGS else None

# (input, kernel, strides, padding): the kinds of conv in the video ResNets, small.
SHAPES = [
    ((2, 6, 18, 18, 3), (3, 7, 7, 3, 16), (1, 2, 2), (1, 3, 3)),  # the stem
    ((2, 6, 10, 10, 16), (3, 3, 3, 16, 16), (1, 1, 1), (1, 1, 1)),
    ((2, 6, 10, 10, 16), (3, 3, 3, 16, 32), (2, 2, 2), (1, 1, 1)),  # a stage's first conv
    ((2, 5, 9, 9, 16), (1, 1, 1, 16, 32), (2, 2, 2), (0, 0, 0)),  # downsample, odd sizes
    ((2, 6, 10, 10, 16), (1, 3, 3, 16, 24), (1, 2, 2), (0, 1, 1)),  # (2+1)D spatial
    ((2, 6, 5, 5, 24), (3, 1, 1, 24, 16), (2, 1, 1), (1, 0, 0)),  # (2+1)D temporal
    ((2, 2, 1, 1, 32), (3, 3, 3, 32, 16), (1, 1, 1), (1, 1, 1)),  # 1x1 pixels, mostly padding
]
requires_onednn = pytest.mark.skipif(not onednn.available(), reason=f"oneDNN: {onednn.status()[1]}")


def reference(x, kernel, strides, padding):
    return lax.conv_general_dilated(x, kernel, strides, [(p, p) for p in padding],
                                    dimension_numbers=("NDHWC", "DHWIO", "NDHWC"),
                                    precision=lax.Precision.HIGHEST)


def operands(x_shape, kernel_shape, seed=0):
    kx, kk = jax.random.split(jax.random.key(seed))
    return jax.random.normal(kx, x_shape), jax.random.normal(kk, kernel_shape) / np.sqrt(np.prod(kernel_shape[:4]))


def loss_and_grads(conv, x, kernel, strides, padding, cotangent):
    y, vjp = jax.vjp(lambda x, k: conv(x, k, strides, padding), x, kernel)
    return (y, *vjp(cotangent.astype(y.dtype)))


def relative_error(got, want):
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    return np.abs(got - want).max() / np.abs(want).max()


def test_declared_abi_matches_onednn_headers(tmp_path):
    """dnnl_abi.h's values and structs are oneDNN 3.x's (torch ships its headers)."""
    import torch
    include = Path(torch.__file__).parent / "include"
    assert (include / "oneapi/dnnl/dnnl.h").exists()
    names = {"success": "dnnl_success", "bf16": "dnnl_bf16", "f32": "dnnl_f32", "cpu": "dnnl_cpu",
             "stream_default_flags": "dnnl_stream_default_flags", "format_tag_any": "dnnl_format_tag_any",
             "forward_training": "dnnl_forward_training", "backward": "dnnl_backward",
             "convolution_direct": "dnnl_convolution_direct", "scratchpad_mode_user": "dnnl_scratchpad_mode_user",
             "use_scale": "dnnl_use_scale", "use_shift": "dnnl_use_shift"}
    names.update({f"query_{q}": f"dnnl_query_{q}" for q in (
        "impl_info_str", "src_md", "diff_src_md", "weights_md", "diff_weights_md", "dst_md", "diff_dst_md",
        "scratchpad_md")})
    names.update({f"arg_{a}": f"DNNL_ARG_{a.upper()}" for a in (
        "src", "dst", "weights", "scratchpad", "diff_src", "diff_dst", "diff_weights", "from", "to", "mean",
        "variance", "scale", "shift", "diff_scale", "diff_shift")})
    checks = "\n".join(f"static_assert(dnnl_abi::{ours} == int({theirs}), \"{ours}\");" for ours, theirs in names.items())
    source = tmp_path / "abi.cc"
    source.write_text(textwrap.dedent("""\
        #include <oneapi/dnnl/dnnl.h>
        #include <type_traits>
        #include "dnnl_abi.h"
        static_assert(dnnl_abi::kMaxDims == DNNL_MAX_NDIMS);
        static_assert(sizeof(dnnl_abi::exec_arg_t) == sizeof(dnnl_exec_arg_t));
        static_assert(offsetof(dnnl_abi::exec_arg_t, memory) == offsetof(dnnl_exec_arg_t, memory));
        static_assert(sizeof(dnnl_abi::version_t) == sizeof(dnnl_version_t));
        static_assert(offsetof(dnnl_abi::version_t, hash) == offsetof(dnnl_version_t, hash));
        """) + checks + "\n")
    subprocess.run(["g++", "-std=c++17", "-fsyntax-only", f"-I{include}", f"-I{REPO / 'flax_video/csrc'}",
                    str(source)], check=True)


def test_used_where_the_cpu_has_avx2_or_avx512():
    ok, what = onednn.status()
    assert ok == (ISA is not None), what
    if not ok:
        return
    assert what.startswith("oneDNN 3.") and onednn.isa() == ISA
    x, kernel = operands(*SHAPES[1][:2])
    bf16 = conv3d.choose(x.shape, kernel.shape, (1, 1, 1), (1, 1, 1), "cpu", jnp.bfloat16)
    # A strided (2+1)D spatial conv of r2plus1d_18's layer2.
    spatial = ((4, 16, 56, 56, 64), (1, 3, 3, 64, 230), (1, 2, 2), (0, 1, 1))
    strided_3d = ((4, 16, 56, 56, 64), (3, 3, 3, 64, 128), (2, 2, 2), (1, 1, 1))
    assert conv3d.choose(*strided_3d, "cpu") == "onednn"
    if ISA == "avx512":
        # float32 3x3x3 takes Winograd's (test_winograd); bf16 oneDNN's.
        assert onednn.dtypes() == onednn.DTYPES and bf16 == "onednn"
        assert conv3d.choose(*spatial, "cpu") == "onednn"
    else:
        # No oneDNN bf16 conv on AVX2: bf16 takes Winograd's, which computes in float32;
        # oneDNN's spatial-only backward passes train slower than XLA's 2D convs there.
        assert onednn.dtypes() == (jnp.float32,) and bf16 == "winograd"
        assert conv3d.choose(*spatial, "cpu") == "spatial2d"


@requires_onednn
@pytest.mark.parametrize("x_shape, kernel_shape, strides, padding", SHAPES)
def test_float32_matches_xla_in_both_passes(x_shape, kernel_shape, strides, padding):
    x, kernel = operands(x_shape, kernel_shape)
    y = reference(x, kernel, strides, padding)
    cotangent = jax.random.normal(jax.random.key(1), y.shape)
    want = loss_and_grads(reference, x, kernel, strides, padding, cotangent)
    got = jax.jit(loss_and_grads, static_argnums=(0, 3, 4))(onednn.conv3d, x, kernel, strides, padding, cotangent)
    for name, g, w in zip(("y", "dx", "dkernel"), got, want):
        assert g.shape == w.shape and g.dtype == jnp.float32
        assert relative_error(g, w) < 2e-6, name


@requires_onednn
@pytest.mark.parametrize("x_shape, kernel_shape, strides, padding", SHAPES[:4])
def test_bfloat16_rounds_once(x_shape, kernel_shape, strides, padding):
    """bf16 operands, float32 accumulation, one rounding of the result: within
    one bf16 ulp (2**-8, relative to the largest value) of the float32 conv of
    the same bf16 values, and no further from it than XLA's own bf16 conv."""
    x, kernel = (a.astype(jnp.bfloat16) for a in operands(x_shape, kernel_shape))
    if ISA != "avx512":  # oneDNN 3.2 has no bf16 conv for AVX2: a clear refusal, not its internal error
        with pytest.raises(ValueError, match="no bfloat16 kernels on this CPU"):
            onednn.conv3d(x, kernel, strides, padding)
        return
    y = reference(x.astype(jnp.float32), kernel.astype(jnp.float32), strides, padding)
    cotangent = jax.random.normal(jax.random.key(1), y.shape).astype(jnp.bfloat16)
    want = loss_and_grads(reference, x.astype(jnp.float32), kernel.astype(jnp.float32), strides, padding,
                          cotangent.astype(jnp.float32))
    got = jax.jit(loss_and_grads, static_argnums=(0, 3, 4))(onednn.conv3d, x, kernel, strides, padding, cotangent)
    xla = jax.jit(loss_and_grads, static_argnums=(0, 3, 4))(reference, x, kernel, strides, padding, cotangent)
    for name, g, w, theirs in zip(("y", "dx", "dkernel"), got, want, xla):
        assert g.dtype == jnp.bfloat16
        assert relative_error(g, w) <= 2 ** -8, name
        assert relative_error(g, w) <= 2 * max(relative_error(theirs, w), 2 ** -9), name


@requires_onednn
def test_vmap_over_a_batch_and_over_kernels():
    x_shape, kernel_shape, strides, padding = SHAPES[2]
    xs = jnp.stack([operands(x_shape, kernel_shape, seed)[0] for seed in range(3)])
    kernels = jnp.stack([operands(x_shape, kernel_shape, seed)[1] for seed in range(3)])
    conv = lambda x, k: onednn.conv3d(x, k, strides, padding)
    ref = lambda x, k: reference(x, k, strides, padding)
    # One kernel for the whole batch (folded into one conv), then one kernel per element.
    assert relative_error(jax.vmap(conv, (0, None))(xs, kernels[0]), jax.vmap(ref, (0, None))(xs, kernels[0])) < 2e-6
    assert relative_error(jax.vmap(conv)(xs, kernels), jax.vmap(ref)(xs, kernels)) < 2e-6
    # Per-example kernel gradients: the kernel-gradient conv once per element.
    per_example = lambda f: jax.vmap(jax.grad(lambda k, x: jnp.sum(f(x[None], k) ** 2)), (None, 0))
    assert relative_error(per_example(conv)(kernels[0], xs[:, 0]), per_example(ref)(kernels[0], xs[:, 0])) < 2e-6


@requires_onednn
def test_deterministic():
    x_shape, kernel_shape, strides, padding = SHAPES[1]
    x, kernel = operands(x_shape, kernel_shape)
    cotangent = jax.random.normal(jax.random.key(1), x_shape[:4] + kernel_shape[4:])
    run = jax.jit(loss_and_grads, static_argnums=(0, 3, 4))
    first, second = (run(onednn.conv3d, x, kernel, strides, padding, cotangent) for _ in range(2))
    for a, b in zip(first, second):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@requires_onednn
def test_refuses_other_dtypes_and_xla_keeps_float16_and_small_frames():
    x, kernel = (a.astype(jnp.float16) for a in operands(*SHAPES[1][:2]))
    with pytest.raises(ValueError, match="float32 or bfloat16"):
        onednn.conv3d(x, kernel, (1, 1, 1), (1, 1, 1))
    assert conv3d.choose(x.shape, kernel.shape, (1, 1, 1), (1, 1, 1), "cpu", jnp.float16) != "onednn"
    with onednn.portable():
        assert conv3d.choose(x.shape, kernel.shape, (1, 1, 1), (1, 1, 1), "cpu", jnp.float32) != "onednn"
    # Frames of a few pixels (the demo's 16 px crops past layer1) keep XLA's matmul lowerings.
    small = ((16, 2, 2, 2, 256), (1, 3, 3, 256, 460), (1, 1, 1), (0, 1, 1))
    assert conv3d.choose(*small, "cpu", jnp.float32) == conv3d.choose_xla(*small) == "im2col"


def reference_batch_norm(x, scale, shift, epsilon):
    """Train-mode BatchNorm in float32 by the formula: y, mean, biased variance."""
    x = x.astype(jnp.float32)
    axes = tuple(range(x.ndim - 1))
    mean = x.mean(axes)
    var = jnp.square(x - mean).mean(axes)
    return (x - mean) * lax.rsqrt(var + epsilon) * scale + shift, mean, var


@requires_onednn
@pytest.mark.parametrize("dtype, tolerance", [(jnp.float32, 2e-5), (jnp.bfloat16, 2 ** -7)])
def test_batch_norm_matches_the_formula_with_its_gradients(dtype, tolerance):
    kx, ks, kb, kc = jax.random.split(jax.random.key(0), 4)
    x = (jax.random.normal(kx, (2, 4, 6, 6, 32)) * 3 + 1.5).astype(dtype)
    scale, shift = 1 + 0.1 * jax.random.normal(ks, (32,)), 0.1 * jax.random.normal(kb, (32,))
    dy, dmean, dvar = jax.random.normal(kc, x.shape).astype(dtype), jnp.linspace(-1, 1, 32), jnp.linspace(2, 0, 32)
    if dtype not in onednn.dtypes():  # bf16 on AVX2
        with pytest.raises(ValueError, match="no bfloat16 kernels on this CPU"):
            onednn.batch_norm(x, scale, shift, 1e-5)
        return
    got, got_vjp = jax.vjp(lambda *a: onednn.batch_norm(*a, 1e-5), x, scale, shift)
    want, want_vjp = jax.vjp(lambda *a: reference_batch_norm(*a, 1e-5), x.astype(jnp.float32), scale, shift)
    assert got[0].dtype == dtype and got[1].dtype == got[2].dtype == jnp.float32
    for name, g, w in zip(("y", "mean", "var"), got, want):
        assert relative_error(g, w) < tolerance, name
    # Training: the statistics only feed the running averages (zero cotangents);
    # and with cotangents for them too.
    for cotangents in ((dy, jnp.zeros(32), jnp.zeros(32)), (dy, dmean, dvar)):
        for name, g, w in zip(("dx", "dscale", "dshift"), got_vjp(cotangents),
                              want_vjp(tuple(c.astype(jnp.float32) for c in cotangents))):
            assert relative_error(g, w) < tolerance, name
    # Under jit through the model's layer, which uses oneDNN on AVX-512 (it has
    # a JIT kernel for 32 channels) and XLA's on AVX2 (faster there).
    from flax_video.layers import BatchNorm
    count = x.size // 32
    assert onednn.batch_norm_wins(dtype, count, 32, 1e-5) == (ISA == "avx512")
    layer = BatchNorm(use_running_average=False, dtype=dtype)
    variables = {**layer.init(jax.random.key(1), x), "params": {"scale": scale, "bias": shift}}
    apply = jax.jit(lambda v, x: layer.apply(v, x, mutable=["batch_stats"]))
    assert ("flax_video_onednn_batch_norm" in apply.lower(variables, x).as_text()) == (ISA == "avx512")
    y, stats = apply(variables, x)
    assert relative_error(y, want[0]) < tolerance
    np.testing.assert_allclose(stats["batch_stats"]["var"], 0.9 + 0.1 * want[2] * count / (count - 1), rtol=1e-5)


PMAP_AND_SHARDING = """
import jax, jax.numpy as jnp, numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from flax_video import onednn
from tests.test_onednn import SHAPES, operands, reference, relative_error
assert jax.device_count() == 2 and onednn.available()
x_shape, kernel_shape, strides, padding = SHAPES[1]
xs = jnp.stack([operands(x_shape, kernel_shape, seed)[0] for seed in range(2)])
kernel = operands(x_shape, kernel_shape)[1]
loss = lambda conv: (lambda k, x: jnp.sum(conv(x, k, strides, padding) ** 2))
want = [jax.grad(loss(reference))(kernel, x) for x in xs]
got = jax.pmap(jax.grad(loss(onednn.conv3d)), in_axes=(None, 0))(kernel, xs)
assert max(relative_error(g, w) for g, w in zip(got, want)) < 2e-6
mesh = Mesh(np.array(jax.devices()), ("batch",))
batch = jax.device_put(xs.reshape(-1, *x_shape[1:]), NamedSharding(mesh, P("batch")))
y = jax.jit(lambda x: onednn.conv3d(x, kernel, strides, padding))(batch)
assert relative_error(y, reference(batch, kernel, strides, padding)) < 2e-6
print("ok")
"""


@requires_onednn
def test_pmap_and_a_sharded_batch():
    out = subprocess.run([sys.executable, "-c", PMAP_AND_SHARDING], cwd=REPO, env=devices_env(2),
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-3000:]


def test_turned_off_by_the_environment_logs_the_xla_path():
    code = ("import logging; logging.basicConfig(level=logging.INFO, format='%(message)s')\n"
            "import jax.numpy as jnp, flax_video\n"
            "from flax_video import conv3d, onednn\n"
            "y = conv3d.conv3d(jnp.ones((1, 2, 4, 4, 2)), jnp.ones((3, 3, 3, 2, 2)), (1, 1, 1), (1, 1, 1))\n"
            "assert not onednn.available() and float(y.max()) == 36.0\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120,
                         env={**devices_env(1), "FLAX_VIDEO_ONEDNN": "0"})
    assert out.returncode == 0, out.stderr[-3000:]
    lines = [line for line in out.stderr.splitlines() if line.startswith("flax_video: 3D convolutions")]
    assert lines == ["flax_video: 3D convolutions on CPU run through XLA (oneDNN not used: FLAX_VIDEO_ONEDNN=0)"]
