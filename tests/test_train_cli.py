"""`python -m train.main` end to end on a tiny motion_shapes set: resume after
SIGKILL, non-finite loss, bad flags, evaluation, fine-tuning (the runs across
devices: test_train_devices.py)."""
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from tests.train_helpers import ROOT, TINY, leaves, run_train, saved_params
from train.config import Config, from_args, parser


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    base = tmp_path_factory.mktemp("train")
    args = [*TINY, "--tfds-dir", str(base / "tfds"), "--workdir", str(base / "whole")]
    result = run_train(args)
    assert result.returncode == 0, result.stderr[-3000:]
    return base, result


def test_demo_run_writes_metrics_plots_and_checkpoints(finished):
    base, result = finished
    work = base / "whole"
    assert "done: steps 10" in result.stdout
    for name in ("metrics.jsonl", "plots.png", "tensorboard"):
        assert (work / name).exists(), name

    records = [json.loads(line) for line in open(work / "metrics.jsonl")]
    assert [r["step"] for r in records if r["kind"] == "train"] == list(range(1, 11))
    assert {"clip_acc1", "clip_acc5", "video_acc1", "video_acc5"} <= set(next(r for r in records if r["kind"] == "eval"))
    steps = sorted(int(p.name) for p in (work / "checkpoints").iterdir() if p.name.isdigit())
    assert steps == [6, 8, 10]  # every 2 steps and each epoch end, last 3 kept
    losses = {r["step"]: r["loss"] for r in records if r["kind"] == "train"}
    assert tensorboard_scalars(work / "tensorboard", "train/loss") == pytest.approx(losses, rel=1e-6)


def tensorboard_scalars(folder, tag):
    """{step: value} of one tag in TensorBoard event files (records: length,
    its crc, an Event proto, its crc)."""
    from tensorboardX.proto.event_pb2 import Event

    values = {}
    for path in folder.glob("events.out.tfevents.*"):
        data = path.read_bytes()
        while data:
            length = int.from_bytes(data[:8], "little")
            event = Event.FromString(data[12:12 + length])
            data = data[16 + length:]
            values.update({event.step: v.simple_value for v in event.summary.value if v.tag == tag})
    return values


def test_the_metrics_writer_leaves_torch_unloaded(tmp_path):
    """tensorboardX imports torch when it can (for type hints): ~2 s of every
    run's startup. Torch still imports afterwards."""
    code = ("import sys; from train.metrics import Writer; Writer(sys.argv[1]).write('train', 1, {'loss': 0.5}); "
            "assert 'torch' not in sys.modules, 'torch loaded'; import torch; print('ok')")
    result = subprocess.run([sys.executable, "-c", code, str(tmp_path)], cwd=ROOT, capture_output=True, text=True)
    assert result.stdout.strip() == "ok", result.stderr[-3000:]


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
    result = run_train(args)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "resuming from step" in result.stdout
    step, resumed = saved_params(work)
    _, whole = saved_params(base / "whole")
    assert step == 10
    for a, b in zip(leaves(whole), leaves(resumed), strict=True):
        np.testing.assert_array_equal(a, b)


def test_non_finite_loss_stops_and_keeps_the_last_checkpoint(finished):
    base, _ = finished
    work = base / "nan"
    shutil.copytree(base / "whole", work)
    _, before = saved_params(work, 10)
    result = run_train([*TINY, "--epochs", "3", "--lr", "1e30", "--tfds-dir", str(base / "tfds"),
                        "--workdir", str(work)])
    assert result.returncode == 1
    # Step 11 computes a finite loss and the huge update; a later loss
    # overflows (step 12 or 13: where depends on the order of the CPU's sums).
    found = re.search(r"non-finite loss \((nan|-?inf)\) at step (\d+); stopping\. The last good "
                      r"checkpoint \(step (\d+)\)", result.stderr)
    assert found, result.stderr[-2000:]
    failed, kept = int(found[2]), int(found[3])
    assert failed > 11
    # Every step before it was logged with a finite loss; none after it ran.
    logged = [json.loads(line) for line in open(work / "metrics.jsonl")]
    logged = [r for r in logged if r["kind"] == "train" and r["step"] > 10]
    assert [r["step"] for r in logged] == list(range(11, failed))
    assert all(np.isfinite(r["loss"]) for r in logged)
    # No checkpoint of the failed step or later; the ones before are intact.
    saved = sorted(int(p.name) for p in (work / "checkpoints").iterdir() if p.name.isdigit())
    assert saved[-1] == kept < failed and 10 in saved
    _, after = saved_params(work, 10)
    for a, b in zip(leaves(before), leaves(after), strict=True):
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
    (["--per-device-batch", "0"], "--per-device-batch must be positive, not 0"),
])
def test_bad_flags_fail_at_once(args, message, tmp_path):
    start = time.time()
    result = run_train([*args, "--workdir", str(tmp_path / "w")])
    assert result.returncode == 2 and message in result.stderr, result.stderr[-2000:]
    assert not (tmp_path / "w").exists()
    assert time.time() - start < 60


