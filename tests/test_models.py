"""The model family: structure, parameter counts, init and shapes against
torchvision's own model code."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import flax_video
from flax_video import create_model, list_models
from flax_video.registry import get_spec
from tests.torch_reference import torch_model

RELEASED = {"r3d_18": 33_371_472, "mc3_18": 11_695_440, "r2plus1d_18": 31_505_325}


def abstract_variables(model, shape=(1, 8, 32, 32, 3)):
    return jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros(shape)))


def count(tree):
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def test_list_models_has_every_family_and_depth():
    names = list_models()
    for family in ("r3d", "mc3", "r2plus1d"):
        for depth in (10, 18, 34, 50, 101, 152):
            assert f"{family}_{depth}" in names
    assert "r2plus1d_34_ig65m" in names
    assert list_models("r2plus1d_*")[:3] == ["r2plus1d_10", "r2plus1d_18", "r2plus1d_34"]


def test_unknown_model_name_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown model 'r4d_18'.*r3d_18"):
        create_model("r4d_18")


@pytest.mark.parametrize("name", sorted(RELEASED))
def test_parameter_count_of_released_models(name):
    params = abstract_variables(create_model(name))["params"]
    torch_count = sum(p.numel() for p in torch_model(name).parameters())
    assert count(params) == RELEASED[name] == torch_count


@pytest.mark.parametrize("name", [n for n in list_models() if n not in RELEASED])
def test_parameter_and_statistic_counts_match_torchvision(name):
    variables = abstract_variables(create_model(name, num_classes=101))
    with torch.device("meta"):
        reference = torch_model(name, num_classes=101)
    assert count(variables["params"]) == sum(p.numel() for p in reference.parameters())
    buffers = sum(b.numel() for b in reference.buffers())  # running stats and counters
    assert count(variables["batch_stats"]) == buffers


def test_midplanes_follow_torchvision_and_ig65m():
    def widths(name):
        params = abstract_variables(create_model(name))["params"]
        return [params[f"layer{s}_0"]["conv2"]["spatial"]["kernel"].shape[-1] for s in (2, 3, 4)]
    assert widths("r2plus1d_34") == [230, 460, 921]
    assert widths("r2plus1d_34_ig65m") == [288, 576, 1152]


def test_init_statistics_match_torchvision():
    model = create_model("r3d_18")
    variables = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 4, 32, 32, 3)))
    params = variables["params"]
    kernel = np.asarray(params["layer4_1"]["conv2"]["conv"]["kernel"])  # 3x3x3x512x512
    std = np.sqrt(2.0 / (27 * 512))  # kaiming normal, fan_out, relu gain
    assert abs(kernel.mean()) < 0.01 * std
    assert kernel.std() == pytest.approx(std, rel=0.01)
    # Untruncated normal: about 4.55% of samples lie beyond two sigma.
    assert np.mean(np.abs(kernel) > 2 * std) == pytest.approx(0.0455, abs=0.003)
    fc = np.asarray(params["fc"]["kernel"])
    assert fc.std() == pytest.approx(0.01, rel=0.02)
    assert np.all(np.asarray(params["fc"]["bias"]) == 0)
    for path, leaf in jax.tree_util.tree_leaves_with_path(params):
        name = jax.tree_util.keystr(path)
        if "bn" in name:
            expected = 1.0 if name.endswith("['scale']") else 0.0
            assert np.all(np.asarray(leaf) == expected), name
    stats = variables["batch_stats"]["stem"]["bn"]
    assert np.all(np.asarray(stats["mean"]) == 0) and np.all(np.asarray(stats["var"]) == 1)


@pytest.mark.parametrize("name", ["r2plus1d_18", "r3d_50"])  # BasicBlock, Bottleneck
@pytest.mark.parametrize("mode", [True, "identity"])
def test_zero_init_residual_zeroes_the_last_batchnorm_of_each_block(name, mode):
    from convert.core import torchvision_to_flax

    # torchvision's video VideoResNet has this flag too, but it looks for
    # `bn3` attributes the video blocks lack (their BatchNorms sit inside
    # nn.Sequential): a no-op for BasicBlock, AttributeError for Bottleneck.
    # So zero the last BatchNorm of each residual branch by hand, as the flag
    # of torchvision's image ResNets does (with "identity": only in blocks
    # without a downsample shortcut), and compare through the converter.
    torch_net = torch_model(name, num_classes=5)
    for block in torch_net.modules():
        if type(block).__name__ in ("BasicBlock", "Bottleneck"):
            if mode == "identity" and block.downsample is not None:
                continue
            last_conv = block.conv3 if type(block).__name__ == "Bottleneck" else block.conv2
            torch.nn.init.zeros_(last_conv[1].weight)
    state = {k: v.numpy() for k, v in torch_net.state_dict().items()}
    expected = torchvision_to_flax(state, name)["params"]
    model = create_model(name, num_classes=5, zero_init_residual=mode)
    x = jax.random.uniform(jax.random.key(1), (1, 2, 16, 16, 3))
    # Which scales are zero does not depend on the random bits; XLA compiles
    # the init of r3d_50 with the rbg generator in half the time of threefry.
    variables = jax.jit(model.init)(jax.random.key(0, impl="unsafe_rbg"), x)

    def zero_scales(tree):
        return {jax.tree_util.keystr(path) for path, leaf in jax.tree_util.tree_leaves_with_path(tree)
                if jax.tree_util.keystr(path).endswith("['scale']") and not np.any(np.asarray(leaf))}

    zeroed = zero_scales(variables["params"])
    blocks = sum(get_spec(name).layers)
    # A projection (downsample) shortcut starts each stage but BasicBlock's
    # layer1, whose widths match.
    projections = 4 if name == "r3d_50" else 3
    assert len(zeroed) == (blocks if mode is True else blocks - projections)
    assert zeroed == zero_scales(expected)
    if name == "r2plus1d_18":
        # layer1's blocks keep 64 channels and the resolution: identity
        # shortcuts, so with silent branches layer1 passes the stem through.
        _, out = jax.jit(lambda v, x: model.apply(v, x, mutable=["intermediates"]))(variables, x)
        stages = out["intermediates"]
        np.testing.assert_array_equal(stages["layer1_out"][0], stages["stem_out"][0])


def stage_shapes_torch(model, x):
    shapes = {}
    for stage in ("stem", "layer1", "layer2", "layer3", "layer4", "avgpool"):
        getattr(model, stage).register_forward_hook(
            lambda m, i, o, stage=stage: shapes.__setitem__(stage, tuple(o.shape)))
    with torch.no_grad():
        logits = model.eval()(x)
    return shapes, tuple(logits.shape)


@pytest.mark.parametrize("name,shape", [
    ("r3d_18", (2, 5, 37, 50, 3)),
    ("mc3_18", (2, 1, 37, 50, 3)),
    ("r2plus1d_18", (1, 5, 37, 50, 3)),
    ("r2plus1d_18", (1, 16, 112, 112, 3)),
])
def test_stage_shapes_match_torchvision(name, shape):
    model = create_model(name)
    variables = abstract_variables(model, shape)
    logits, state = jax.eval_shape(
        lambda v: model.apply(v, jnp.zeros(shape), mutable=["intermediates"]), variables)
    ours = {k: v[0].shape for k, v in state["intermediates"].items()}
    n, t, h, w, c = shape
    theirs, torch_logits = stage_shapes_torch(torch_model(name), torch.zeros(n, c, t, h, w))
    for stage in ("stem", "layer1", "layer2", "layer3", "layer4"):
        tn, tc, tt, th, tw = theirs[stage]
        assert ours[f"{stage}_out"] == (tn, tt, th, tw, tc), stage
    assert ours["pooled"] == theirs["avgpool"][:2]
    assert logits.shape == torch_logits


def test_bfloat16_compute_keeps_float32_parameters():
    model = create_model("r2plus1d_10", dtype=jnp.bfloat16)
    x = jax.random.normal(jax.random.key(1), (2, 4, 32, 32, 3))
    variables = jax.jit(model.init)(jax.random.key(0), x)
    assert {leaf.dtype for leaf in jax.tree.leaves(variables["params"])} == {jnp.dtype(jnp.float32)}
    # Running statistics stay float32 too; only the batch counters are int32.
    assert {leaf.dtype for leaf in jax.tree.leaves(variables["batch_stats"])} == {
        jnp.dtype(jnp.float32), jnp.dtype(jnp.int32)}
    state = jax.jit(lambda v, x: model.apply(v, x, mutable=["intermediates"])[1])(variables, x)
    assert state["intermediates"]["layer4_out"][0].dtype == jnp.bfloat16
    logits = jax.jit(model.apply)(variables, x)
    reference = jax.jit(create_model("r2plus1d_10").apply)(variables, x)
    assert logits.dtype == jnp.float32
    np.testing.assert_allclose(logits, reference, atol=0.05 * float(jnp.abs(reference).max()))


def test_train_mode_uses_batch_statistics_and_updates_them():
    model = create_model("mc3_10", num_classes=7)
    x = 3.0 + 2.0 * jax.random.normal(jax.random.key(1), (2, 4, 32, 32, 3))
    variables = jax.jit(model.init)(jax.random.key(0), x)
    logits, updates = jax.jit(lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"]))(variables, x)
    assert logits.shape == (2, 7)
    stem_bn = updates["batch_stats"]["stem"]["bn"]
    assert not np.allclose(stem_bn["mean"], 0.0)
    assert stem_bn["num_batches_tracked"] == 1
    assert jax.tree.structure(updates["batch_stats"]) == jax.tree.structure(variables["batch_stats"])
    eval_logits = jax.jit(model.apply)(variables, x)
    assert not np.allclose(logits, eval_logits)


def test_backbone_without_head_returns_pooled_features():
    x = jax.random.normal(jax.random.key(1), (2, 4, 32, 32, 3))
    classifier = create_model("r3d_10")
    variables = jax.jit(classifier.init)(jax.random.key(0), x)
    features = jax.jit(create_model("r3d_10", num_classes=0).apply)(variables, x)
    assert features.shape == (2, 512)
    _, state = jax.jit(lambda v, x: classifier.apply(v, x, mutable=["intermediates"]))(variables, x)
    np.testing.assert_array_equal(features, state["intermediates"]["pooled"][0])
    # Bottleneck's width by shapes alone: compiling r3d_50 three times cost
    # ~30 s of the suite for what the r3d_10 run above already checks.
    bottleneck = jax.eval_shape(create_model("r3d_50").init, jax.random.key(0), x)
    assert jax.eval_shape(create_model("r3d_50", num_classes=0).apply, bottleneck, x).shape == (2, 2048)


def test_package_exports():
    assert flax_video.KINETICS400_CLASSES[0] == "abseiling"
    assert flax_video.KINETICS400_CLASSES[-1] == "zumba"
    assert len(set(flax_video.KINETICS400_CLASSES)) == 400


def test_unknown_zero_init_mode_is_a_clear_error():
    model = create_model("r3d_10", num_classes=5, zero_init_residual="stages")
    with pytest.raises(ValueError, match="zero_init_residual must be .* none, all, identity; got 'stages'"):
        model.init(jax.random.key(0), jnp.zeros((1, 2, 16, 16, 3)))
