"""Data parallel training across devices: sync BatchNorm on 4 forced CPU
devices, and two processes through `jax.distributed` (their own file, so that
the two slowest tests of the train CLI can run beside its others)."""
import json
import subprocess
import sys

import numpy as np

from tests.train_helpers import ROOT, TINY, devices_env, free_port, leaves, run_train, saved_params

# In float64: at initialization the gradients are large (norm ~350 at depth 18) and fp32
# rounding of the statistics, summed in a different order over 4 devices,
# moves the stem's update by ~1e-3 relative; float64 checks the computation.
# Depth 10 has every BatchNorm of the (2+1)D models and compiles in half the
# time of depth 18.
SYNC_BN = r"""
import functools, jax, numpy as np
jax.config.update("jax_enable_x64", True)
import flax_video
from train import optim, steps
assert jax.local_device_count() == 4
model = flax_video.create_model("r2plus1d_10", num_classes=3, dtype=np.float64, bn_axis_name=steps.AXIS)
rng = np.random.default_rng(0)
clips = rng.normal(size=(8, 4, 16, 16, 3))
labels = rng.integers(0, 3, 8).astype(np.int32)
variables = jax.jit(functools.partial(model.init, train=False))(jax.random.key(0), clips[:1])
variables = jax.tree_util.tree_map(lambda x: x.astype(np.float64) if x.dtype == np.float32 else x, variables)
schedule = optim.learning_rate_fn(0.1, 10, 0, 1.0, (), 0.1)
tx = optim.sgd(schedule, 0.9, 1e-4)
state = steps.create_state(variables, tx)
step = functools.partial(steps.train_step, model=model, tx=tx, schedule=schedule)
results = []
for devices in (4, 1):
    p = jax.pmap(step, axis_name=steps.AXIS, devices=jax.devices()[:devices])
    replicated = jax.tree_util.tree_map(lambda x: np.stack([np.asarray(x)] * devices), state)
    batch = {"clip": clips.reshape(devices, -1, *clips.shape[1:]), "label": labels.reshape(devices, -1),
             "mask": np.ones((devices, 8 // devices)), "bad": np.zeros((devices, 8 // devices), np.int32)}
    new, metrics = p(replicated, batch)
    results.append(jax.tree_util.tree_map(lambda x: np.asarray(x)[0], (new.params, new.batch_stats, metrics["loss"])))
for a, b in zip(jax.tree_util.tree_leaves(results[0]), jax.tree_util.tree_leaves(results[1]), strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)
print("same")
"""


def test_sync_bn_step_on_four_devices_equals_one_device_with_the_whole_batch():
    result = subprocess.run([sys.executable, "-c", SYNC_BN], cwd=ROOT, capture_output=True, text=True, timeout=600,
                            env=devices_env(4))
    assert result.returncode == 0 and "same" in result.stdout, result.stderr[-3000:]


def test_two_processes_train_in_lockstep_like_one_process_with_all_devices(tmp_path):
    """Under pmap (the default) and under `--parallel jit`, against one
    process with 4 devices under pmap."""
    # 16 videos: 2 steps of 4 devices x 2 clips. A fresh tfds dir, so process
    # 0 builds the dataset while process 1 waits for it. Two steps only: the
    # fp32 gradient sums over gloo and over 4 local devices differ by an ulp,
    # and this tiny net (BatchNorm over 2 clips) amplifies that (measured:
    # losses 1e-7 apart at steps 1-3, 7e-5 at step 4).
    args = [*TINY, "--motion-shapes", "train_videos=16", "validation_videos=5", "frames=8", "size=32",
            "--epochs", "1", "--tfds-dir", str(tmp_path / "tfds")]

    def two_processes(workdir, *flags):
        port = free_port()
        processes = [subprocess.Popen(
            [sys.executable, "-m", "train.main", *args, *flags, "--workdir", str(tmp_path / workdir)], cwd=ROOT,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env=devices_env(2, JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", JAX_NUM_PROCESSES="2",
                             JAX_PROCESS_ID=str(index)))
            for index in range(2)]
        outputs = [p.communicate(timeout=600) for p in processes]
        for process, (out, err) in zip(processes, outputs):
            assert process.returncode == 0, err[-3000:]
        lead, other = outputs
        assert "4 devices, 8 clips per step" in lead[0] and "done: steps 2" in lead[0]
        assert "done:" not in other[0] and "train:" not in other[1]  # only process 0 reports

    two_processes("two")
    two_processes("two_jit", "--parallel", "jit")
    single = run_train([*args, "--workdir", str(tmp_path / "one")], env=devices_env(4))
    assert single.returncode == 0, single.stderr[-3000:]

    def records(name):
        return [json.loads(line) for line in open(tmp_path / name / "metrics.jsonl")]

    one = records("one")
    _, state_one = saved_params(tmp_path / "one")
    for workdir in ("two", "two_jit"):
        two = records(workdir)
        assert [(r["kind"], r["step"]) for r in two] == [(r["kind"], r["step"]) for r in one]  # written once
        for a, b in zip(two, one):
            for key in ("loss", "clip_acc1", "video_acc1"):
                if key in a:
                    np.testing.assert_allclose(a[key], b[key], rtol=1e-6,
                                               err_msg=f"{workdir}: {a['kind']} step {a['step']} {key}")
        step, state_two = saved_params(tmp_path / workdir)
        assert step == 2
        # Measured: at most 5e-6 of each leaf's largest value apart.
        for a, b in zip(leaves(state_two), leaves(state_one), strict=True):
            np.testing.assert_allclose(a, b, rtol=0, atol=5e-5 * np.abs(b).max())
