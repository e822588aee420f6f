"""Weight files in and out, the CLI, strict validation and load_variables."""
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
import torch

import flax_video
from convert import ConversionError, flax_to_torchvision, infer_variant, read_state_dict, torchvision_to_flax
from convert.__main__ import main
from flax_video.registry import list_models
from tests.torch_reference import torch_model


@pytest.fixture(scope="module")
def r3d(tmp_path_factory):
    """A small torchvision model with trained-looking BatchNorm statistics, saved
    three ways: bare .pth, reference-script checkpoint, .safetensors."""
    torch.manual_seed(0)
    model = torch_model("r3d_10", num_classes=5)
    with torch.no_grad():
        model.train()(torch.randn(2, 3, 4, 32, 32))  # moves running stats and counters
    folder = tmp_path_factory.mktemp("weights")
    state_dict = model.state_dict()
    torch.save(state_dict, folder / "bare.pth")
    torch.save({"model": state_dict, "optimizer": {}, "epoch": 3}, folder / "checkpoint.pth")
    from safetensors.torch import save_file
    save_file(state_dict, folder / "weights.safetensors")
    return model.eval(), folder


def test_variant_is_inferred_for_every_registered_model():
    for name in list_models():
        with torch.device("meta"):
            keys = {k: np.empty(v.shape, np.int8) for k, v in torch_model(name).state_dict().items()}
        assert infer_variant(keys) == name


@pytest.mark.parametrize("filename", ["bare.pth", "checkpoint.pth", "weights.safetensors"])
def test_torch2flax_then_flax2torch_round_trips_files(r3d, filename, tmp_path):
    model, folder = r3d
    out = tmp_path / "converted"
    assert main(["torch2flax", "--input", str(folder / filename), "--output", str(out)]) == 0
    assert flax_video.pretrained.read_model_info(out) == {"model": "r3d_10", "num_classes": 5}
    variables = flax_video.load_variables(out)
    x = np.random.default_rng(0).standard_normal((2, 4, 32, 32, 3), dtype=np.float32)
    logits = flax_video.create_model("r3d_10", num_classes=5).apply(variables, x)
    with torch.no_grad():
        expected = model(torch.from_numpy(x.transpose(0, 4, 1, 2, 3))).numpy()
    np.testing.assert_allclose(logits, expected, rtol=1e-4, atol=1e-5)

    for back in ("back.pth", "back.safetensors"):
        assert main(["flax2torch", "--input", str(out), "--output", str(tmp_path / back)]) == 0
        restored = read_state_dict(tmp_path / back)
        if back.endswith(".pth"):
            assert list(restored) == list(model.state_dict())
        else:  # safetensors stores keys in its own order
            assert sorted(restored) == sorted(model.state_dict())
        for key, value in model.state_dict().items():
            assert np.array_equal(restored[key], value.numpy()), key
            assert restored[key].dtype == value.numpy().dtype, key


def test_wrong_variant_reports_missing_and_unexpected_keys_and_writes_nothing(r3d, tmp_path, capsys):
    _, folder = r3d
    out = tmp_path / "converted"
    status = main(["torch2flax", "--variant", "r2plus1d_10", "--input", str(folder / "bare.pth"),
                   "--output", str(out)])
    error = capsys.readouterr().err
    assert status == 1
    assert "missing keys" in error and "stem.3.weight" in error
    assert "unexpected keys" in error and "layer1.0.conv1.0.weight" in error
    assert "those of r3d_10" in error
    assert not out.exists() and os.listdir(tmp_path) == []


def test_shape_mismatch_is_reported():
    state_dict = {k: v.numpy() for k, v in torch_model("r3d_10").state_dict().items()}
    state_dict["layer2.0.conv1.0.weight"] = np.zeros((128, 64, 1, 3, 3), np.float32)
    with pytest.raises(ConversionError, match=r"1 shape mismatches:\n.*layer2.0.conv1.0.weight: "
                                              r"got \(128, 64, 1, 3, 3\), r3d_10 needs \(128, 64, 3, 3, 3\)"):
        torchvision_to_flax(state_dict, "r3d_10")


def test_flax_variables_that_do_not_fit_are_reported():
    model = flax_video.create_model("r3d_10", num_classes=5)
    abstract = jax.eval_shape(lambda: model.init(jax.random.key(0), np.zeros((1, 4, 32, 32, 3))))
    variables = jax.tree.map(lambda a: np.zeros(a.shape, a.dtype), abstract)
    variables["params"]["layer1_0"]["bn1"]["scale"] = np.zeros(3, np.float32)
    variables["params"]["extra"] = {"w": np.zeros(2)}
    del variables["batch_stats"]["stem"]["bn"]["mean"]
    with pytest.raises(ConversionError) as error:
        flax_to_torchvision(variables, "r3d_10")
    assert "1 missing keys:\n    batch_stats/stem/bn/mean" in str(error.value)
    assert "1 unexpected keys:\n    params/extra/w" in str(error.value)
    assert "params/layer1_0/bn1/scale: got (3,), r3d_10 needs (64,)" in str(error.value)


def test_existing_output_is_kept_unless_overwrite(r3d, tmp_path, capsys):
    _, folder = r3d
    out = tmp_path / "converted"
    args = ["torch2flax", "--input", str(folder / "bare.pth"), "--output", str(out)]
    assert main(args) == 0
    before = sorted(p.name for p in out.iterdir())
    assert main(args) == 1 and "exists" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == before
    assert main(args + ["--overwrite"]) == 0
    assert flax_video.load_variables(out)["params"]["fc"]["bias"].shape == (5,)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["converted"]  # no leftovers

    target = tmp_path / "out.pth"
    target.write_bytes(b"precious")
    assert main(["flax2torch", "--input", str(out), "--output", str(target)]) == 1
    assert target.read_bytes() == b"precious"


class Payload:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_pickled_code_is_refused_not_executed(tmp_path, capsys):
    evil = tmp_path / "evil.pth"
    torch.save({"model": {"fc.weight": torch.zeros(2, 2)}, "hook": Payload()}, evil)
    assert main(["torch2flax", "--input", str(evil), "--output", str(tmp_path / "out")]) == 1
    captured = capsys.readouterr()
    assert "refused" in captured.err and "pwned" not in captured.out
    assert not (tmp_path / "out").exists()


def test_unsupported_and_missing_files_are_clear_errors(tmp_path, capsys):
    assert main(["torch2flax", "--input", str(tmp_path / "w.npz"), "--output", str(tmp_path / "o")]) == 1
    assert "unsupported file type '.npz'" in capsys.readouterr().err
    assert main(["torch2flax", "--input", str(tmp_path / "none.pth"), "--output", str(tmp_path / "o")]) == 1
    assert "no such file" in capsys.readouterr().err


def test_module_runs_as_a_command(r3d, tmp_path):
    _, folder = r3d
    result = subprocess.run([sys.executable, "-m", "convert", "torch2flax", "--input",
                             str(folder / "weights.safetensors"), "--output", str(tmp_path / "c")],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "r3d_10, 5 classes" in result.stdout
    variables = flax_video.load_variables(tmp_path / "c")
    assert jax.tree.leaves(variables)