def test_help_explains_every_flag():
    result = run_train(["--help"])
    assert result.returncode == 0
    for flag in ("--lr", "--weight-decay", "--warmup-epochs", "--milestones", "--sync-bn", "--init-from",
                 "--num-classes", "--dtype", "--workdir", "--coordinator-address"):
        assert flag in result.stdout


def test_demo_defaults_per_depth_and_block():
    def config(*flags):
        return from_args(parser().parse_args(list(flags)))

    fields = lambda c: (c.epochs, c.milestones, c.lr, c.zero_init_residual, c.head_lr_scale)
    assert fields(config("--variant", "r2plus1d")) == (20, (15,), 0.003, "none", 1.0)
    assert fields(config("--variant", "r3d_34")) == (20, (10,), 0.02, "all", 1.0)
    assert config("--variant", "r2plus1d_34").epochs == 16
    assert fields(config("--variant", "mc3_34")) == (20, (10,), 0.02, "all", 1.0)
    assert fields(config("--variant", "r2plus1d_50")) == (12, (9,), 0.01, "identity", 0.1)
    assert fields(config("--variant", "r3d_152")) == (8, (6,), 0.01, "identity", 0.1)
    assert fields(config("--variant", "r3d_101")) == (10, (7.5,), 0.01, "identity", 0.1)
    assert fields(config("--variant", "mc3_101")) == (12, (9,), 0.01, "identity", 0.1)
    assert fields(config("--variant", "r2plus1d_101")) == (8, (6,), 0.02, "identity", 0.05)
    assert fields(config("--variant", "r2plus1d_101", "--lr", "0.01")) == (8, (6,), 0.01, "identity", 0.05)
    assert fields(config("--variant", "mc3_152")) == (8, (6,), 0.02, "identity", 0.05)
    assert config("--variant", "r2plus1d_10").epochs == 20
    clips = lambda c: (c.clip_len, c.fps)
    assert [clips(config("--variant", v)) for v in ("r3d", "r2plus1d_34", "mc3_50", "r2plus1d_101", "mc3_152")] == [
        (8, 15), (4, 7.5), (8, 15), (4, 7.5), (4, 7.5)]
    assert clips(config("--variant", "r3d_101", "--clip-len", "8")) == (8, 7.5)
    assert config("--variant", "r2plus1d_34_ig65m").epochs == 16
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
    net = torch_model("mc3_10", num_classes=400)
    torch.save(net.state_dict(), tmp_path / "mc3_10.pth")
    work = tmp_path / "fine"
    result = run_train([*TINY, "--init-from", str(tmp_path / "mc3_10.pth"), "--max-steps", "1", "--lr", "0",
                        "--weight-decay", "0", "--tfds-dir", str(base / "tfds"), "--workdir", str(work)])
    assert result.returncode == 0, result.stderr[-3000:]
    assert "re-initializing the classifier for 5 classes (pretrained: 400)" in result.stdout
    _, state = saved_params(work)
    # lr 0: the backbone is exactly the pretrained one; the head has 5 outputs.
    np.testing.assert_array_equal(state["params"]["stem"]["conv"]["kernel"],
                                  net.stem[0].weight.detach().numpy().transpose(2, 3, 4, 1, 0))
    assert state["params"]["fc"]["kernel"].shape == (512, 5)


DEMO_CONFIGS = ROOT / "tests" / "data" / "demo_configs.json"


def test_every_demo_keeps_its_settings():
    """The effective config of each variant's demo command (and with --epochs
    10, and off the demo) equals the one recorded before the demo settings
    became a table (tests/data/demo_configs.json)."""
    import dataclasses
    recorded = json.loads(DEMO_CONFIGS.read_text())
    as_json = lambda config: json.loads(json.dumps(dataclasses.asdict(config)))
    assert {command: as_json(from_args(parser().parse_args(command.split()))) for command in recorded} == recorded


def test_print_config_prints_json_and_builds_nothing(tmp_path):
    result = run_train(["--variant", "r3d_34", "--epochs", "10", "--workdir", str(tmp_path / "w"), "--print-config"])
    assert result.returncode == 0, result.stderr[-2000:]
    recorded = json.loads(DEMO_CONFIGS.read_text())["--variant r3d_34 --epochs 10"]
    assert json.loads(result.stdout) == recorded
    assert list(tmp_path.iterdir()) == []
