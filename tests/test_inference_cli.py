"""predict and extract on generated videos with random weights."""
import numpy as np
import pytest
import torch

from flax_video import create_model, extract, predict
from flax_video.inference import video_clips
from flax_video.weights import EvalTransform
from flax_video.pretrained import save_variables
from flax_video.video import write_video
from tests.torch_reference import torch_model

CLIP_ARGS = ["--clips", "2", "--clip-len", "4"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """Two videos (one in a subfolder), one corrupt file, and r3d_10 weights
    both as a converted directory and as a torchvision .pth."""
    root = tmp_path_factory.mktemp("inference")
    rng = np.random.default_rng(0)
    videos = root / "videos"
    (videos / "sub").mkdir(parents=True)
    write_video(videos / "a.mp4", rng.integers(0, 256, (12, 64, 80, 3), dtype=np.uint8), fps=15)
    write_video(videos / "sub" / "b.mp4", rng.integers(0, 256, (10, 48, 64, 3), dtype=np.uint8), fps=15)
    (videos / "broken.mp4").write_bytes(b"\x00\x01 definitely not a video" * 100)
    torch.manual_seed(0)
    reference = torch_model("r3d_10", num_classes=400)
    with torch.no_grad():
        reference.fc.weight.mul_(100)  # confident enough that the ranking is stable
    pth = root / "r3d_10.pth"
    torch.save(reference.state_dict(), pth)
    from convert import torchvision_to_flax
    variables = torchvision_to_flax(reference.state_dict(), "r3d_10")
    save_variables(variables, root / "converted", "r3d_10", 400)
    return root, videos, variables


def expected_probabilities(variables, video):
    clips, _ = video_clips(video, 2, EvalTransform(clip_len=4, fps=15))
    logits = np.asarray(create_model("r3d_10").apply(variables, clips))
    return predict.softmax(logits).mean(axis=0)


def parse(stdout):
    results, current = {}, None
    for line in stdout.splitlines():
        if not line.startswith("  "):
            current = line
            results[current] = []
        else:
            probability, label = line.strip().split("  ", 1)
            results[current].append((float(probability), label))
    return results


@pytest.mark.parametrize("weights", ["converted", "r3d_10.pth"])
def test_predict_prints_topk_and_reports_bad_videos(setup, weights, capsys):
    root, videos, variables = setup
    paths = [str(videos / "a.mp4"), str(videos / "broken.mp4"), str(videos / "sub" / "b.mp4")]
    status = predict.main(paths + ["--weights", str(root / weights), "--topk", "3"] + CLIP_ARGS)
    out, err = capsys.readouterr()
    assert status == 1
    assert "broken.mp4" in err and "1 of 3 videos failed" in err
    results = parse(out)
    assert list(results) == [paths[0], paths[2]]
    for video, top in results.items():
        probabilities = expected_probabilities(variables, video)
        best = np.argsort(-probabilities)[:3]
        from flax_video import KINETICS400_CLASSES
        assert [label for _, label in top] == [KINETICS400_CLASSES[i] for i in best]
        np.testing.assert_allclose([p for p, _ in top], probabilities[best], atol=1e-4)


def test_predict_exit_status_zero_when_all_succeed_and_clear_error_for_bad_weights(setup, capsys):
    root, videos, _ = setup
    assert predict.main([str(videos / "a.mp4"), "--weights", str(root / "converted")] + CLIP_ARGS) == 0
    assert predict.main([str(videos / "a.mp4"), "--weights", str(root / "nothing")] + CLIP_ARGS) == 2
    assert "error: --weights" in capsys.readouterr().err


def test_extract_writes_features_skips_done_videos_and_lists_failures(setup, tmp_path, capsys):
    root, videos, variables = setup
    out = tmp_path / "features"
    args = ["--weights", str(root / "converted"), "--inputs", str(videos), "--output", str(out)] + CLIP_ARGS
    assert extract.main(args) == 1
    stdout = capsys.readouterr().out
    assert "3 videos, 0 already done, 3 to extract" in stdout
    assert "done: 2 extracted, 0 skipped, 1 failed" in stdout
    assert (out / "failures.tsv").read_text().startswith(str(videos / "broken.mp4"))

    saved = np.load(out / "sub" / "b.npz")
    assert saved["clips"].shape == (2, 512) and saved["mean"].shape == (512,)
    np.testing.assert_allclose(saved["mean"], saved["clips"].mean(axis=0), rtol=1e-6)
    clips, starts = video_clips(videos / "sub" / "b.mp4", 2, EvalTransform(clip_len=4, fps=15))
    np.testing.assert_allclose(saved["clips"], create_model("r3d_10", num_classes=0).apply(variables, clips),
                               rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(saved["clip_starts"], starts)

    before = (out / "a.npz").stat().st_mtime_ns
    (out / "sub" / "b.npz").unlink()  # as if interrupted before b
    assert extract.main(args) == 1
    assert "3 videos, 1 already done, 2 to extract" in capsys.readouterr().out
    assert (out / "a.npz").stat().st_mtime_ns == before
    assert (out / "sub" / "b.npz").exists()
    assert not list(out.rglob(".*tmp*"))


def test_extract_reads_a_list_file(setup, tmp_path, capsys):
    root, videos, _ = setup
    listing = videos / "list.txt"
    listing.write_text("# two videos\na.mp4\nsub/b.mp4\n")
    out = tmp_path / "f"
    assert extract.main(["--weights", str(root / "r3d_10.pth"), "--inputs", str(listing),
                         "--output", str(out)] + CLIP_ARGS) == 0
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.npz")) == [
        "a.npz", "sub/b.npz"]
