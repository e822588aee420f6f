"""Time every applicable lowering of every conv shape in the video ResNets.

    python -m benchmarks.conv_lowering [--variants r3d_18 mc3_18 r2plus1d_18] [--batch 4] [--dtype bfloat16]
        [--lowerings onednn xla]

For each distinct conv (input shape, kernel, strides, padding) met in the
models at `--batch` x 16x112x112, times the forward pass and the
forward+backward pass of each lowering in `flax_video.conv3d` under jit, and
prints the median times next to the lowering `conv3d.choose` picks for this
backend, so the choice can be checked against measurement. The last column
is torch's `conv3d` of the same shape (channels-last-3d; in bf16 its
oneDNN kernels, AMX where the CPU has it), the yardstick per shape. XLA
flags (`XLA_FLAGS`) apply as set, so the same command compares backends.
"""
from __future__ import annotations

import argparse
import statistics
import time

import flax.linen as nn
import jax
import jax.numpy as jnp

from flax_video import conv3d, create_model
from flax_video.layers import Conv


def conv_shapes(variant: str, batch: int, frames: int, size: int) -> list[tuple]:
    """(input shape, kernel shape, strides, padding) of each Conv call."""
    calls = []

    def record(next_fun, args, kwargs, context):
        if isinstance(context.module, Conv) and context.method_name == "__call__":
            m, x = context.module, args[0]
            calls.append((tuple(x.shape), (*m.kernel_size, x.shape[-1], m.features),
                          tuple(m.strides), tuple(m.padding)))
        return next_fun(*args, **kwargs)

    model = create_model(variant)
    with nn.intercept_methods(record):
        jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((batch, frames, size, size, 3)))
    return calls


def median_seconds(fn, *args, repeats: int) -> float:
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def time_torch(shape, kernel_shape, strides, padding, dtype, repeats):
    import torch
    x = torch.randn(shape[0], shape[4], *shape[1:4], dtype=dtype).contiguous(memory_format=torch.channels_last_3d)
    kernel = (torch.randn(kernel_shape[4], kernel_shape[3], *kernel_shape[:3], dtype=dtype) * 0.01).contiguous(
        memory_format=torch.channels_last_3d)
    x.requires_grad_(True)
    kernel.requires_grad_(True)

    def median(fn):
        fn()
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        return statistics.median(times)

    forward = lambda: torch.nn.functional.conv3d(x, kernel, stride=strides, padding=padding)
    with torch.no_grad():
        fwd = median(forward)
    train = median(lambda: torch.autograd.grad(forward().square().sum(), (x, kernel)))
    return fwd, train


def time_lowering(shape, kernel_shape, strides, padding, lowering, repeats, dtype=jnp.float32):
    kx, kk = jax.random.split(jax.random.key(0))
    x = jax.random.normal(kx, shape, dtype)
    kernel = (jax.random.normal(kk, kernel_shape) * 0.01).astype(dtype)

    def forward(x, kernel):
        return conv3d.conv3d(x, kernel, strides, padding, lowering)

    def loss(x, kernel):
        return jnp.sum(jnp.square(forward(x, kernel)))

    fwd = median_seconds(jax.jit(forward), x, kernel, repeats=repeats)
    train = median_seconds(jax.jit(jax.grad(loss, argnums=(0, 1))), x, kernel, repeats=repeats)
    return fwd, train


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variants", nargs="+", default=["r3d_18", "mc3_18", "r2plus1d_18"])
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--size", type=int, default=112)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--lowerings", nargs="+", default=list(conv3d.LOWERINGS), metavar="NAME",
                   help="the lowerings to time, where they apply; 'chosen' is the one conv3d.choose picks, "
                        "'xla' the best of XLA's own (conv3d.choose_xla)")
    args = p.parse_args(argv)
    import torch
    dtype, torch_dtype = jnp.dtype(args.dtype), getattr(torch, args.dtype)

    shapes = {}
    for variant in args.variants:
        for call in conv_shapes(variant, args.batch, args.frames, args.size):
            shapes.setdefault(call, 0)
            shapes[call] += 1
    backend = jax.default_backend()
    print(f"backend: {backend}, {args.dtype}; {len(shapes)} distinct conv shapes; times in ms "
          "(forward / forward+backward); * marks the lowering conv3d.choose picks")
    for (shape, kernel_shape, strides, padding), uses in shapes.items():
        chosen = conv3d.choose(shape, kernel_shape, strides, padding, backend, dtype)
        wanted = {{"chosen": chosen, "xla": conv3d.choose_xla(shape, kernel_shape, strides, padding)}.get(name, name)
                  for name in args.lowerings}
        cells = []
        for lowering in conv3d.LOWERINGS:
            if not conv3d.applicable(lowering, kernel_shape, strides, padding) or lowering not in wanted:
                continue
            fwd, train = time_lowering(shape, kernel_shape, strides, padding, lowering, args.repeats, dtype)
            mark = "*" if lowering == chosen else " "
            cells.append(f"{mark}{lowering} {fwd * 1e3:7.2f}/{train * 1e3:7.2f}")
        fwd, train = time_torch(shape, kernel_shape, strides, padding, torch_dtype, args.repeats)
        cells.append(f"torch {fwd * 1e3:7.2f}/{train * 1e3:7.2f}")
        print(f"x{uses:<2} in {str(shape):22} k{str(kernel_shape[:3]):10} {kernel_shape[3]:>3}->"
              f"{kernel_shape[4]:<4} s{str(strides):10} | " + " | ".join(cells), flush=True)


if __name__ == "__main__":
    main()
