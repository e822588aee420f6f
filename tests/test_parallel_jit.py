"""`--parallel jit` (jit over a 1-D device mesh) against the default pmap, on
4 forced CPU devices: the same losses and parameters, and each resumes the
other's checkpoints. (Two processes under jit: test_train_devices.py.)"""
import json

import numpy as np

from tests.train_helpers import TINY, devices_env, leaves, run_train, saved_params

# 16 videos on 4 devices x 2 clips: 2 steps an epoch, 4 in all.
ARGS = [*TINY, "--motion-shapes", "train_videos=16", "validation_videos=5", "frames=8",
        "size=32", "--checkpoint-every", "1"]


def records(workdir):
    return [json.loads(line) for line in open(workdir / "metrics.jsonl")]


def assert_same_run(workdir, reference):
    got, want = records(workdir), records(reference)
    assert [(r["kind"], r["step"]) for r in got] == [(r["kind"], r["step"]) for r in want]
    for a, b in zip(got, want):
        for key in ("loss", "clip_acc1", "video_acc1"):
            if key in a:
                np.testing.assert_allclose(a[key], b[key], rtol=1e-5, err_msg=f"{a['kind']} step {a['step']} {key}")
    step, state = saved_params(workdir)
    reference_step, reference_state = saved_params(reference)
    assert step == reference_step == 4
    for a, b in zip(leaves(state), leaves(reference_state), strict=True):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-5 * max(np.abs(b).max(), 1))


def test_jit_over_a_mesh_trains_as_pmap_and_resumes_its_checkpoints(tmp_path):
    tfds = ["--tfds-dir", str(tmp_path / "tfds")]

    def train(workdir, *flags):
        result = run_train([*ARGS, *tfds, "--workdir", str(tmp_path / workdir), *flags], env=devices_env(4))
        assert result.returncode == 0, result.stderr[-3000:]
        return result

    assert "4 devices, 8 clips per step" in train("pmap").stdout
    train("jit", "--parallel", "jit")
    assert_same_run(tmp_path / "jit", tmp_path / "pmap")

    # Half a run under one, the rest under the other, from its checkpoint.
    train("mixed", "--max-steps", "2")
    assert "resuming from step 2" in train("mixed", "--parallel", "jit").stdout
    step, _ = saved_params(tmp_path / "mixed")
    assert step == 4
    for a, b in zip(leaves(saved_params(tmp_path / "mixed")[1]), leaves(saved_params(tmp_path / "pmap")[1]),
                    strict=True):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-5 * max(np.abs(b).max(), 1))
