"""Runs under hostile conditions: a second run on a workdir in use, a damaged
latest checkpoint, a disk that fills during a save."""
import os
import resource
import shutil
import signal
import subprocess
import sys
import time

import numpy as np

from tests.train_helpers import ROOT, TINY, leaves, run_train, saved_params
from train.workdir import owned

# 10 videos, 1 device x 2 clips: 5 steps an epoch; a checkpoint every step,
# the last 3 kept.
ARGS = [*TINY, "--checkpoint-every", "1"]

HOLD = "import sys, time\nfrom train.workdir import owned\nwith owned(sys.argv[1]):\n    print('held', flush=True)\n    time.sleep(600)\n"


def test_a_workdir_in_use_refuses_a_second_run_and_a_killed_holder_frees_it(tmp_path):
    work = tmp_path / "w"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(work)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        start = time.time()
        second = run_train([*ARGS, "--tfds-dir", str(tmp_path / "tfds"), "--workdir", str(work)])
        assert second.returncode == 2, second.stderr[-2000:]
        assert f"{work} is in use by another run (pid {holder.pid} on" in second.stderr
        assert time.time() - start < 60 and not (tmp_path / "tfds").exists()  # nothing built
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait()
    with owned(work):  # the kernel dropped the killed holder's lock
        pass


def _limit_file_size():
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG, as on a full disk
    resource.setrlimit(resource.RLIMIT_FSIZE, (1_000_000, 1_000_000))


def test_damaged_checkpoint_falls_back_and_a_failed_save_keeps_the_others(tmp_path):
    train = lambda *flags, **kw: run_train([*ARGS, "--tfds-dir", str(tmp_path / "tfds"),
                                           "--workdir", str(tmp_path / "w"), *flags], **kw)
    first = train()
    assert first.returncode == 0, first.stderr[-3000:]
    folder = tmp_path / "w" / "checkpoints"
    originals = {step: saved_params(tmp_path / "w", step)[1] for step in (8, 9, 10)}

    # A truncated file in the latest checkpoint, as a full disk leaves it.
    largest = max((p for p in (folder / "10").rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    with open(largest, "r+b") as f:
        f.truncate(largest.stat().st_size // 2)
    resumed = train()
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "warning: checkpoint 10 is damaged (" in resumed.stdout and "trying the one before" in resumed.stdout
    assert "resuming from step 9" in resumed.stdout
    assert [p.name.split("-")[0] for p in (tmp_path / "w" / "damaged_checkpoints").iterdir()] == ["10"]
    for a, b in zip(leaves(saved_params(tmp_path / "w", 10)[1]), leaves(originals[10]), strict=True):
        np.testing.assert_array_equal(a, b)  # step 10 again, bitwise

    # A disk that fills while saving step 11: the run stops, 8-10 stay whole.
    full = subprocess.run([sys.executable, "-m", "train.main", *ARGS, "--epochs", "3", "--tfds-dir",
                           str(tmp_path / "tfds"), "--workdir", str(tmp_path / "w")], cwd=ROOT, capture_output=True,
                          text=True, timeout=600, preexec_fn=_limit_file_size)
    assert full.returncode == 1, full.stderr[-3000:]
    assert "error: writing checkpoint 11 in" in full.stderr and "File too large" in full.stderr
    assert "The complete checkpoints (steps: 8, 9, 10) are kept" in full.stderr
    for step, original in originals.items():
        for a, b in zip(leaves(saved_params(tmp_path / "w", step)[1]), leaves(original), strict=True):
            np.testing.assert_array_equal(a, b)
    again = train("--epochs", "3")
    assert again.returncode == 0 and "resuming from step 10" in again.stdout, again.stderr[-3000:]
    assert saved_params(tmp_path / "w")[0] == 15
    shutil.rmtree(tmp_path / "w")
