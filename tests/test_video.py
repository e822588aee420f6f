"""Decoding, clip sampling and the presets' transforms."""
import numpy as np
import pytest
import torch

from flax_video import sampling, transforms
from flax_video.video import VideoDecodeError, read_video, resample_indices, write_video
from tests.torch_reference import tv  # noqa: F401  (makes torchvision's Python code importable)


def moving_square(num_frames=30, height=48, width=64):
    """Frames whose content encodes the frame index (a square moving right)."""
    frames = np.full((num_frames, height, width, 3), 40, np.uint8)
    for t in range(num_frames):
        frames[t, 16:32, t:t + 16] = 220
    return frames


@pytest.fixture(scope="module")
def video_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("videos") / "square.mp4"
    write_video(path, moving_square(), fps=30)
    return path


def square_position(frame):
    return int(np.argmax(frame[24, :, 0] > 128))


def test_decodes_every_frame_in_order(video_file):
    video = read_video(video_file)
    assert video.frames.shape == (30, 48, 64, 3) and video.frames.dtype == np.uint8
    assert video.source_fps == 30 and video.source_frames == 30
    assert [square_position(f) for f in video.frames] == list(range(30))


def test_resampling_to_15_fps_keeps_every_second_frame(video_file):
    video = read_video(video_file, fps=15)
    assert video.fps == 15 and len(video.frames) == 15
    assert [square_position(f) for f in video.frames] == list(range(0, 30, 2))


def test_resample_indices_as_torchvision():
    assert list(resample_indices(10, 30, 15)) == [0, 2, 4, 6, 8]
    assert list(resample_indices(10, 25, 15)) == [0, 1, 3, 5, 6, 8]  # floor(i * 25/15), 6 frames


@pytest.mark.parametrize("content,problem", [(b"", "empty"), (b"not a video at all" * 50, "not a readable video")])
def test_bad_files_raise_a_clear_error(tmp_path, content, problem):
    path = tmp_path / "bad.mp4"
    path.write_bytes(content)
    with pytest.raises(VideoDecodeError, match=problem):
        read_video(path)
    with pytest.raises(VideoDecodeError, match="no such file"):
        read_video(tmp_path / "missing.mp4")


def test_truncated_file_gives_the_frames_before_the_damage(video_file, tmp_path):
    data = video_file.read_bytes()
    truncated = tmp_path / "truncated.mp4"
    truncated.write_bytes(data[: len(data) * 2 // 3])
    try:
        frames = read_video(truncated).frames
    except VideoDecodeError:
        return  # mp4 index lost with the tail: refused cleanly, which is also fine
    assert 0 < len(frames) <= 30


def test_uniform_and_random_clip_starts():
    assert list(sampling.uniform_clip_starts(100, 16, 5)) == [0, 21, 42, 63, 84]
    assert list(sampling.uniform_clip_starts(10, 16, 3)) == [0, 0, 0]
    starts = sampling.random_clip_starts(40, 16, 5, np.random.default_rng(0))
    assert len(set(starts)) == 5 and all(0 <= s <= 24 for s in starts)
    assert len(sampling.random_clip_starts(17, 16, 5, np.random.default_rng(0))) == 2


def test_short_video_is_looped_to_a_full_clip():
    frames = np.arange(5)[:, None, None, None] * np.ones((1, 2, 2, 3), np.uint8)
    clip = sampling.take_clip(frames, 0, 12)
    assert list(clip[:, 0, 0, 0]) == [0, 1, 2, 3, 4, 0, 1, 2, 3, 4, 0, 1]


def torchvision_eval(clip):
    from torchvision.transforms._presets import VideoClassification
    preset = VideoClassification(crop_size=(112, 112), resize_size=(128, 171))
    return preset(torch.from_numpy(clip).permute(0, 3, 1, 2)).permute(1, 2, 3, 0).numpy()


@pytest.mark.parametrize("shape", [(4, 240, 320, 3), (2, 360, 202, 3), (2, 128, 171, 3), (3, 37, 50, 3)])
def test_eval_transform_matches_torchvision(shape):
    """Same values, except where float summation order moves an interpolated
    value across a .5 boundary before rounding to uint8: one level, on about
    0.001% of values (measured)."""
    clip = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    ours = transforms.eval_transform(clip)
    assert ours.shape == (shape[0], 112, 112, 3) and ours.dtype == np.float32
    difference = np.abs(ours - torchvision_eval(clip))
    one_level = 1 / 255 / transforms.STD.min()
    assert difference.max() <= one_level * 1.0001
    assert np.mean(difference > 1e-6) < 1e-4


def test_three_crop_covers_left_center_right():
    clip = np.random.default_rng(0).integers(0, 256, (2, 240, 320, 3), dtype=np.uint8)
    crops = transforms.three_crop_eval_transform(clip)
    assert crops.shape == (3, 2, 112, 112, 3)
    np.testing.assert_array_equal(crops[1], transforms.eval_transform(clip))
    resized = transforms.normalize(np.round(transforms.resize_bilinear(clip, (128, 171))) / np.float32(255))
    np.testing.assert_array_equal(crops[0], resized[:, 8:120, :112])
    np.testing.assert_array_equal(crops[2], resized[:, 8:120, -112:])


def test_train_transform_crops_and_flips_the_whole_clip_alike():
    frame = np.random.default_rng(0).integers(0, 256, (1, 128, 171, 3), dtype=np.uint8)
    clip = np.repeat(frame, 4, axis=0)  # four identical frames
    flipped = 0
    for seed in range(20):
        out = transforms.train_transform(clip, np.random.default_rng(seed))
        assert out.shape == (4, 112, 112, 3) and out.dtype == np.float32
        assert all(np.array_equal(out[0], frame) for frame in out[1:])
        full = transforms.normalize(transforms.resize_bilinear(clip / np.float32(255), (128, 171)))
        flipped += not any(np.array_equal(out[0], full[0, y:y + 112, x:x + 112])
                           for y in range(17) for x in range(60))
    assert 3 <= flipped <= 17  # about half the clips are flipped
