"""The demo of each variant on motion_shapes, the embedded dataset:

    python -m train.main --variant NAME        # e.g. r2plus1d (= r2plus1d_18), r3d_34, mc3_152

Every variant is meant to reach >= 90% video acc@1 on the 100 validation
videos within 10 minutes on 2 CPU cores. `result` is the latest measured run
of that command (video / clip acc@1, wall time with the dataset built and
compilation included) on a 2-core AMD EPYC VM with AVX-512, 2026-12-03. Why
each setting is what it is, with the numbers: train/DEMO.md.

What all demos share: 16 clips per step, 1 clip per video and epoch, frames
resized to 20x20 and cropped to 16, a 1-epoch warmup, evaluation on 2 clips
per video, checkpoints at epoch ends only, decoding in the main process.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Demo:
    epochs: int
    decay_at: float  # the lr drops x0.1 at this fraction of the epochs
    lr: float
    head_lr_scale: float
    zero_init_residual: str
    clip_len: int
    fps: float
    eval_every_epochs: int
    result: str


SHARED = dict(per_device_batch=16, clips_per_video=1, resize=(20, 20), crop=16, warmup_epochs=1,
              eval_clips_per_video=2, checkpoint_every=0, workers=0)

# fmt: off
DEMOS = {
    #                          epochs decay  lr    head  zero init  frames fps eval  result
    "r2plus1d_10":       Demo(20, 3 / 4, 0.003, 1,    "none",     8, 15,  2, "99% / 98.5% in 2m55s"),
    "r3d_10":            Demo(20, 3 / 4, 0.003, 1,    "none",     8, 15,  2, "100% / 99.5% in 2m49s"),
    "mc3_10":            Demo(20, 3 / 4, 0.003, 1,    "none",     8, 15,  2, "99% / 97% in 2m19s"),
    "r2plus1d_18":       Demo(20, 3 / 4, 0.003, 1,    "none",     8, 15,  2, "98% / 93.5% in 5m24s"),
    "r3d_18":            Demo(20, 3 / 4, 0.003, 1,    "none",     8, 15,  2, "100% / 98% in 5m55s"),
    "mc3_18":            Demo(20, 3 / 4, 0.003, 1,    "none",     8, 15,  2, "99% / 98% in 4m10s"),
    "r2plus1d_34":       Demo(16, 1 / 2, 0.02,  1,    "all",      4, 7.5, 4, "93% / 90.5% in 5m21s"),
    "r2plus1d_34_ig65m": Demo(16, 1 / 2, 0.02,  1,    "all",      4, 7.5, 4, "97% / 94% in 5m44s"),
    "r3d_34":            Demo(20, 1 / 2, 0.02,  1,    "all",      4, 7.5, 4, "97% / 92.5% in 6m35s"),
    "mc3_34":            Demo(20, 1 / 2, 0.02,  1,    "all",      4, 7.5, 4, "95% / 93.5% in 3m45s"),
    "r2plus1d_50":       Demo(12, 3 / 4, 0.01,  0.1,  "identity", 8, 15,  4, "96% / 95% in 5m38s"),
    "r3d_50":            Demo(12, 3 / 4, 0.01,  0.1,  "identity", 8, 15,  4, "94% / 92% in 4m29s"),
    "mc3_50":            Demo(12, 3 / 4, 0.01,  0.1,  "identity", 8, 15,  4, "95% / 94.5% in 4m06s"),
    "r2plus1d_101":      Demo(8,  3 / 4, 0.02,  0.05, "identity", 4, 7.5, 4, "94% / 90% in 5m06s"),
    "r3d_101":           Demo(10, 3 / 4, 0.01,  0.1,  "identity", 4, 7.5, 4, "96% / 92.5% in 4m41s"),
    "mc3_101":           Demo(12, 3 / 4, 0.01,  0.1,  "identity", 4, 7.5, 4, "99% / 97% in 4m45s"),
    "r2plus1d_152":      Demo(8,  3 / 4, 0.01,  0.1,  "identity", 4, 7.5, 4, "93% / 91.5% in 7m28s"),
    "r3d_152":           Demo(8,  3 / 4, 0.01,  0.1,  "identity", 4, 7.5, 4, "93% / 89% in 5m31s"),
    "mc3_152":           Demo(8,  3 / 4, 0.02,  0.05, "identity", 4, 7.5, 4, "94% / 91% in 5m22s"),
}
# fmt: on


def settings(variant: str, epochs: int | None = None) -> dict:
    """Config values of `variant`'s demo; with `epochs`, the lr still drops
    at the same fraction of them."""
    demo = DEMOS[variant]
    epochs = epochs or demo.epochs
    return dict(SHARED, epochs=epochs, milestones=(epochs * demo.decay_at,), lr=demo.lr,
                head_lr_scale=demo.head_lr_scale, zero_init_residual=demo.zero_init_residual,
                clip_len=demo.clip_len, fps=demo.fps, eval_every_epochs=demo.eval_every_epochs)
