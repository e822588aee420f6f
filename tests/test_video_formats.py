"""Decoding across containers and codecs, written here with PyAV as real
datasets hold them (Kinetics: MP4/H.264 and WebM/VP9; UCF101: XviD in AVI;
HMDB51: DivX in AVI), with odd sizes, variable frame rates, an audio stream
first, rotation metadata, one frame, no video stream, and truncated files.
(The PyAV wheel here has no XviD encoder: "XviD-like" is FFmpeg's MPEG-4
Part 2 with the XVID tag, as XviD writes it.)"""
import fractions

import av
import numpy as np
import pytest

from flax_video import sampling
from flax_video.video import VideoDecodeError, probe_video, read_clip, read_video

FRAMES = 24


def content(num_frames=FRAMES, height=64, width=80):
    """Frames whose brightness is their index (recoverable after lossy coding)
    over a texture that moves."""
    y, x = np.mgrid[:height, :width]
    frames = [np.stack([(x * 3 + 7 * t) % 256 // 4 + 40 * (t % 5), (y * 2) % 256 // 4 + 8 * t, np.full_like(x, 8 * t)],
                       -1) for t in range(num_frames)]
    return np.clip(np.array(frames), 0, 255).astype(np.uint8)


def write(path, codec, frames, fps=30, pix_fmt="yuv420p", options=None, pts=None, audio_first=False,
          codec_tag=None):
    """Encode `frames` with PyAV; `pts` (in 1/1000 s) gives a variable frame
    rate; `audio_first` adds an AAC stream before the video stream."""
    with av.open(str(path), mode="w") as container:
        audio = container.add_stream("aac", rate=16000) if audio_first else None
        rate = fractions.Fraction(fps).limit_denominator(1001)
        stream = container.add_stream(codec, rate=rate)
        stream.height, stream.width = frames.shape[1:3]
        stream.pix_fmt = pix_fmt
        stream.options = options or {}
        if codec_tag:
            stream.codec_tag = codec_tag
        if pts is not None:
            stream.time_base = fractions.Fraction(1, 1000)
            stream.codec_context.time_base = fractions.Fraction(1, 1000)
        if audio is not None:
            samples = np.zeros((1, 16000 * len(frames) // int(fps)), np.float32)
            chunk = audio.codec_context.frame_size or 1024
            for start in range(0, samples.shape[1] - chunk + 1, chunk):
                frame = av.AudioFrame.from_ndarray(samples[:, start:start + chunk], format="fltp", layout="mono")
                frame.sample_rate, frame.pts = 16000, start
                for packet in audio.encode(frame):
                    container.mux(packet)
            for packet in audio.encode():
                container.mux(packet)
        for i, image in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
            if pts is not None:
                frame.pts, frame.time_base = pts[i], fractions.Fraction(1, 1000)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def write_audio_only(path):
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("aac", rate=16000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
        frame.sample_rate, frame.pts = 16000, 0
        for packet in list(stream.encode(frame)) + list(stream.encode()):
            container.mux(packet)


H264 = dict(codec="libx264", options={"g": "8", "preset": "veryfast", "crf": "18"})
CASES = {
    "mp4_h264_yuv420p.mp4": H264,
    "mp4_h264_yuvj420p.mp4": dict(H264, pix_fmt="yuvj420p"),
    "mp4_hevc.mp4": dict(codec="libx265", options={"x265-params": "log-level=none:keyint=8"}),
    "mp4_mpeg4_part2.mp4": dict(codec="mpeg4", options={"g": "8", "qscale": "2"}),
    "webm_vp9.webm": dict(codec="libvpx-vp9", options={"g": "8", "deadline": "realtime", "cpu-used": "8"}),
    "webm_vp8.webm": dict(codec="libvpx", options={"g": "8", "deadline": "realtime", "cpu-used": "8"}),
    "avi_xvid.avi": dict(codec="mpeg4", options={"g": "8", "qscale": "2"}, codec_tag="XVID"),
    "avi_mjpeg.avi": dict(codec="mjpeg", pix_fmt="yuvj420p", options={"q:v": "2"}),
    "mkv_h264.mkv": H264,
    "odd_size_171x97_vp9.webm": dict(codec="libvpx-vp9", size=(97, 171), options={"deadline": "realtime"}),
    "odd_size_171x97_mjpeg.avi": dict(codec="mjpeg", pix_fmt="yuvj444p", size=(97, 171), options={"q:v": "2"}),
    "audio_stream_first.mp4": dict(H264, audio_first=True),
    "one_frame.mp4": dict(H264, frames=1),
}


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    root = tmp_path_factory.mktemp("formats")
    for name, case in CASES.items():
        case = dict(case)
        height, width = case.pop("size", (64, 80))
        frames = content(case.pop("frames", FRAMES), height, width)
        write(root / name, case.pop("codec"), frames, **case)
    return root


def brightness_index(frame):
    """The source frame's index, read back from its blue channel (8 * t)."""
    return int(round(float(frame[..., 2].mean()) / 8))


@pytest.mark.parametrize("name", CASES)
def test_every_format_decodes_and_clips_equal_a_full_decode(videos, name):
    path = videos / name
    case = CASES[name]
    height, width = case.get("size", (64, 80))
    count = case.get("frames", FRAMES)
    info = probe_video(path)
    assert (info.num_frames, info.height, info.width) == (count, height, width)
    assert info.fps == pytest.approx(30)
    video = read_video(path)
    assert video.frames.shape == (count, height, width, 3)
    assert [brightness_index(f) for f in video.frames] == list(range(count))
    for fps in (None, 15):
        full = read_video(path, fps).frames
        for start in (0, 3, count // 2):
            np.testing.assert_array_equal(read_clip(path, info, start, 4, fps), sampling.take_clip(full, start, 4),
                                          err_msg=f"{name} fps {fps} start {start}")
    assert [brightness_index(f) for f in read_video(path, 15).frames] == list(range(0, count, 2)) or count == 1


def rotated_copy(source, target):
    """An MP4 whose track header carries a 90-degree display matrix (as
    phones write portrait videos); FFmpeg's muxer no longer takes a rotate tag."""
    import struct
    data = bytearray(source.read_bytes())
    at = data.index(b"tkhd") + 44  # the matrix, after version/flags, times, track id, duration, layer, volume
    data[at:at + 36] = struct.pack(">9i", 0, 65536, 0, -65536, 0, 0, 0, 0, 1 << 30)
    target.write_bytes(bytes(data))


def test_rotation_metadata_is_reported_by_ffmpeg_but_not_applied(videos, tmp_path):
    """Frames come as stored, as torchvision's `read_video` gives them: the
    rotation is left to the user (the model sees stored frames)."""
    rotated = tmp_path / "rotated.mp4"
    rotated_copy(videos / "mp4_h264_yuv420p.mp4", rotated)
    with av.open(str(rotated)) as container:
        assert abs(next(container.decode(video=0)).rotation) == 90
    np.testing.assert_array_equal(read_video(rotated).frames, read_video(videos / "mp4_h264_yuv420p.mp4").frames)


def test_variable_frame_rate_follows_the_timestamps(tmp_path):
    """Frames at known times (ms); at 10 fps each output time takes the last
    frame shown by then, not every third frame of the nominal rate."""
    pts = [0, 40, 80, 200, 240, 400, 440, 480, 800, 1000]
    path = tmp_path / "vfr.mkv"
    write(path, "libx264", content(len(pts)), fps=30, pts=pts, options={"preset": "veryfast", "crf": "10",
                                                                       "bf": "0"})
    assert probe_video(path).fps > 10
    video = read_video(path, fps=10)
    # Outputs at 0, 0.1, ..., 1.0 s (the video lasts 10 x 111 ms): the frame shown at each.
    assert [brightness_index(f) for f in video.frames] == [0, 2, 3, 4, 5, 7, 7, 7, 8, 8, 9]
    info = probe_video(path)
    full = video.frames
    for start in (0, 4):
        np.testing.assert_array_equal(read_clip(path, info, start, 4, fps=10), sampling.take_clip(full, start, 4))


def test_audio_only_and_truncated_files(videos, tmp_path):
    audio_only = tmp_path / "audio_only.m4a"
    write_audio_only(audio_only)
    for read in (read_video, probe_video):
        with pytest.raises(VideoDecodeError, match="no video stream"):
            read(audio_only)

    # The container's index claims 24 frames; the data holds about half.
    whole = (videos / "mkv_h264.mkv").read_bytes()
    truncated = tmp_path / "truncated.mkv"
    truncated.write_bytes(whole[:len(whole) // 2])
    frames = read_video(truncated).frames
    assert 0 < len(frames) < FRAMES
    assert [brightness_index(f) for f in frames] == list(range(len(frames)))
    info = probe_video(truncated)
    assert info.num_frames <= FRAMES
    np.testing.assert_array_equal(read_clip(truncated, info, 1, 4), sampling.take_clip(frames, 1, 4))


def test_a_folder_dataset_stores_every_readable_format_and_reports_the_audio_only_file(videos, tmp_path):
    import shutil

    from flax_video import data
    root = tmp_path / "videos"
    (root / "train" / "clips").mkdir(parents=True)
    (root / "val" / "clips").mkdir(parents=True)
    for path in videos.iterdir():
        shutil.copy(path, root / "train" / "clips" / path.name)
    shutil.copy(videos / "webm_vp9.webm", root / "val" / "clips" / "webm_vp9.webm")
    write_audio_only(root / "train" / "clips" / "audio_only.mp4")
    built = data.prepare("folder", tmp_path / "tfds", manual_dir=str(root), dataset_name="formats", workers=1)
    assert built.info.splits["train"].num_examples == len(CASES)
    problems = {p["file"].split("/")[-1]: p["reason"] for p in built.info.metadata["problems"]["train"]}
    assert list(problems) == ["audio_only.mp4"] and "no video stream" in problems["audio_only.mp4"]
