"""`python -m train.main` end to end on a tiny motion_shapes set: resume after
SIGKILL, non-finite loss, bad flags, sync BatchNorm across devices, two
processes."""
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import orbax.checkpoint as ocp
import pytest

from train.config import Config, from_args, parser

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--variant", "mc3_18", "--motion-shapes", "train_videos=10", "validation_videos=5", "frames=8", "size=32",
        "--clip-len", "4", "--resize", "20", "20", "--crop", "16", "--per-device-batch", "2", "--epochs", "2",
        "--workers", "0", "--checkpoint-every", "2", "--log-every", "1"]


def _run(args, **kwargs):
    return subprocess.run([sys.executable, "-m", "train.main", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=600, **kwargs)


def _params(workdir, step=None):
    folder = Path(workdir) / "checkpoints"
    step = step or max(int(p.name) for p in folder.iterdir() if p.name.isdigit())
    state = ocp.StandardCheckpointer().restore(folder / str(step) / "state")
    return step, state


def _leaves(tree):
    import jax

    return jax.tree_util.tree_leaves(tree)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _devices_env(count: int, **extra) -> dict:
    flags = os.environ.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={count}"
    return {**os.environ, "XLA_FLAGS": flags, **extra}


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    base = tmp_path_factory.mktemp("train")
    args = [*TINY, "--tfds-dir", str(base / "tfds"), "--workdir", str(base / "whole")]
    result = _run(args)
    assert result.returncode == 0, result.stderr[-3000:]
    return base, result


def test_demo_run_writes_metrics_plots_and_checkpoints(finished):
    base, result = finished
    work = base / "whole"
    assert "done: steps 10" in result.stdout
    for name in ("metrics.jsonl", "plots.png", "tensorboard"):
        assert (work / name).exists(), name
    import json

    records = [json.loads(line) for line in open(work / "metrics.jsonl")]
    assert [r["step"] for r in records if r["kind"] == "train"] == list(range(1, 11))
    assert {"clip_acc1", "clip_acc5", "video_acc1", "video_acc5"} <= set(next(r for r in records if r["kind"] == "eval"))
    steps = sorted(int(p.name) for p in (work / "checkpoints").iterdir() if p.name.isdigit())
    assert steps == [6, 8, 10]  # every 2 steps and each epoch end, last 3 kept


def test_sigkill_then_resume_gives_bitwise_the_same_parameters(finished):
    base, _ = finished
    work = base / "killed"
    args = [*TINY, "--tfds-dir", str(base / "tfds"), "--workdir", str(work)]
    process = subprocess.Popen([sys.executable, "-m", "train.main", *args], cwd=ROOT,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    folder = work / "checkpoints"
    while time.time() < deadline and not (folder.exists() and any(p.name == "4" for p in folder.iterdir())):
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)  # mid-run, possibly mid-save
    process.wait()
    killed_at = [p.name for p in folder.iterdir()]
    assert "10" not in killed_at, "the run finished before it was killed"
    result = _run(args)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "resuming from step" in result.stdout
    step, resumed = _params(work)
    _, whole = _params(base / "whole")
    assert step == 10
    for a, b in zip(_leaves(whole), _leaves(resumed), strict=True):
        np.testing.assert_array_equal(a, b)


def test_non_finite_loss_stops_and_keeps_the_last_checkpoint(finished):
    base, _ = finished
    work = base / "nan"
    shutil.copytree(base / "whole", work)
    _, before = _params(work, 10)
    result = _run([*TINY, "--epochs", "3", "--lr", "1e30", "--tfds-dir", str(base / "tfds"), "--workdir", str(work)])
    assert result.returncode == 1
    # Step 11 computes a finite loss and the huge update; step 12's loss is NaN.
    assert "non-finite loss" in result.stderr and "at step 12" in result.stderr, result.stderr[-2000:]
    step, after = _params(work)
    assert step == 10
    for a, b in zip(_leaves(before), _leaves(after), strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("args, message", [
    (["--variant", "r5d"], "unknown variant"),
    (["--dataset", "kinetics400"], "needs --data-dir"),
    (["--dataset", "kinetics400", "--data-dir", "/no/such/dir"], "does not exist"),
    (["--dataset", "imagenet"], "unknown dataset"),
    (["--dtype", "float16"], "float32 or bfloat16"),
    (["--zero-init-residual", "stages"], "invalid choice: 'stages'"),
    (["--checkpoint-every", "-1"], "--checkpoint-every must be at least 0"),
    (["--eval-every-epochs", "0"], "--eval-every-epochs must be positive"),
])
def test_bad_flags_fail_at_once(args, message, tmp_path):
    start = time.time()
    result = _run([*args, "--workdir", str(tmp_path / "w")])
    assert result.returncode == 2 and message in result.stderr, result.stderr[-2000:]
    assert not (tmp_path / "w").exists()
    assert time.time() - start < 60


def test_help_explains_every_flag():
    result = _run(["--help"])
    assert result.returncode == 0
    for flag in ("--lr", "--weight-decay", "--warmup-epochs", "--milestones", "--sync-bn", "--init-from",
                 "--num-classes", "--dtype", "--workdir", "--coordinator-address"):
        assert flag in result.stdout


def test_demo_defaults_per_depth_and_block():
    def config(*flags):
        return from_args(parser().parse_args(list(flags)))

    fields = lambda c: (c.epochs, c.milestones, c.lr, c.zero_init_residual, c.head_lr_scale)
    assert fields(config("--variant", "r2plus1d")) == (16, (12,), 0.003, "none", 1.0)
    assert fields(config("--variant", "r3d_34")) == (20, (10,), 0.02, "all", 1.0)
    assert fields(config("--variant", "mc3_34")) == (24, (12,), 0.02, "all", 1.0)
    assert fields(config("--variant", "r2plus1d_50")) == (12, (9,), 0.01, "identity", 0.1)
    assert fields(config("--variant", "r3d_152")) == (8, (6,), 0.01, "identity", 0.1)
    assert fields(config("--variant", "r3d_101")) == (10, (7.5,), 0.01, "identity", 0.1)
    assert fields(config("--variant", "r2plus1d_101")) == (8, (6,), 0.02, "identity", 0.05)
    assert fields(config("--variant", "r2plus1d_101", "--lr", "0.01")) == (8, (6,), 0.01, "identity", 0.05)
    assert config("--variant", "r2plus1d_10").epochs == 16
    clips = lambda c: (c.clip_len, c.fps)
    assert [clips(config("--variant", v)) for v in ("r3d", "mc3_50", "r2plus1d_101", "mc3_152")] == [
        (8, 15), (8, 15), (4, 7.5), (4, 7.5)]
    assert clips(config("--variant", "r3d_101", "--clip-len", "8")) == (8, 7.5)
    assert config("--variant", "r2plus1d_34_ig65m").epochs == 20
    assert config("--variant", "r3d_34", "--zero-init-residual", "none").zero_init_residual == "none"
    assert config("--variant", "r3d_50", "--head-lr-scale", "1").head_lr_scale == 1.0
    assert config("--variant", "mc3_101", "--epochs", "6").milestones == (4.5,)  # 3/4 of the way
    assert config("--variant", "mc3_34", "--epochs", "6").milestones == (3,)  # halfway
    assert config("--variant", "r3d", "--epochs", "8").milestones == (6,)  # 3/4 of the way
    assert config("--variant", "mc3", "--milestones", "2", "5").milestones == (2, 5)
    # Flags take their field's type, not its default's (`fps: float = 15`).
    fractional = config("--fps", "7.5", "--warmup-epochs", "0.5", "--milestones", "2.5")
    assert (fractional.fps, fractional.warmup_epochs, fractional.milestones) == (7.5, 0.5, (2.5,))
    kinetics = config("--dataset", "kinetics400", "--data-dir", "x", "--variant", "r2plus1d_50")
    assert fields(kinetics)[:2] + fields(kinetics)[3:] == (45, (20, 30, 40), "none", 1.0)
    # The demo decodes in the main process and saves at epoch ends only.
    demo = config("--variant", "r2plus1d_101")
    assert (demo.workers, demo.checkpoint_every, kinetics.workers, kinetics.checkpoint_every) == (0, 0, 2, 200)
    # Configs saved before the zero-init modes existed hold bools.
    assert Config(zero_init_residual=True).zero_init_residual == "all"
    assert Config(zero_init_residual=False).zero_init_residual == "none"
    with pytest.raises(ValueError, match="--head-lr-scale must be at least 0"):
        Config(head_lr_scale=-1)


def test_checkpoints_every_n_steps_at_epoch_ends_and_the_last_step():
    from train.loop import saves_at

    # 5 steps an epoch, 12 in all (a --max-steps run ends mid-epoch).
    def saved(every):
        return [done for done in range(1, 13) if saves_at(done, 5, 12, every)]

    assert saved(0) == [5, 10, 12]
    assert saved(4) == [4, 5, 8, 10, 12]
    assert saved(1) == list(range(1, 13))


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
                            env=_devices_env(4))
    assert result.returncode == 0 and "same" in result.stdout, result.stderr[-3000:]


def test_evaluate_a_workdir(finished):
    base, train_result = finished
    result = subprocess.run([sys.executable, "-m", "train.evaluate", "--workdir", str(base / "whole")], cwd=ROOT,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    line = result.stdout.strip().splitlines()[-1]
    assert line.startswith("step 10: clip_acc1")
    # The same numbers as the evaluation at the end of training.
    final = train_result.stdout.strip().splitlines()[-1]
    for key in ("clip_acc1", "video_acc1", "video_acc5"):
        assert line.split(f"{key} ")[1].split(",")[0] == final.split(f"{key} ")[1].split(",")[0]


def test_fine_tune_from_a_torchvision_file_reinitializes_the_head(finished, tmp_path):
    import torch

    from tests.torch_reference import torch_model

    base, _ = finished
    torch.manual_seed(0)
    net = torch_model("mc3_18", num_classes=400)
    torch.save(net.state_dict(), tmp_path / "mc3_18.pth")
    work = tmp_path / "fine"
    result = _run([*TINY, "--init-from", str(tmp_path / "mc3_18.pth"), "--max-steps", "1", "--lr", "0",
                   "--weight-decay", "0", "--tfds-dir", str(base / "tfds"), "--workdir", str(work)])
    assert result.returncode == 0, result.stderr[-3000:]
    assert "re-initializing the classifier for 5 classes (pretrained: 400)" in result.stdout
    _, state = _params(work)
    # lr 0: the backbone is exactly the pretrained one; the head has 5 outputs.
    np.testing.assert_array_equal(state["params"]["stem"]["conv"]["kernel"],
                                  net.stem[0].weight.detach().numpy().transpose(2, 3, 4, 1, 0))
    assert state["params"]["fc"]["kernel"].shape == (512, 5)


def test_two_processes_train_in_lockstep_like_one_process_with_all_devices(tmp_path):
    # 16 videos: 2 steps of 4 devices x 2 clips. A fresh tfds dir, so process
    # 0 builds the dataset while process 1 waits for it. Two steps only: the
    # fp32 gradient sums over gloo and over 4 local devices differ by an ulp,
    # and this tiny net (BatchNorm over 2 clips) amplifies that (measured:
    # losses 1e-7 apart at steps 1-3, 7e-5 at step 4).
    args = [*TINY, "--motion-shapes", "train_videos=16", "validation_videos=5", "frames=8", "size=32",
            "--epochs", "1", "--tfds-dir", str(tmp_path / "tfds")]
    port = _free_port()
    processes = [subprocess.Popen(
        [sys.executable, "-m", "train.main", *args, "--workdir", str(tmp_path / "two")], cwd=ROOT,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=_devices_env(2, JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", JAX_NUM_PROCESSES="2",
                         JAX_PROCESS_ID=str(index)))
        for index in range(2)]
    outputs = [p.communicate(timeout=600) for p in processes]
    for process, (out, err) in zip(processes, outputs):
        assert process.returncode == 0, err[-3000:]
    lead, other = outputs
    assert "4 devices, 8 clips per step" in lead[0] and "done: steps 2" in lead[0]
    assert "done:" not in other[0] and "train:" not in other[1]  # only process 0 reports

    single = _run([*args, "--workdir", str(tmp_path / "one")], env=_devices_env(4))
    assert single.returncode == 0, single.stderr[-3000:]
    import json

    def records(name):
        return [json.loads(line) for line in open(tmp_path / name / "metrics.jsonl")]

    two, one = records("two"), records("one")
    assert [(r["kind"], r["step"]) for r in two] == [(r["kind"], r["step"]) for r in one]  # written once
    for a, b in zip(two, one):
        for key in ("loss", "clip_acc1", "video_acc1"):
            if key in a:
                np.testing.assert_allclose(a[key], b[key], rtol=1e-6, err_msg=f"{a['kind']} step {a['step']} {key}")
    step, state_two = _params(tmp_path / "two")
    _, state_one = _params(tmp_path / "one")
    assert step == 2
    # Measured: at most 5e-6 of each leaf's largest value apart.
    for a, b in zip(_leaves(state_two), _leaves(state_one), strict=True):
        np.testing.assert_allclose(a, b, rtol=0, atol=5e-5 * np.abs(b).max())
