"""Published weights by name, served without the internet: a local HTTP server
on 127.0.0.1 (`FLAX_VIDEO_MIRROR`) holds randomized torchvision mc3_18 weights
under a published-style file name, and the registry's mc3_18 entry is pointed
at that file's hash."""
import dataclasses
import hashlib
import http.server
import subprocess
import sys
import textwrap
import threading

import jax
import numpy as np
import pytest
import torch

import flax_video
from convert import torchvision_to_flax
from flax_video import hub, weights
from flax_video.inference import eval_transform_of, load_weights
from tests.torch_reference import randomize_, torch_model
from tests.train_helpers import ROOT

NAME = "mc3_18"
CLIP = np.random.RandomState(0).standard_normal((1, 4, 32, 32, 3)).astype(np.float32)


class Server(http.server.ThreadingHTTPServer):
    """Serves `root`; counts the GETs of each file; `/truncated/NAME` sends
    half of NAME under its full Content-Length, then hangs up."""

    def __init__(self, root):
        self.root, self.gets = root, {}

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(handler):  # noqa: N805
                truncated = handler.path.startswith("/truncated/")
                name = handler.path.rsplit("/", 1)[-1]
                self.gets[name] = self.gets.get(name, 0) + 1
                path = self.root / name
                if not path.is_file():
                    handler.send_error(404)
                    return
                data = path.read_bytes()
                handler.send_response(200)
                handler.send_header("Content-Length", str(len(data)))
                handler.end_headers()
                handler.wfile.write(data[:len(data) // 2] if truncated else data)

            def log_message(handler, *args):  # noqa: N805
                pass

        super().__init__(("127.0.0.1", 0), Handler)

    @property
    def url(self):
        return f"http://127.0.0.1:{self.server_address[1]}"


def publish(root, name):
    """Randomized torchvision weights of `name` saved as its publisher would
    name the file: `root/{name}-{sha256[:8]}.pth`."""
    torch.manual_seed(0)
    reference = randomize_(torch_model(name), seed=1).eval()
    staging = root / "staging.pth"
    torch.save(reference.state_dict(), staging)
    sha256 = hashlib.sha256(staging.read_bytes()).hexdigest()
    path = root / f"{name}-{sha256[:8]}.pth"
    staging.rename(path)
    return path, sha256, reference


def point_entry_at(monkeypatch, name, path, sha256):
    """The registry's entry for `name`, with the publisher's URL but the
    served file's name and hash."""
    entry = weights.get_weights(name)
    monkeypatch.setitem(weights.WEIGHTS, entry.name, dataclasses.replace(
        entry, url=entry.url.rsplit("/", 1)[0] + "/" + path.name, sha256=sha256[:8]))


@pytest.fixture(scope="module")
def published(tmp_path_factory):
    """mc3_18's file, state dict and hash, and a server holding it."""
    root = tmp_path_factory.mktemp("publisher")
    path, sha256, reference = publish(root, NAME)
    server = Server(root)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield dict(path=path, sha256=sha256, reference=reference, server=server,
               variables=torchvision_to_flax(reference.state_dict(), NAME))
    server.shutdown()


@pytest.fixture
def env(published, tmp_path, monkeypatch):
    """Empty caches, the mirror set, and the registry's entry pointed at the file."""
    monkeypatch.delenv("FLAX_VIDEO_OFFLINE", raising=False)
    monkeypatch.setenv("FLAX_VIDEO_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("FLAX_VIDEO_MIRROR", published["server"].url)
    point_entry_at(monkeypatch, NAME, published["path"], published["sha256"])
    published["server"].gets.clear()
    return dict(published, home=tmp_path / "home", torch_hub=tmp_path / "torch" / "hub" / "checkpoints",
                file_name=published["path"].name)


def cache_files(home):
    return sorted(str(p.relative_to(home)) for p in home.rglob("*") if p.is_file() and "locks" not in p.parts)


def logits(variables, name=NAME, num_classes=400):
    return np.asarray(jax.jit(flax_video.create_model(name, num_classes=num_classes).apply)(variables, CLIP))


def assert_same_tree(a, b):
    jax.tree_util.tree_map(np.testing.assert_array_equal, a, b)


def test_download_then_cache_hit_gives_the_converters_variables(env):
    model, variables = flax_video.load_pretrained(NAME, progress=False)
    assert env["server"].gets == {env["file_name"]: 1}
    assert_same_tree(variables, env["variables"])
    ours = np.asarray(jax.jit(model.apply)(variables, CLIP))
    np.testing.assert_array_equal(ours, logits(env["variables"]))
    with torch.no_grad():
        theirs = env["reference"](torch.from_numpy(CLIP).permute(0, 4, 1, 2, 3)).numpy()
    np.testing.assert_allclose(ours, theirs, atol=1e-4)
    assert cache_files(env["home"]) == [f"checkpoints/{env['file_name']}"] + sorted(
        f"converted/{env['file_name'][:-4]}/{p}" for p in cache_files(env["home"] / "converted" / env["file_name"][:-4]))

    _, again = flax_video.load_pretrained(f"{NAME}.kinetics400", progress=False)
    assert env["server"].gets == {env["file_name"]: 1}  # not fetched again
    assert_same_tree(again, env["variables"])


def test_a_file_in_torchs_hub_cache_is_used_without_a_download(env, monkeypatch):
    env["torch_hub"].mkdir(parents=True)
    (env["torch_hub"] / env["file_name"]).write_bytes(env["path"].read_bytes())
    monkeypatch.setenv("FLAX_VIDEO_OFFLINE", "1")
    _, variables = flax_video.load_pretrained(NAME, progress=False)
    assert env["server"].gets == {}
    assert_same_tree(variables, env["variables"])
    assert not (env["home"] / "checkpoints" / env["file_name"]).exists()  # torch's copy is not duplicated


def test_hash_mismatch_names_both_hashes_and_leaves_nothing(env, monkeypatch):
    entry = weights.get_weights(NAME)
    monkeypatch.setitem(weights.WEIGHTS, entry.name, dataclasses.replace(entry, sha256="00000000"))
    with pytest.raises(hub.ChecksumError) as error:
        flax_video.load_pretrained(NAME, progress=False)
    assert env["sha256"] in str(error.value) and "00000000" in str(error.value)
    assert cache_files(env["home"]) == []


def test_interrupted_download_leaves_nothing(env, monkeypatch):
    monkeypatch.setenv("FLAX_VIDEO_MIRROR", env["server"].url + "/truncated")
    with pytest.raises(hub.WeightsUnavailable, match="stopped at"):
        flax_video.load_pretrained(NAME, progress=False)
    assert cache_files(env["home"]) == []
    monkeypatch.setenv("FLAX_VIDEO_MIRROR", env["server"].url)
    flax_video.load_pretrained(NAME, progress=False)  # and the next try starts clean
    assert cache_files(env["home"])[0] == f"checkpoints/{env['file_name']}"


@pytest.mark.parametrize("how", ["offline", "connection refused"])
def test_no_network_says_where_to_put_the_file(env, monkeypatch, how):
    if how == "offline":
        monkeypatch.setenv("FLAX_VIDEO_OFFLINE", "1")
    else:
        closed = Server(env["path"].parent)  # bound, never served, then closed: refuses connections
        closed.server_close()
        monkeypatch.setenv("FLAX_VIDEO_MIRROR", closed.url)
    with pytest.raises(hub.WeightsUnavailable) as error:
        flax_video.load_pretrained(NAME, progress=False)
    message = str(error.value)
    assert weights.get_weights(NAME).url in message
    assert env["file_name"] in message and str(env["home"] / "checkpoints" / env["file_name"]) in message
    assert cache_files(env["home"]) == []


def test_other_class_counts_reinitialize_the_head_and_0_drops_it(env):
    _, ten = flax_video.load_pretrained(NAME, num_classes=10, progress=False)
    head = ten["params"]["fc"]
    assert head["kernel"].shape == (512, 10) and not head["bias"].any()
    assert 0.005 < head["kernel"].std() < 0.015  # torchvision's normal(0, 0.01)
    assert_same_tree({k: v for k, v in ten["params"].items() if k != "fc"},
                     {k: v for k, v in env["variables"]["params"].items() if k != "fc"})
    backbone, features = flax_video.load_pretrained(NAME, num_classes=0, progress=False)
    assert "fc" not in features["params"] and backbone.apply(features, CLIP).shape == (1, 512)


def test_create_model_pretrained_is_bound_to_the_weights(env):
    model = flax_video.create_model(NAME, pretrained=True, progress=False)
    np.testing.assert_allclose(np.asarray(model(CLIP)), logits(env["variables"]), rtol=1e-5, atol=1e-5)
    assert_same_tree(model.variables, env["variables"])


def test_names_without_weights_list_those_with_them():
    with pytest.raises(ValueError) as error:
        flax_video.load_pretrained("r3d_34")
    for name in flax_video.list_models(pretrained=True):
        assert name in str(error.value)
    assert flax_video.list_models("r2plus1d_34*", pretrained=True) == [
        "r2plus1d_34_ig65m.ig65m_kinetics_clip32", "r2plus1d_34_ig65m.ig65m_kinetics_clip8",
        "r2plus1d_34_ig65m.ig65m_clip32", "r2plus1d_34_ig65m.ig65m_clip8"]


def test_entries_state_their_models_size_and_cost():
    """Parameter counts are the Flax model's; GFLOPs are torch's multiply-add
    count of one clip (`torch.utils.flop_counter`, as torchvision counts)."""
    from torch.utils.flop_counter import FlopCounterMode
    for name in flax_video.list_models(pretrained=True):
        entry = flax_video.get_weights(name)
        assert entry.file_name.rsplit("-", 1)[1] == f"{entry.sha256}.pth"
        model = flax_video.create_model(entry.model, num_classes=entry.num_classes)
        shapes = jax.eval_shape(model.init, jax.random.key(0), CLIP)["params"]
        assert sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(shapes)) == entry.num_params, name
        with torch.device("meta"):
            reference = torch_model(entry.model, entry.num_classes).eval()
            with FlopCounterMode(display=False) as counter:
                reference(torch.zeros(1, 3, entry.transform.clip_len, 112, 112))
        assert counter.get_total_flops() / 2e9 == pytest.approx(entry.gflops, abs=1e-3), name
        assert entry.categories is None or len(entry.categories) == entry.num_classes


def test_cli_paths_take_names(env, tmp_path):
    variables, model_name = load_weights(NAME)  # what predict, extract and --init-from call
    assert model_name == NAME
    assert_same_tree(variables, env["variables"])
    with pytest.raises(ValueError, match="not r3d_18"):
        load_weights(NAME, "r3d_18")
    assert eval_transform_of(NAME) == weights.EvalTransform(clip_len=16, fps=15)
    assert eval_transform_of("r2plus1d_34_ig65m.ig65m_clip8").clip_len == 8
    assert eval_transform_of(str(tmp_path / "r2plus1d_34_clip32_ig65m_from_scratch-449a7af9.pth")).fps is None
    assert eval_transform_of(NAME, clip_len=4).clip_len == 4

    from convert.__main__ import main as convert_main
    assert convert_main(["torch2flax", "--input", NAME, "--output", str(tmp_path / "out")]) == 0
    assert_same_tree(flax_video.load_variables(tmp_path / "out"), env["variables"])
    assert env["server"].gets == {env["file_name"]: 1}


def test_predict_takes_a_name(env, tmp_path, capsys):
    from flax_video import predict
    from flax_video.video import write_video
    video = tmp_path / "video.mp4"
    write_video(video, np.random.default_rng(0).integers(0, 256, (6, 48, 64, 3), dtype=np.uint8), fps=15)
    assert predict.main([str(video), "--weights", NAME, "--clips", "1", "--clip-len", "2", "--topk", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == str(video) and len(lines) == 3
    assert lines[1].split("  ", 2)[2] in flax_video.KINETICS400_CLASSES


def test_two_processes_loading_at_once_share_one_download(env):
    script = textwrap.dedent(f"""
        import dataclasses, hashlib, sys
        import numpy as np, jax
        from flax_video import load_pretrained, weights
        entry = weights.get_weights("{NAME}")
        weights.WEIGHTS[entry.name] = dataclasses.replace(entry, url="{weights.get_weights(NAME).url}",
                                                          sha256="{weights.get_weights(NAME).sha256}")
        _, variables = load_pretrained("{NAME}", progress=False)
        digest = hashlib.sha256()
        for leaf in jax.tree_util.tree_leaves(variables):
            digest.update(np.ascontiguousarray(leaf).tobytes())
        print(digest.hexdigest())
    """)
    runs = [subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True) for _ in range(2)]
    outputs = [run.communicate(timeout=300) for run in runs]
    assert [run.returncode for run in runs] == [0, 0], [err for _, err in outputs]
    digest = hashlib.sha256()
    for leaf in jax.tree_util.tree_leaves(env["variables"]):
        digest.update(np.ascontiguousarray(leaf).tobytes())
    assert [out.strip() for out, _ in outputs] == [digest.hexdigest()] * 2
    assert env["server"].gets == {env["file_name"]: 1}


@pytest.fixture(scope="module")
def r2plus1d_18_file(published):
    """Randomized r2plus1d_18 weights beside mc3_18's on the server: the
    README's examples name them."""
    path, sha256, _ = publish(published["path"].parent, "r2plus1d_18")
    return path, sha256


def readme_snippet(marker):
    readme = (ROOT / "README.md").read_text()
    return readme.split(f"<!-- {marker} -->\n```python\n", 1)[1].split("```", 1)[0]


def test_readme_quick_start_labels_a_video(env, r2plus1d_18_file, tmp_path, monkeypatch, capsys):
    """The README's quick start as written, on r2plus1d_18 weights served
    locally and a generated video."""
    from flax_video.video import write_video
    snippet = readme_snippet("quickstart")
    point_entry_at(monkeypatch, "r2plus1d_18", *r2plus1d_18_file)
    frames = np.random.default_rng(0).integers(0, 256, (40, 120, 160, 3), dtype=np.uint8)
    write_video(tmp_path / "video.mp4", frames, fps=30)
    monkeypatch.chdir(tmp_path)
    exec(snippet, {})
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 5
    probabilities = [float(line.split("  ", 1)[0]) for line in lines]
    assert probabilities == sorted(probabilities, reverse=True)
    assert all(line.split("  ", 1)[1] in flax_video.KINETICS400_CLASSES for line in lines)


def test_readme_backbone_in_a_users_jitted_step(env, r2plus1d_18_file, monkeypatch):
    """The README's example of the pretrained backbone inside a user's own
    jitted training step."""
    point_entry_at(monkeypatch, "r2plus1d_18", *r2plus1d_18_file)
    namespace = {}
    exec(readme_snippet("backbone-example"), namespace)
    losses = namespace["losses"]
    assert len(losses) == 3 and losses[-1] < losses[0], losses
