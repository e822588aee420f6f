"""Winograd F(2, 3) convs (flax_video.winograd) compute the direct conv: both
passes, odd sizes, float32 and bfloat16, under jit, vmap and pmap; they are
chosen for the float32 convs measured to win, and turned off they leave
oneDNN's."""
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flax_video import conv3d, onednn, winograd
from tests.test_onednn import ISA, REPO, loss_and_grads, operands, reference, relative_error
from tests.train_helpers import devices_env

# (input, kernel, padding): each kind of conv it takes, with sizes that leave
# partial tiles at the far edges.
SHAPES = [
    ((2, 5, 9, 11, 16), (3, 3, 3, 16, 32), (1, 1, 1)),
    ((2, 4, 7, 6, 32), (1, 3, 3, 32, 16), (0, 1, 1)),  # (2+1)D spatial
    ((1, 7, 5, 3, 48), (3, 1, 1, 48, 16), (1, 0, 0)),  # (2+1)D temporal
    ((2, 1, 1, 1, 16), (3, 3, 3, 16, 16), (1, 1, 1)),  # one voxel: all but the centre tap meet padding
]
STRIDE = (1, 1, 1)
requires_winograd = pytest.mark.skipif(not winograd.available(), reason="Winograd convs not available")


def test_available_where_the_cpu_has_avx2_or_avx512():
    assert winograd.available() == (ISA is not None)
    assert onednn.isa() == ISA


@requires_winograd
@pytest.mark.parametrize("x_shape, kernel_shape, padding", SHAPES)
def test_float32_matches_the_direct_conv_in_both_passes(x_shape, kernel_shape, padding):
    x, kernel = operands(x_shape, kernel_shape)
    y = reference(x, kernel, STRIDE, padding)
    cotangent = jax.random.normal(jax.random.key(1), y.shape)
    want = loss_and_grads(reference, x, kernel, STRIDE, padding, cotangent)
    got = jax.jit(loss_and_grads, static_argnums=(0, 3, 4))(winograd.conv3d, x, kernel, STRIDE, padding, cotangent)
    for name, g, w in zip(("y", "dx", "dkernel"), got, want):
        assert g.shape == w.shape and g.dtype == jnp.float32
        assert relative_error(g, w) < 2e-6, name


@requires_winograd
@pytest.mark.parametrize("x_shape, kernel_shape, padding", SHAPES[:2])
def test_bfloat16_rounds_once(x_shape, kernel_shape, padding):
    """bf16 in and out, float32 inside: within one bf16 ulp (2**-8, relative to
    the largest value) of the float32 conv of the same bf16 values."""
    x, kernel = (a.astype(jnp.bfloat16) for a in operands(x_shape, kernel_shape))
    y = reference(x.astype(jnp.float32), kernel.astype(jnp.float32), STRIDE, padding)
    cotangent = jax.random.normal(jax.random.key(1), y.shape).astype(jnp.bfloat16)
    want = loss_and_grads(reference, x.astype(jnp.float32), kernel.astype(jnp.float32), STRIDE, padding,
                          cotangent.astype(jnp.float32))
    got = jax.jit(loss_and_grads, static_argnums=(0, 3, 4))(winograd.conv3d, x, kernel, STRIDE, padding, cotangent)
    for name, g, w in zip(("y", "dx", "dkernel"), got, want):
        assert g.dtype == jnp.bfloat16
        assert relative_error(g, w) <= 2 ** -8, name


