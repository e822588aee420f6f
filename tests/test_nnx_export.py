"""The models in today's JAX pipelines: as Flax NNX modules, and exported
with `jax.export` and run without the model code."""
import functools
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import flax_video
import flax_video.nnx
from flax_video import export
from flax_video.pretrained import save_variables

NAME = "r2plus1d_10"  # every kind of (2+1)D BatchNorm, compiles fast
CLIPS = np.random.RandomState(0).standard_normal((2, 4, 16, 16, 3)).astype(np.float32)


@pytest.fixture(scope="module")
def linen():
    """The linen model with random weights and random running statistics."""
    model = flax_video.create_model(NAME, num_classes=7)
    variables = jax.jit(functools.partial(model.init, train=False))(jax.random.key(0), CLIPS)
    rng = np.random.default_rng(1)
    noisy = lambda x: (np.asarray(x) + rng.uniform(0.1, 0.5, np.shape(x))).astype(np.asarray(x).dtype)
    variables = {"params": variables["params"], "batch_stats": jax.tree_util.tree_map(noisy, variables["batch_stats"])}
    return model, jax.tree_util.tree_map(np.asarray, variables)


def assert_trees_close(a, b, **tolerance):
    assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)
    jax.tree_util.tree_map(lambda x, y: np.testing.assert_allclose(x, y, **tolerance), a, b)


def test_nnx_model_computes_the_linen_function_and_updates_statistics_alike(linen):
    model, variables = linen
    ours = flax_video.nnx.create_model(NAME, variables)
    assert_trees_close(flax_video.nnx.linen_variables(ours), variables, rtol=0, atol=0)

    ours.eval()
    np.testing.assert_allclose(ours(CLIPS), model.apply(variables, CLIPS), rtol=1e-6, atol=1e-6)

    ours.train()
    logits, updates = model.apply(variables, CLIPS, train=True, mutable=["batch_stats"])
    np.testing.assert_allclose(ours(CLIPS), logits, rtol=1e-6, atol=1e-6)
    assert_trees_close(flax_video.nnx.linen_variables(ours)["batch_stats"], updates["batch_stats"],
                       rtol=1e-6, atol=1e-6)
    assert_trees_close(flax_video.nnx.linen_variables(ours)["params"], variables["params"], rtol=0, atol=0)


def test_nnx_model_initializes_as_linen_does():
    ours = flax_video.nnx.create_model(NAME, num_classes=7, rngs=nnx.Rngs(3))
    model = flax_video.create_model(NAME, num_classes=7)
    theirs = model.init(nnx.Rngs(3).params(), CLIPS[:1], train=False)  # the stream's first key, as ours
    assert_trees_close(flax_video.nnx.linen_variables(ours), theirs, rtol=1e-6, atol=1e-6)


def test_a_short_nnx_training_loop_with_nnx_optimizer(linen):
    _, variables = linen
    model = flax_video.nnx.create_model(NAME, variables)
    model.train()
    optimizer = nnx.Optimizer(model, optax.sgd(0.01, momentum=0.9), wrt=nnx.Param)
    labels = jnp.array([1, 4])

    @nnx.jit
    def step(model, optimizer, clips, labels):
        def loss_fn(model):
            return optax.softmax_cross_entropy_with_integer_labels(model(clips), labels).mean()
        loss, grads = nnx.value_and_grad(loss_fn)(model)
        optimizer.update(model, grads)
        return loss

    losses = [float(step(model, optimizer, CLIPS, labels)) for _ in range(4)]
    assert losses[-1] < losses[0], losses
    trained = flax_video.nnx.linen_variables(model)
    moved = jax.tree_util.tree_map(lambda a, b: not np.array_equal(a, b), trained, variables)
    assert all(jax.tree_util.tree_leaves(moved["params"]["fc"]))
    assert any(jax.tree_util.tree_leaves(moved["batch_stats"]))


@pytest.fixture(scope="module")
def exported(linen, tmp_path_factory):
    """The CLI's artifact of a converted directory, symbolic batch."""
    _, variables = linen
    root = tmp_path_factory.mktemp("export")
    save_variables(variables, root / "weights", NAME, 7)
    path = root / "model.bin"
    assert export.main(["--weights", str(root / "weights"), "--output", str(path), "--clip-len", "4"]) == 0
    return path


def test_exported_model_gives_apply_logits_for_any_batch(linen, exported):
    model, variables = linen
    run = flax_video.load_exported(exported)
    for batch in (1, 3):
        clips = np.random.RandomState(batch).standard_normal((batch, 4, 112, 112, 3)).astype(np.float32)
        np.testing.assert_allclose(run(clips), model.apply(variables, clips), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("shape, dtype", [((2, 8, 112, 112, 3), np.float32), ((2, 4, 112, 112), np.float32),
                                          ((2, 4, 112, 112, 3), np.float16)])
def test_exported_model_refuses_other_inputs_saying_what_it_takes(exported, shape, dtype):
    run = flax_video.load_exported(exported)
    with pytest.raises(ValueError, match=r"takes clips of shape \('batch', 4, 112, 112, 3\) and dtype float32"):
        run(np.zeros(shape, dtype))


def test_exported_model_runs_without_flax_video(linen, exported):
    model, variables = linen
    script = ("import sys, jax, numpy as np\n"
              "exported = jax.export.deserialize(bytearray(open(sys.argv[1], 'rb').read()))\n"
              "clips = np.random.RandomState(5).standard_normal((2, 4, 112, 112, 3)).astype(np.float32)\n"
              "np.save(sys.argv[2], np.asarray(exported.call(clips)))\n"
              "assert not any(m.startswith(('flax_video', 'flax')) for m in sys.modules), 'imported the model code'\n")
    out = exported.with_suffix(".npy")
    result = subprocess.run([sys.executable, "-c", script, str(exported), str(out)], capture_output=True, text=True,
                            timeout=300, cwd=exported.parent)
    assert result.returncode == 0, result.stderr[-3000:]
    clips = np.random.RandomState(5).standard_normal((2, 4, 112, 112, 3)).astype(np.float32)
    np.testing.assert_allclose(np.load(out), model.apply(variables, clips), rtol=1e-5, atol=1e-5)


def test_fixed_batch_and_bfloat16_exports(linen, tmp_path):
    model, variables = linen
    fixed = export.export_model(NAME, variables, 7, flax_video.weights.EvalTransform(clip_len=4, crop=16), batch=2,
                                dtype=jnp.bfloat16)
    assert fixed.in_avals[0].shape == (2, 4, 16, 16, 3)
    export.save_exported(fixed, tmp_path / "fixed.bin")
    logits = flax_video.load_exported(tmp_path / "fixed.bin")(CLIPS)
    bf16 = flax_video.create_model(NAME, num_classes=7, dtype=jnp.bfloat16).apply(variables, CLIPS)
    np.testing.assert_allclose(logits, bf16, rtol=1e-2, atol=1e-2)

