"""Clip transforms of torchvision's video classification presets, in numpy
(they run in data-loader workers), on channels-last clips.

Eval (`torchvision.transforms._presets.VideoClassification`): bilinear resize
of the uint8 frames to 128x171 without antialiasing, rounded back to uint8;
center crop 112; scale to [0, 1]; normalize. Train (the reference scripts'
`VideoClassificationPresetTrain`): to float, resize, horizontal flip with
probability 0.5, normalize, random 112 crop; one flip and one crop for the
whole clip. Output `(T, H, W, 3)` float32.
"""
from __future__ import annotations

import numpy as np

KINETICS_MEAN = (0.43216, 0.394666, 0.37645)
KINETICS_STD = (0.22803, 0.22145, 0.216989)
MEAN = np.array(KINETICS_MEAN, np.float32)
STD = np.array(KINETICS_STD, np.float32)
RESIZE = (128, 171)
CROP = 112


def _source_index(out_size: int, in_size: int):
    """Half-pixel source coordinates, as torch's upsample_bilinear2d computes
    them (align_corners=False): floor index, its neighbour, and the weights."""
    scale = np.float32(in_size / out_size)
    src = np.maximum((np.arange(out_size, dtype=np.float32) + np.float32(0.5)) * scale - np.float32(0.5), 0)
    low = src.astype(np.int64)
    high = np.minimum(low + 1, in_size - 1)
    frac = (src - low).astype(np.float32)
    return low, high, np.float32(1) - frac, frac


def resize_bilinear(frames: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(T, H, W, C) -> (T, h, w, C) float32, bilinear without antialiasing."""
    frames = frames.astype(np.float32, copy=False)
    top, bottom, w_top, w_bottom = _source_index(size[0], frames.shape[1])
    left, right, w_left, w_right = _source_index(size[1], frames.shape[2])
    # Along the width first, then the height (closest to torch's rounding).
    cols = w_left[:, None] * frames[:, :, left] + w_right[:, None] * frames[:, :, right]
    return w_top[:, None, None] * cols[:, top] + w_bottom[:, None, None] * cols[:, bottom]


def normalize(frames: np.ndarray, mean=MEAN, std=STD) -> np.ndarray:
    return ((frames - np.float32(mean)) / np.float32(std)).astype(np.float32)


def center_crop_box(height: int, width: int, size: int = CROP) -> tuple[int, int]:
    # torchvision: int(round((h - size) / 2.0))
    return int(round((height - size) / 2.0)), int(round((width - size) / 2.0))


def _resize_as_uint8(clip: np.ndarray, resize) -> np.ndarray:
    """The eval preset resizes uint8 frames, so values are rounded back to
    0..255 (kept as float32)."""
    return np.round(resize_bilinear(clip, resize)).clip(0, 255)


def eval_transform(clip: np.ndarray, resize=RESIZE, crop: int = CROP, mean=MEAN, std=STD) -> np.ndarray:
    """uint8 (T, H, W, 3) -> normalized float32 (T, crop, crop, 3)."""
    resized = _resize_as_uint8(clip, resize)
    top, left = center_crop_box(*resized.shape[1:3], crop)
    return normalize(resized[:, top:top + crop, left:left + crop] / np.float32(255), mean, std)


def three_crop_eval_transform(clip: np.ndarray, resize=RESIZE, crop: int = CROP) -> np.ndarray:
    """Left, center and right crops along the long side: (3, T, crop, crop, 3)."""
    resized = normalize(_resize_as_uint8(clip, resize) / np.float32(255))
    height, width = resized.shape[1:3]
    top, center = center_crop_box(height, width, crop)
    if height > width:  # portrait: crops along the height
        starts = [(0, center), (top, center), (height - crop, center)]
    else:
        starts = [(top, 0), (top, center), (top, width - crop)]
    return np.stack([resized[:, y:y + crop, x:x + crop] for y, x in starts])


def train_transform(clip: np.ndarray, rng: np.random.Generator, resize=RESIZE, crop: int = CROP) -> np.ndarray:
    """uint8 (T, H, W, 3) -> normalized float32 (T, crop, crop, 3) with one
    random horizontal flip and one random crop for the whole clip."""
    resized = resize_bilinear(clip.astype(np.float32) / np.float32(255), resize)
    if rng.random() < 0.5:
        resized = resized[:, :, ::-1]
    top = int(rng.integers(0, resized.shape[1] - crop + 1))
    left = int(rng.integers(0, resized.shape[2] - crop + 1))
    return normalize(resized[:, top:top + crop, left:left + crop])
