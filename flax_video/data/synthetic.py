"""Motion shapes: a generated video dataset whose classes differ only in motion.

Each video shows one bright object (a rotated bar or ellipse, random colour,
size, aspect and orientation) over a darker, cluttered static background. The class is how
the object moves. Motion wraps around the frame edges, so the object's
position and orientation in any single frame are uniformly distributed
whatever the class: one frame carries no label information and only a model
that sees time can solve the task. The classes are also unchanged by a
horizontal flip (left and right slides are one class, as are the four
diagonal drifts), so the standard flip augmentation is label-preserving.

The object is always brighter than the background: with either polarity, an
edge moving up looks locally like the opposite edge moving down, and
r2plus1d_18 then stayed near chance for hundreds of SGD steps (measured); with
one polarity it learns the task within the demo's budget.

A diagonal drift replaced a spinning object in 3.0.0: at the demo's 16x16
crops the object's orientation is barely resolved after the stride-2 stem,
and r2plus1d_18 mistook 15 of 40 spinning validation clips for still ones
(10 for slides at a faster spin) while it made at most 2 errors on any other
class. A pulsing object (its size oscillating) fared worse: 19 of 40 taken
for still ones.
"""
from __future__ import annotations

import numpy as np

CLASSES = ("rising", "falling", "sliding", "drifting", "still")


def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Static clutter: a dark noisy base colour with 10-20 random blocks, all
    darker than any object."""
    image = np.empty((height, width, 3), np.float32)
    image[:] = rng.uniform(0, 120, size=3)
    for _ in range(rng.integers(10, 20)):
        h, w = rng.integers(2, max(3, height // 5), size=2)
        y, x = rng.integers(0, height - h), rng.integers(0, width - w)
        image[y:y + h, x:x + w] = rng.uniform(0, 120, size=3)
    image += rng.normal(0, 12, size=image.shape)
    return image


def _object_mask(height, width, center, angle, half_sizes, ellipse: bool) -> np.ndarray:
    """Anti-aliased mask of the object, with coordinates wrapped around the
    frame edges (the frame is a torus)."""
    yy, xx = np.mgrid[:height, :width].astype(np.float32)
    dy = (yy - center[0] + height / 2) % height - height / 2
    dx = (xx - center[1] + width / 2) % width - width / 2
    cos, sin = np.cos(angle), np.sin(angle)
    u = (cos * dx + sin * dy) / half_sizes[0]
    v = (-sin * dx + cos * dy) / half_sizes[1]
    if ellipse:
        distance = np.sqrt(u * u + v * v)
    else:
        distance = np.maximum(np.abs(u), np.abs(v))
    # Soft edge about one pixel wide.
    return np.clip((1 - distance) * min(half_sizes) + 0.5, 0, 1)


def render(label: int, num_frames: int, height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """One video of class `CLASSES[label]`: uint8 (num_frames, height, width, 3)."""
    name = CLASSES[label]
    background = _background(rng, height, width)
    size = min(height, width)
    long_half = rng.uniform(0.25, 0.35) * size
    half_sizes = (long_half, long_half / rng.uniform(1.8, 3.0))
    ellipse = bool(rng.integers(2))
    color = rng.uniform(180, 255, size=3)
    center = rng.uniform(0, 1, size=2) * (height, width)
    angle = rng.uniform(0, 2 * np.pi)
    speed = rng.uniform(0.06, 0.1) * size  # pixels per frame
    direction = rng.choice([-1.0, 1.0])
    vertical = rng.choice([-1.0, 1.0])
    diagonal = speed / np.sqrt(2)
    velocity = {"rising": (-speed, 0.0), "falling": (speed, 0.0), "sliding": (0.0, direction * speed),
                "drifting": (vertical * diagonal, direction * diagonal)}.get(name, (0.0, 0.0))
    video = np.empty((num_frames, height, width, 3), np.uint8)
    for t in range(num_frames):
        position = (center[0] + t * velocity[0], center[1] + t * velocity[1])
        mask = _object_mask(height, width, position, angle, half_sizes, ellipse)[..., None]
        video[t] = np.clip(background * (1 - mask) + color * mask, 0, 255).astype(np.uint8)
    return video