@requires_winograd
def test_vmap_over_a_batch_and_over_kernels_and_deterministic():
    x_shape, kernel_shape, padding = SHAPES[0]
    xs = jnp.stack([operands(x_shape, kernel_shape, seed)[0] for seed in range(3)])
    kernels = jnp.stack([operands(x_shape, kernel_shape, seed)[1] for seed in range(3)])
    conv = lambda x, k: winograd.conv3d(x, k, STRIDE, padding)
    ref = lambda x, k: reference(x, k, STRIDE, padding)
    assert relative_error(jax.vmap(conv, (0, None))(xs, kernels[0]), jax.vmap(ref, (0, None))(xs, kernels[0])) < 2e-6
    assert relative_error(jax.vmap(conv)(xs, kernels), jax.vmap(ref)(xs, kernels)) < 2e-6
    assert relative_error(jax.vmap(conv, (None, 0))(xs[0], kernels), jax.vmap(ref, (None, 0))(xs[0], kernels)) < 2e-6
    grads = jax.jit(jax.grad(lambda x, k: jnp.sum(conv(x, k) ** 2), (0, 1)))
    first, second = grads(xs[0], kernels[0]), grads(xs[0], kernels[0])
    for a, b in zip(first, second):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_takes_only_stride_1_convs_of_3_and_1_taps_in_channels_of_16():
    assert winograd.axes((3, 3, 3, 64, 64), (1, 1, 1), (1, 1, 1)) == (1, 1, 1)
    assert winograd.axes((1, 3, 3, 64, 144), (1, 1, 1), (0, 1, 1)) == (0, 1, 1)
    assert winograd.axes((3, 1, 1, 144, 64), (1, 1, 1), (1, 0, 0)) == (1, 0, 0)
    assert winograd.axes((3, 3, 3, 64, 128), (2, 2, 2), (1, 1, 1)) is None  # strided
    assert winograd.axes((3, 3, 3, 64, 64), (1, 1, 1), (0, 1, 1)) is None  # no temporal padding
    assert winograd.axes((1, 1, 1, 64, 64), (1, 1, 1), (0, 0, 0)) is None  # pointwise
    assert winograd.axes((3, 7, 7, 3, 64), (1, 2, 2), (1, 3, 3)) is None  # the stem
    assert winograd.axes((1, 3, 3, 128, 230), (1, 1, 1), (0, 1, 1)) is None  # channels
    if winograd.available():
        with pytest.raises(ValueError, match="stride 1, 3 taps"):
            winograd.conv3d(jnp.zeros((1, 4, 4, 4, 16)), jnp.zeros((3, 3, 3, 16, 16)), (2, 2, 2), (1, 1, 1))


@requires_winograd
def test_chosen_for_float32_convs_whose_kernel_stays_in_cache():
    layer1 = ((4, 16, 56, 56, 64), (3, 3, 3, 64, 64), (1, 1, 1), (1, 1, 1))
    layer3 = ((4, 4, 14, 14, 256), (3, 3, 3, 256, 256), (1, 1, 1), (1, 1, 1))
    assert conv3d.choose(*layer1, "cpu", jnp.float32) == "winograd"
    # bf16: oneDNN's direct conv is faster where it has one (AVX-512).
    assert conv3d.choose(*layer1, "cpu", jnp.bfloat16) == ("onednn" if ISA == "avx512" else "winograd")
    assert conv3d.choose(*layer3, "cpu", jnp.float32) == "onednn"
    assert conv3d.choose(*layer1, "gpu", jnp.float32) == "native"


PMAP = """
import jax, jax.numpy as jnp
from flax_video import winograd
from tests.test_onednn import operands, reference, relative_error
from tests.test_winograd import SHAPES, STRIDE
x_shape, kernel_shape, padding = SHAPES[0]
xs = jnp.stack([operands(x_shape, kernel_shape, seed)[0] for seed in range(2)])
kernel = operands(x_shape, kernel_shape)[1]
loss = lambda conv: (lambda k, x: jnp.sum(conv(x, k, STRIDE, padding) ** 2))
want = [jax.grad(loss(reference))(kernel, x) for x in xs]
got = jax.pmap(jax.grad(loss(winograd.conv3d)), in_axes=(None, 0))(kernel, xs)
assert max(relative_error(g, w) for g, w in zip(got, want)) < 2e-6
print("ok")
"""


@requires_winograd
def test_pmap():
    out = subprocess.run([sys.executable, "-c", PMAP], cwd=REPO, env=devices_env(2),
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-3000:]


def test_turned_off_by_the_environment_leaves_onednn():
    code = ("import logging; logging.basicConfig(level=logging.INFO, format='%(message)s')\n"
            "import jax.numpy as jnp\n"
            "from flax_video import conv3d, onednn, winograd\n"
            "shape = ((4, 16, 56, 56, 64), (3, 3, 3, 64, 64), (1, 1, 1), (1, 1, 1))\n"
            "want = 'onednn' if onednn.available() else conv3d.choose_xla(*shape)\n"
            "assert not winograd.available() and conv3d.choose(*shape, 'cpu') == want\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120,
                         env={**devices_env(1), "FLAX_VIDEO_WINOGRAD": "0"})
    assert out.returncode == 0, out.stderr[-3000:]
    assert "flax_video: Winograd convs off (FLAX_VIDEO_WINOGRAD=0)" in out.stderr.splitlines()
