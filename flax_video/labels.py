"""The 400 Kinetics-400 class names in torchvision's order (its label ids)."""
from __future__ import annotations

from importlib import resources

KINETICS400_CLASSES: tuple[str, ...] = tuple(
    resources.files("flax_video").joinpath("kinetics400_classes.txt")
    .read_text(encoding="utf-8").splitlines())
