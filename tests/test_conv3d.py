"""Every conv lowering computes the native 3D convolution."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flax_video import conv3d

CASES = [  # kernel (kt, kh, kw), strides, padding, input (N, T, H, W, C)
    ((1, 1, 1), (2, 2, 2), (0, 0, 0), (2, 5, 9, 11, 8)),
    ((1, 1, 1), (1, 2, 2), (0, 0, 0), (2, 5, 9, 11, 8)),
    ((1, 3, 3), (1, 2, 2), (0, 1, 1), (2, 5, 9, 11, 8)),
    ((1, 7, 7), (1, 2, 2), (0, 3, 3), (2, 3, 17, 15, 3)),
    ((3, 1, 1), (2, 1, 1), (1, 0, 0), (2, 5, 9, 11, 8)),
    ((3, 1, 1), (1, 1, 1), (1, 0, 0), (2, 1, 9, 11, 8)),
    ((3, 3, 3), (2, 2, 2), (1, 1, 1), (2, 5, 9, 11, 8)),
    ((3, 3, 3), (1, 1, 1), (1, 1, 1), (1, 4, 6, 6, 16)),
    ((3, 7, 7), (1, 2, 2), (1, 3, 3), (2, 3, 17, 15, 3)),
]


@pytest.mark.parametrize("kernel_size,strides,padding,shape", CASES)
def test_each_applicable_lowering_matches_native(kernel_size, strides, padding, shape):
    kx, kk = jax.random.split(jax.random.key(0))
    x = jax.random.normal(kx, shape)
    kernel = jax.random.normal(kk, (*kernel_size, shape[-1], 6))
    expected = conv3d.conv3d(x, kernel, strides, padding, "native")
    tried = 0
    for name in conv3d.LOWERINGS:
        if conv3d.applicable(name, kernel.shape, strides, padding):
            got = jax.jit(conv3d.conv3d, static_argnums=(2, 3, 4))(x, kernel, strides, padding, name)
            assert got.shape == expected.shape, name
            np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-4, err_msg=name)
            tried += 1
    assert tried >= 2


def test_bfloat16_sum_accumulates_in_float32():
    x = jax.random.normal(jax.random.key(0), (1, 4, 8, 8, 32)).astype(jnp.bfloat16)
    kernel = jax.random.normal(jax.random.key(1), (3, 3, 3, 32, 8)).astype(jnp.bfloat16)
    got = conv3d.conv3d(x, kernel, (1, 1, 1), (1, 1, 1), "sum2d")
    assert got.dtype == jnp.bfloat16
    exact = conv3d.conv3d(x.astype(jnp.float32), kernel.astype(jnp.float32), (1, 1, 1), (1, 1, 1), "native")
    np.testing.assert_allclose(got.astype(jnp.float32), exact, rtol=0.02, atol=0.1)


@pytest.mark.parametrize("kernel_size,strides,padding,shape", CASES)
def test_float64_convs_on_cpu_run_as_matmuls(kernel_size, strides, padding, shape):
    """XLA:CPU's float64 convolutions are 4-40x slower than the same conv as
    one matmul; the chosen lowering still computes the native conv."""
    with jax.enable_x64(True):
        x = jax.random.normal(jax.random.key(0), shape, jnp.float64)
        kernel = jax.random.normal(jax.random.key(1), (*kernel_size, shape[-1], 4), jnp.float64)
        chosen = jax.jit(lambda x, k: conv3d.conv3d(x, k, strides, padding))
        assert "convolution(" not in chosen.lower(x, kernel).compile().as_text()
        np.testing.assert_allclose(chosen(x, kernel), conv3d.conv3d(x, kernel, strides, padding, "native"),
                                   rtol=1e-12, atol=1e-12)


def test_inapplicable_lowering_is_refused():
    with pytest.raises(ValueError, match="temporal2d.*does not apply"):
        conv3d.conv3d(jnp.zeros((1, 3, 4, 4, 2)), jnp.zeros((3, 3, 3, 2, 2)),
                      (1, 1, 1), (1, 1, 1), "temporal2d")


@pytest.mark.parametrize("size,k,stride,pad,expected", [
    (1, 3, 1, 1, (1, 2, 0)),   # one pixel: the centre tap
    (1, 3, 2, 1, (1, 2, 0)),
    (2, 3, 2, 1, (1, 3, 0)),   # stride 2 over 2: the first tap meets only padding
    (2, 3, 1, 1, (0, 3, 1)),   # every tap meets the input somewhere
    (2, 7, 2, 3, (3, 5, 0)),
    (8, 3, 1, 1, (0, 3, 1)),
    (1, 1, 1, 0, (0, 1, 0)),
])
def test_live_taps(size, k, stride, pad, expected):
    assert conv3d.live_taps(size, k, stride, pad) == expected


TINY = [  # kernel, strides, padding, input: taps that meet only padding
    ((3, 3, 3), (1, 1, 1), (1, 1, 1), (2, 1, 1, 1, 8)),
    ((3, 3, 3), (2, 2, 2), (1, 1, 1), (2, 2, 2, 2, 8)),
    ((3, 3, 3), (1, 1, 1), (1, 1, 1), (2, 1, 2, 2, 8)),
    ((1, 3, 3), (1, 1, 1), (0, 1, 1), (2, 4, 1, 1, 8)),
    ((3, 1, 1), (1, 1, 1), (1, 0, 0), (2, 1, 2, 2, 8)),
    ((3, 1, 1), (2, 1, 1), (1, 0, 0), (2, 2, 2, 2, 8)),
    ((3, 7, 7), (1, 2, 2), (1, 3, 3), (2, 1, 2, 3, 3)),
]


@pytest.mark.parametrize("kernel_size,strides,padding,shape", TINY)
def test_dropping_dead_taps_keeps_the_conv_and_its_gradients(kernel_size, strides, padding, shape):
    kx, kk, kg = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(kx, shape)
    kernel = jax.random.normal(kk, (*kernel_size, shape[-1], 6))
    trimmed, _ = conv3d.drop_dead_taps(shape, kernel, strides, padding)
    assert trimmed.size < kernel.size
    native = lambda x, kernel: conv3d.conv3d(x, kernel, strides, padding, "native")
    auto = jax.jit(lambda x, kernel: conv3d.conv3d(x, kernel, strides, padding))
    expected = native(x, kernel)
    np.testing.assert_allclose(auto(x, kernel), expected, rtol=1e-5, atol=1e-5)
    cotangent = jax.random.normal(kg, expected.shape)
    grads = lambda f: jax.vjp(f, x, kernel)[1](cotangent)
    for got, want in zip(grads(auto), grads(native)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)
    # The dropped taps' gradient is exactly zero, as the full conv's is.
    assert np.count_nonzero(grads(auto)[1]) == trimmed.size
