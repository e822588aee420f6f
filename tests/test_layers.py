"""Train-mode BatchNorm's hand-written gradient equals autodiff of the plain
formula, on one replica and with statistics over replicas (SyncBN)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from flax_video.layers import BatchNorm

EPS = 1e-3


def plain_batch_norm(x, scale, bias, axis_name):
    mean = x.mean((0, 1, 2, 3))
    if axis_name:
        mean = lax.pmean(mean, axis_name)
    var = jnp.square(x - mean).mean((0, 1, 2, 3))
    if axis_name:
        var = lax.pmean(var, axis_name)
    return (x - mean) * (scale * lax.rsqrt(var + EPS)) + bias, mean, var


def ours(x, scale, bias, axis_name):
    variables = {"params": {"scale": scale, "bias": bias},
                 "batch_stats": {"mean": jnp.zeros_like(scale), "var": jnp.ones_like(scale),
                                 "num_batches_tracked": jnp.zeros((), jnp.int32)}}
    bn = BatchNorm(use_running_average=False, epsilon=EPS, momentum=0.0, dtype=x.dtype, axis_name=axis_name)
    y, updates = bn.apply(variables, x, mutable=["batch_stats"])
    stats = updates["batch_stats"]
    count = x.size // x.shape[-1] * (lax.axis_size(axis_name) if axis_name else 1)
    # momentum 0: the running statistics are the batch ones (variance unbiased).
    return y, stats["mean"], stats["var"] * (count - 1) / count


@pytest.mark.parametrize("replicas", [None, 3])
def test_train_mode_gradient_matches_autodiff_of_the_formula(replicas):
    with jax.enable_x64(True):
        keys = jax.random.split(jax.random.key(0), 6)
        lead = (replicas,) if replicas else ()
        x = 2.0 + 3.0 * jax.random.normal(keys[0], (*lead, 2, 3, 4, 5, 6), jnp.float64)
        scale = jax.random.normal(keys[1], (6,), jnp.float64)
        bias = jax.random.normal(keys[2], (6,), jnp.float64)
        # A loss through the output and through both statistics.
        weights = [jax.random.normal(k, shape, jnp.float64)
                   for k, shape in zip(keys[3:], (x.shape[len(lead):], (6,), (6,)))]

        def loss(fn, axis_name):
            def per_replica(x, scale, bias):
                y, mean, var = fn(x, scale, bias, axis_name)
                return jnp.sum(y * weights[0]) + jnp.sum(mean * weights[1]) + jnp.sum(var * weights[2])
            if replicas is None:
                return jax.grad(per_replica, argnums=(0, 1, 2))
            return jax.vmap(jax.grad(per_replica, argnums=(0, 1, 2)), in_axes=(0, None, None), axis_name=axis_name)

        axis_name = "replicas" if replicas else None
        expected = loss(plain_batch_norm, axis_name)(x, scale, bias)
        got = jax.jit(loss(ours, axis_name))(x, scale, bias)
        for name, g, e in zip(("x", "scale", "bias"), got, expected):
            np.testing.assert_allclose(g, e, rtol=1e-10, atol=1e-10, err_msg=name)
        def forward(fn):
            call = lambda x, scale, bias: fn(x, scale, bias, axis_name)
            return jax.vmap(call, (0, None, None), axis_name=axis_name) if replicas else call
        for g, e in zip(forward(ours)(x, scale, bias), forward(plain_batch_norm)(x, scale, bias)):
            np.testing.assert_allclose(g, e, rtol=1e-10, atol=1e-10)
