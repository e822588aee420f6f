"""Datasets (TFDS builders without TensorFlow), clip decoding and the grain loader."""
import csv
import sys
import time

import numpy as np
import pytest

from flax_video import data, sampling
from flax_video.data import loader, synthetic
from flax_video.labels import KINETICS400_CLASSES
from flax_video.video import encode_video, probe_video, read_clip, read_video, write_video


def _video(rng, frames=12, height=48, width=64):
    return rng.integers(0, 256, (frames, height, width, 3), dtype=np.uint8)


def test_tensorflow_is_not_needed():
    # The builders and the loader must work where TensorFlow is absent.
    assert "tensorflow" not in sys.modules


# ---------------------------------------------------------------- decoding

@pytest.mark.parametrize("start", [0, 1, 7, 20, 33, 39])
def test_read_clip_equals_full_decode(start):
    frames = synthetic.render(1, 90, 48, 48, np.random.default_rng(3))
    encoded = encode_video(frames, 30, keyframe_interval=10)
    info = probe_video(encoded)
    assert (info.num_frames, info.fps, info.height, info.width) == (90, 30.0, 48, 48)
    full = read_video(encoded, fps=15).frames
    np.testing.assert_array_equal(read_clip(encoded, info, start, 8, fps=15), sampling.take_clip(full, start, 8))


def test_encoding_is_deterministic():
    # Rendering between encodes matters: it leaves the memory that made x264's
    # macroblock tree vary (~7 of 100 videos re-encoded differently).
    for index in range(60):
        frames = synthetic.render(index % 5, 32, 32, 32, np.random.default_rng([0, index, True]))
        first = encode_video(frames, 15)
        assert all(encode_video(frames, 15) == first for _ in range(2)), f"video {index}"


def test_read_clip_loops_a_video_shorter_than_a_clip():
    encoded = encode_video(_video(np.random.default_rng(0), frames=5), 15)
    clip = read_clip(encoded, probe_video(encoded), 0, 12, fps=15)
    full = read_video(encoded).frames
    np.testing.assert_array_equal(clip, full[np.arange(12) % 5])


# ---------------------------------------------------------------- synthetic

def test_motion_shapes_is_deterministic_and_moves_only_when_it_should():
    for label, name in enumerate(synthetic.CLASSES):
        a = synthetic.render(label, 6, 32, 32, np.random.default_rng(7))
        b = synthetic.render(label, 6, 32, 32, np.random.default_rng(7))
        np.testing.assert_array_equal(a, b)
        change = np.abs(np.diff(a.astype(np.int16), axis=0)).max()
        assert (change == 0) == (name == "still"), name


def test_motion_shapes_flip_keeps_the_class():
    # Left and right slides share a class, so a flipped slide is a slide;
    # vertical motion is unchanged by a horizontal flip.
    rng = np.random.default_rng(0)
    video = synthetic.render(synthetic.CLASSES.index("rising"), 4, 32, 32, rng)
    flipped = video[:, :, ::-1]
    # Same vertical motion: the row profile of the change moves the same way.
    np.testing.assert_array_equal(np.abs(np.diff(video.astype(int), axis=0)).sum(axis=(2, 3)),
                                  np.abs(np.diff(flipped.astype(int), axis=0)).sum(axis=(2, 3)))


@pytest.fixture(scope="module")
def motion_builder(tmp_path_factory):
    return data.prepare("motion_shapes", tmp_path_factory.mktemp("tfds"), workers=1,
                        train_videos=10, validation_videos=5, frames=10, size=32)


def test_motion_shapes_builds_without_tensorflow(motion_builder):
    assert motion_builder.info.splits["train"].num_examples == 10
    source = motion_builder.as_data_source("validation")
    assert len(source) == 5
    record = source[0]
    assert record["video_id"].startswith(b"validation_")
    frames = read_video(record["video"]).frames
    assert frames.shape == (10, 32, 32, 3)
    assert (record["num_frames"], record["height"], record["fps"]) == (10, 32, 15.0)
    assert motion_builder.info.features["label"].names == list(synthetic.CLASSES)
    labels = sorted(int(source[i]["label"]) for i in range(5))
    assert labels == [0, 1, 2, 3, 4]  # balanced: video i has class i % 5
    assert "tensorflow" not in sys.modules


# ---------------------------------------------------------------- folders and Kinetics

