"""Turn on YNNPACK for XLA:CPU dots, 2D convolutions and reductions.

XLA:CPU's default (Eigen) convolutions run the 2D lowerings of
`flax_video.conv3d` at half the speed YNNPACK does: r3d_18 inference at 1.2
clips/s instead of 1.9, training 0.3 instead of 0.45 on a 2-core machine
(`benchmarks/vs_torchvision.py`). Its reductions run at ~2 GB/s: the
gradient and parameter norms of r2plus1d_152 (137M parameters) took 275 ms
each, 21 ms with YNNPACK's. XLA reads its flags once, when JAX first
starts a backend, so `import flax_video` adds the flag to `XLA_FLAGS` if that
has not happened yet and the user has not chosen a YNN setting. It only
affects the CPU backend.
"""
from __future__ import annotations

import os
import warnings

FLAG_NAME = "--xla_cpu_experimental_ynn_fusion_type"
FLAG = f"{FLAG_NAME}=dot,reduce"


def enable_ynnpack() -> bool:
    """Add the flag to XLA_FLAGS; False (with a warning) when JAX's backends
    already started without it."""
    flags = os.environ.get("XLA_FLAGS", "")
    if FLAG_NAME in flags:
        return FLAG in flags.split()
    from jax._src import xla_bridge
    if xla_bridge.backends_are_initialized():
        warnings.warn(f"JAX started before flax_video was imported, without {FLAG}: 3D convs on "
                      "CPU run about 1.5x slower. Import flax_video first, or set "
                      f"XLA_FLAGS={FLAG}.", stacklevel=3)
        return False
    os.environ["XLA_FLAGS"] = f"{flags} {FLAG}".strip()
    return True
