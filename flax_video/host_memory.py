"""Keep freed host memory mapped, so XLA:CPU's per-step scratch is not
faulted in again on every step.

XLA:CPU mallocs each execution's temporary buffer and frees it afterwards
(1.27 GB for r2plus1d_101's demo train step). glibc serves blocks over 32 MB
with mmap and gives them back with munmap, so every step touches fresh pages:
~200,000 page faults and ~0.8 s of kernel time per step on 2 cores, and
the step took 1.28-1.50 s instead of 0.91 (train/DEMO.md). One malloc
arena that never uses mmap keeps freed blocks for the next step; threads
then share one arena lock.

Opt-in, because it is process-wide and its end-to-end gain is not settled:
the train step alone ran ~30% faster, paired training-loop runs 8-20% faster
at depths 101 and 152 but one pair 12% slower at depth 18, where the loader
threads and checkpoint writes share the one arena (train/DEMO.md).
"""
from __future__ import annotations

import ctypes
import platform

# mallopt parameters, from glibc's malloc.h.
M_TRIM_THRESHOLD, M_MMAP_MAX, M_ARENA_MAX = -1, -4, -8


def keep_freed_memory() -> bool:
    """Tune glibc's malloc as above; False where the C library is not glibc.
    Best called before JAX starts its threads (new arenas are what it limits)."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL(None)
    settings = ((M_ARENA_MAX, 1), (M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, 2**31 - 1))
    return all(libc.mallopt(param, value) == 1 for param, value in settings)