def _fill_bad_files(folder):
    (folder / "corrupt.mp4").write_bytes(np.random.default_rng(0).bytes(3000))
    (folder / "empty.mp4").write_bytes(b"")
    (folder / "notes.txt").write_text("not a video")


def _truncate(path):
    content = path.read_bytes()
    path.write_bytes(content[: len(content) // 3])


def test_folder_dataset_reports_every_bad_file(tmp_path):
    rng = np.random.default_rng(1)
    root = tmp_path / "videos"
    for split, count in (("train", 2), ("val", 1)):
        for name in ("jump", "run"):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(count):
                write_video(folder / f"{name}{i}.mp4", _video(rng), fps=15)
    _fill_bad_files(root / "train" / "jump")
    (root / "train" / "swim").mkdir()  # an empty class folder
    write_video(root / "train" / "run" / "cut.mp4", _video(rng, frames=60), fps=15)
    _truncate(root / "train" / "run" / "cut.mp4")

    built = data.prepare("folder", tmp_path / "tfds", manual_dir=str(root), dataset_name="toy", workers=1)
    assert built.info.features["label"].names == ["jump", "run", "swim"]
    assert built.info.splits["train"].num_examples == 4
    assert built.info.splits["validation"].num_examples == 2
    problems = {p["file"].split("/")[-1]: p["reason"] for p in built.info.metadata["problems"]["train"]}
    assert set(problems) == {"corrupt.mp4", "empty.mp4", "notes.txt", "swim", "cut.mp4"}, problems
    assert "empty" in problems["empty.mp4"] and "empty class folder" == problems["swim"]
    # The metadata survives a reload from the directory alone.
    import tensorflow_datasets as tfds

    reloaded = tfds.builder_from_directory(built.data_dir)
    assert len(reloaded.info.metadata["problems"]["train"]) == 5


def test_folder_dataset_reads_ucf101_split_lists(tmp_path):
    rng = np.random.default_rng(2)
    root = tmp_path / "UCF-101"
    for name in ("Archery", "Bowling"):
        (root / name).mkdir(parents=True)
        for group in (1, 2):
            write_video(root / name / f"v_{name}_g0{group}_c01.avi", _video(rng, frames=6), fps=25)
    (tmp_path / "trainlist01.txt").write_text("Archery/v_Archery_g02_c01.avi 1\nBowling/v_Bowling_g02_c01.avi 2\n")
    (tmp_path / "testlist01.txt").write_text("Archery/v_Archery_g01_c01.avi\nBowling/v_Bowling_g01_c01.avi\n")
    built = data.prepare("folder", tmp_path / "tfds", manual_dir=str(root), dataset_name="ucf101_1", workers=1,
                         split_lists={"train": str(tmp_path / "trainlist01.txt"), "test": str(tmp_path / "testlist01.txt")})
    source = built.as_data_source("test")
    assert sorted((r["video_id"].decode(), int(r["label"])) for r in (source[0], source[1])) == [
        ("Archery/v_Archery_g01_c01.avi", 0), ("Bowling/v_Bowling_g01_c01.avi", 1)]


def test_kinetics_class_folders_with_reencoding(tmp_path):
    rng = np.random.default_rng(3)
    manual = tmp_path / "k400"
    for split in ("train", "val"):
        for folder in ("abseiling", "air_drumming", "not_a_kinetics_class"):
            (manual / split / folder).mkdir(parents=True)
            write_video(manual / split / folder / f"{folder[:5]}_{split}.mp4", _video(rng, frames=8, height=60, width=80), fps=30)
    built = data.prepare("kinetics400", tmp_path / "tfds", manual_dir=str(manual), short_side=128, workers=1)
    assert built.info.features["label"].names == list(KINETICS400_CLASSES)
    source = built.as_data_source("train")
    records = sorted((KINETICS400_CLASSES[int(r["label"])], int(r["height"]), int(r["width"]), int(r["num_frames"]))
                     for r in (source[0], source[1]))
    assert records == [("abseiling", 128, 170, 8), ("air drumming", 128, 170, 8)]
    assert read_video(source[0]["video"]).frames.shape == (8, 128, 170, 3)
    reasons = [p["reason"] for p in built.info.metadata["problems"]["validation"]]
    assert reasons == ["not a Kinetics-400 class"]


def test_kinetics_flat_files_with_annotation_csvs(tmp_path):
    rng = np.random.default_rng(4)
    manual = tmp_path / "k400"
    (manual / "videos").mkdir(parents=True)
    rows = [("zumba", "aaaaaaaaaaa", 10, 20, "train"), ("abseiling", "bbbbbbbbbbb", 0, 10, "train"),
            ("yoga", "ccccccccccc", 5, 15, "val"), ("yoga", "missingmiss", 1, 11, "train")]
    for label, youtube_id, start, end, split in rows[:3]:
        write_video(manual / "videos" / f"{youtube_id}_{start:06d}_{end:06d}.mp4", _video(rng, frames=6), fps=15)
    (manual / "videos" / "ddddddddddd_000000_000010.mp4").write_bytes(b"")  # unannotated: ignored
    for name, wanted in (("train.csv", "train"), ("validate.csv", "val")):
        with open(manual / name, "w", newline="") as file:
            writer = csv.writer(file)
            writer.writerow(["label", "youtube_id", "time_start", "time_end", "split"])
            writer.writerows(r for r in rows if r[4] == wanted)
    built = data.prepare("kinetics400", tmp_path / "tfds", manual_dir=str(manual), workers=1)
    train = built.as_data_source("train")
    found = sorted((r["video_id"].decode(), KINETICS400_CLASSES[int(r["label"])]) for r in (train[0], train[1]))
    assert found == [("aaaaaaaaaaa_000010_000020", "zumba"), ("bbbbbbbbbbb_000000_000010", "abseiling")]
    assert built.info.splits["validation"].num_examples == 1
    assert built.info.metadata["problems"]["train"] == [{"file": "missingmiss_000001_000011", "reason": "annotated but not downloaded"}]


def test_missing_kinetics_directory_fails_clearly(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        data.prepare("kinetics400", tmp_path / "tfds", manual_dir=str(tmp_path / "nowhere"))


# ---------------------------------------------------------------- loader

def _records(count=6, frames=20, bad=()):
    rng = np.random.default_rng(5)
    records = []
    for i in range(count):
        encoded = b"\x00broken" if i in bad else encode_video(_video(rng, frames=frames, height=32, width=32), 15)
        records.append({"video": encoded, "label": i % 3, "video_id": f"v{i}".encode(), "fps": 15.0,
                        "num_frames": frames, "height": 32, "width": 32})
    return records


SPEC = loader.ClipSpec(clip_len=4, clips_per_video=3, resize=(20, 24), crop=16)


def _take(iterator, steps):
    return [next(iterator) for _ in range(steps)]


def test_train_batches_are_shaped_for_pmap_and_follow_the_recipe():
    source = _records()
    batches = _take(iter(loader.train_loader(source, SPEC, per_device_batch=3, epochs=2, seed=0,
                                             sharding=loader.Sharding(local_devices=2))), 6)
    assert batches[0]["clip"].shape == (2, 3, 4, 16, 16, 3) and batches[0]["clip"].dtype == np.float32
    assert batches[0]["label"].shape == (2, 3)
    # One epoch is 6 videos x 3 clips = 18 clips = 3 global batches of 6:
    # every video appears exactly clips_per_video times.
    epoch = np.concatenate([b["video"].ravel() for b in batches[:3]])
    np.testing.assert_array_equal(np.bincount(epoch), [3] * 6)
    labels = np.concatenate([b["label"].ravel() for b in batches[:3]])
    np.testing.assert_array_equal(labels, epoch % 3)
    # The next epoch is a different order.
    assert not np.array_equal(epoch, np.concatenate([b["video"].ravel() for b in batches[3:]]))


def test_train_batches_do_not_depend_on_workers_and_resume_exactly():
    source = _records()
    make = lambda workers: iter(loader.train_loader(source, SPEC, per_device_batch=2, epochs=3, seed=4,
                                                    sharding=loader.Sharding(local_devices=2), workers=workers))
    inline = _take(make(0), 7)
    with_workers = make(2)
    first = _take(with_workers, 3)
    state = with_workers.get_state()
    resumed = make(2)
    resumed.set_state(state)
    rest = _take(resumed, 4)
    for expected, got in zip(inline, first + rest):
        for key in expected:
            np.testing.assert_array_equal(expected[key], got[key])


class _CountingSource(list):
    reads = 0

    def __getitem__(self, index):
        self.reads += 1
        return super().__getitem__(index)


def test_the_loader_reads_only_a_few_batches_ahead():
    # grain's default read-ahead is 500 elements (batches here): a whole
    # demo run decoded at start-up, ~19 GB of Kinetics batches.
    source = _CountingSource(_records())
    batches = iter(loader.train_loader(source, SPEC, per_device_batch=2, epochs=50, seed=0))
    next(batches)
    reads, deadline = -1, time.monotonic() + 10
    while reads != source.reads and time.monotonic() < deadline:
        reads = source.reads
        time.sleep(0.5)
    assert 2 <= reads <= 2 * 8, reads  # the first batch, four ahead and two in flight, of 2 clips


def test_processes_split_the_same_global_batch():
    source = _records()
    whole = _take(iter(loader.train_loader(source, SPEC, per_device_batch=2, epochs=1, seed=9,
                                           sharding=loader.Sharding(0, 1, 4))), 2)
    parts = [_take(iter(loader.train_loader(source, SPEC, per_device_batch=2, epochs=1, seed=9,
                                            sharding=loader.Sharding(p, 2, 2))), 2) for p in range(2)]
    for step in range(2):
        joined = np.concatenate([parts[p][step]["clip"] for p in range(2)])
        np.testing.assert_array_equal(joined, whole[step]["clip"])


def test_an_endless_eval_loader_repeats_the_same_pass():
    # The training loop keeps one eval loader (and its workers) for a run.
    source = _records(count=5)
    one_pass = list(loader.eval_loader(source, SPEC, per_device_batch=2, workers=2))
    endless = iter(loader.eval_loader(source, SPEC, per_device_batch=2, workers=2, passes=None))
    repeated = _take(endless, 3 * len(one_pass))
    endless.close()
    for k, got in enumerate(repeated):
        expected = one_pass[k % len(one_pass)]
        for key in expected:
            np.testing.assert_array_equal(expected[key], got[key])


def test_eval_takes_uniform_clips_of_whole_videos_per_process():
    source = _records(count=5)
    per_process = []
    for process in range(2):
        batches = list(loader.eval_loader(source, SPEC, per_device_batch=2, sharding=loader.Sharding(process, 2, 2)))
        per_process.append(batches)
        videos = np.concatenate([b["video"].ravel() for b in batches])
        real = videos[videos >= 0]
        assert sorted(set(real)) == list(range(process, 5, 2))
        np.testing.assert_array_equal(np.bincount(real, minlength=5)[process::2], 3)
        masks = np.concatenate([b["mask"].ravel() for b in batches])
        np.testing.assert_array_equal(masks, videos >= 0)
    assert len(per_process[0]) == len(per_process[1])  # both processes run the same number of steps
    # Clip k of a video starts at the k-th uniformly spaced start.
    spec = loader.ClipSpec(clip_len=4, clips_per_video=3, resize=(32, 32), crop=32)
    first = next(iter(loader.eval_loader(source, spec, per_device_batch=3)))
    frames = read_video(source[0]["video"]).frames
    for k, start in enumerate(sampling.uniform_clip_starts(20, 4, 3)):
        expected = (sampling.take_clip(frames, start, 4) / np.float32(255) - loader.transforms.MEAN) / loader.transforms.STD
        np.testing.assert_allclose(first["clip"][0, k], expected, atol=1e-5)


def test_bad_videos_are_masked_and_counted():
    source = _records(count=4, bad={2})
    batches = list(loader.eval_loader(source, SPEC, per_device_batch=4))
    videos = np.concatenate([b["video"].ravel() for b in batches])
    bad = np.concatenate([b["bad"].ravel() for b in batches])
    mask = np.concatenate([b["mask"].ravel() for b in batches])
    np.testing.assert_array_equal(bad, videos == 2)
    np.testing.assert_array_equal(mask, (videos >= 0) & (videos != 2))


def test_three_crop_eval_gives_three_crops_per_clip():
    spec = loader.ClipSpec(clip_len=4, clips_per_video=1, resize=(20, 30), crop=16, three_crop=True)
    batch = next(iter(loader.eval_loader(_records(count=2), spec, per_device_batch=2)))
    assert batch["clip"].shape == (1, 2, 3, 4, 16, 16, 3)


def test_built_dataset_feeds_worker_processes(motion_builder):
    # The data source is pickled into grain's workers.
    source = motion_builder.as_data_source("train")
    spec = loader.ClipSpec(clip_len=4, clips_per_video=1, resize=(20, 20), crop=16)
    make = lambda workers: next(iter(loader.train_loader(source, spec, per_device_batch=4, epochs=1, seed=0, workers=workers)))
    inline, spawned = make(0), make(1)
    for key in inline:
        np.testing.assert_array_equal(inline[key], spawned[key])
