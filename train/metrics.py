"""Clip and video accuracy (torchvision's: a video's score is the sum of its
clips' softmax scores), and where metrics are written: JSON lines,
TensorBoard events and PNG curves in the workdir (process 0 only)."""
from __future__ import annotations

import json
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np


class Accuracy:
    """Accumulates clip scores; top-1/top-5 per clip and per video."""

    def __init__(self):
        self.clip_hits = np.zeros(2)
        self.clips = 0
        self.video_scores = defaultdict(lambda: 0.0)
        self.video_labels = {}

    def add(self, scores, labels, videos, mask):
        valid = mask.astype(bool)
        scores, labels, videos = scores[valid], labels[valid], videos[valid]
        self.clip_hits += _hits(scores, labels)
        self.clips += len(labels)
        for score, label, video in zip(scores, labels, videos):
            self.video_scores[int(video)] = self.video_scores[int(video)] + score
            self.video_labels[int(video)] = int(label)

    def sums(self) -> np.ndarray:
        """[clip top1, clip top5, clips, video top1, video top5, videos] as
        sums, to add across processes."""
        videos = sorted(self.video_scores)
        if videos:
            video_hits = _hits(np.stack([self.video_scores[v] for v in videos]), np.array([self.video_labels[v] for v in videos]))
        else:
            video_hits = np.zeros(2)
        return np.array([*self.clip_hits, self.clips, *video_hits, len(videos)], np.float64)


def _hits(scores, labels) -> np.ndarray:
    top5 = np.argsort(-scores, axis=-1)[:, :5]
    return np.array([(top5[:, 0] == labels).sum(), (top5 == labels[:, None]).any(-1).sum()], np.float64)


def summarize(sums: np.ndarray) -> dict:
    clip1, clip5, clips, video1, video5, videos = sums
    return {"clip_acc1": clip1 / max(clips, 1), "clip_acc5": clip5 / max(clips, 1),
            "video_acc1": video1 / max(videos, 1), "video_acc5": video5 / max(videos, 1),
            "clips": int(clips), "videos": int(videos)}


def _summary_writer():
    """tensorboardX's SummaryWriter, imported without torch where torch is not
    loaded yet: tensorboardX imports it, if installed, for type hints only,
    and that costs every training run ~2 s of startup. We log Python floats."""
    if "torch" in sys.modules:
        from tensorboardX import SummaryWriter
        return SummaryWriter
    sys.modules["torch"] = None  # `import torch` raises ImportError, which tensorboardX catches
    try:
        from tensorboardX import SummaryWriter
    finally:
        del sys.modules["torch"]
    return SummaryWriter


class Writer:
    """metrics.jsonl + TensorBoard + plots.png in the workdir."""

    def __init__(self, workdir: Path, enabled: bool = True):
        self.workdir, self.enabled = Path(workdir), enabled
        self._tensorboard = None
        if enabled:
            self._tensorboard = _summary_writer()(str(self.workdir / "tensorboard"))

    def write(self, kind: str, step: int, values: dict) -> None:
        if not self.enabled:
            return
        record = {"kind": kind, "step": int(step), "time": time.time(), **{k: _plain(v) for k, v in values.items()}}
        with open(self.workdir / "metrics.jsonl", "a") as file:
            file.write(json.dumps(record) + "\n")
        for key, value in record.items():
            if isinstance(value, (int, float)) and key not in ("step", "time"):
                self._tensorboard.add_scalar(f"{kind}/{key}", value, step)
        self._tensorboard.flush()

    def plot(self) -> Path | None:
        """Loss, learning rate and accuracy curves from metrics.jsonl."""
        if not self.enabled or not (self.workdir / "metrics.jsonl").exists():
            return None
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        records = [json.loads(line) for line in open(self.workdir / "metrics.jsonl")]
        train = [r for r in records if r["kind"] == "train"]
        evals = [r for r in records if r["kind"] == "eval"]
        figure, axes = plt.subplots(1, 3, figsize=(15, 4))
        axes[0].plot([r["step"] for r in train], [r["loss"] for r in train])
        axes[0].set(title="training loss", xlabel="step")
        axes[1].plot([r["step"] for r in train], [r["lr"] for r in train])
        axes[1].set(title="learning rate", xlabel="step")
        for key in ("train_acc1", "clip_acc1", "video_acc1"):
            source = train if key == "train_acc1" else evals
            axes[2].plot([r["step"] for r in source], [r[key] for r in source], marker="." if source is evals else None, label=key)
        axes[2].set(title="accuracy", xlabel="step", ylim=(0, 1))
        axes[2].legend()
        figure.tight_layout()
        path = self.workdir / "plots.png"
        figure.savefig(path, dpi=80)
        plt.close(figure)
        return path

    def close(self):
        if self._tensorboard is not None:
            self._tensorboard.close()


def _plain(value):
    value = np.asarray(value)
    return value.item() if value.ndim == 0 else value.tolist()
