import os
import subprocess
import sys

from flax_video import xla_cpu


def test_flag_is_set_for_this_process():
    assert xla_cpu.FLAG in os.environ["XLA_FLAGS"].split()


def run(code, env_flags=None):
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    if env_flags is not None:
        env["XLA_FLAGS"] = env_flags
    return subprocess.run([sys.executable, "-W", "always", "-c", code], env=env,
                          capture_output=True, text=True, check=True)


def test_user_choice_is_kept_and_late_import_warns():
    kept = run("import os, flax_video; print(os.environ['XLA_FLAGS'])",
               env_flags="--xla_cpu_experimental_ynn_fusion_type=")
    assert kept.stdout.split() == ["--xla_cpu_experimental_ynn_fusion_type="]
    late = run("import jax; jax.numpy.ones(1); import os, flax_video; print(os.environ.get('XLA_FLAGS'))")
    assert "JAX started before flax_video was imported" in late.stderr
    assert late.stdout.strip() == "None"


# malloc, touch and free a 256 MiB block three times: without the tuning
# each round faults its 65,536 pages in again.
FAULTS_PER_ROUND = r"""
import ctypes, resource, sys
from flax_video import host_memory
if sys.argv[1] == "keep":
    assert host_memory.keep_freed_memory()
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
size = 256 << 20
faults = []
for _ in range(3):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    block = libc.malloc(ctypes.c_size_t(size))
    ctypes.memset(block, 1, size)
    libc.free(ctypes.c_void_p(block))
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(*faults)
"""


def test_keep_freed_memory_stops_refaulting_a_freed_block():
    def faults(mode):
        out = subprocess.run([sys.executable, "-c", FAULTS_PER_ROUND, mode], capture_output=True, text=True, check=True)
        return [int(n) for n in out.stdout.split()]

    default, kept = faults("default"), faults("keep")
    pages = (256 << 20) // 4096
    assert min(default[1:]) > pages // 2, default  # munmap'd and faulted in again
    assert max(kept[1:]) < pages // 100, kept  # the same heap memory, reused


def test_reductions_under_these_flags_stay_accurate():
    # YNNPACK computes this process's reductions: a sum of 2**26 terms in
    # float32 must not drift as a naive running sum does (2**24 + 1 == 2**24).
    import jax
    import jax.numpy as jnp
    import numpy as np

    values = np.random.default_rng(0).standard_normal(1 << 26).astype(np.float32)
    assert float(jax.jit(jnp.sum)(np.ones(1 << 26, np.float32))) == 1 << 26
    exact = np.sum(values.astype(np.float64) ** 2)
    np.testing.assert_allclose(float(jax.jit(lambda v: jnp.sum(v * v))(values)), exact, rtol=1e-6)
