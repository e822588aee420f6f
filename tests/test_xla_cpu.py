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
