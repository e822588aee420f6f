"""The optax schedule and SGD update against torch's."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import flax_video
from convert import torchvision_to_flax
from tests.torch_reference import torch_model
from train import optim, steps


def _torch_schedule(optimizer, steps_per_epoch, warmup_epochs, factor, milestones, gamma):
    warmup = warmup_epochs * steps_per_epoch
    main = torch.optim.lr_scheduler.MultiStepLR(
        optimizer, milestones=[steps_per_epoch * (m - warmup_epochs) for m in milestones], gamma=gamma)
    first = torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=factor, total_iters=warmup)
    return torch.optim.lr_scheduler.SequentialLR(optimizer, [first, main], milestones=[warmup])


def test_schedule_matches_torch_at_every_step():
    # torchvision's recipe shortened: 3 steps per epoch, 2 warmup epochs,
    # milestones 4, 6, 8, 9 epochs.
    per_epoch, warmup, milestones = 3, 2, (4, 6, 8)
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.64)
    scheduler = _torch_schedule(optimizer, per_epoch, warmup, 0.001, milestones, 0.1)
    ours = optim.learning_rate_fn(0.64, per_epoch, warmup, 0.001, milestones, 0.1)
    for step in range(9 * per_epoch):
        assert float(ours(step)) == pytest.approx(optimizer.param_groups[0]["lr"], rel=1e-6), step
        optimizer.step()
        scheduler.step()


def test_head_lr_scale_matches_a_torch_param_group_with_its_own_lr():
    with jax.enable_x64(True):
        _head_lr_scale_steps()


def _head_lr_scale_steps():
    import optax

    rng = np.random.default_rng(0)
    params = {"layer1_0": {"conv1": {"kernel": rng.normal(size=(1, 1, 1, 3, 4))}},
              "fc": {"kernel": rng.normal(size=(4, 5)), "bias": rng.normal(size=5)}}
    paths = [("layer1_0", "conv1", "kernel"), ("fc", "kernel"), ("fc", "bias")]
    get = lambda tree, path: tree[path[0]][path[1]] if len(path) == 2 else tree[path[0]][path[1]][path[2]]
    torch_params = [torch.nn.Parameter(torch.from_numpy(get(params, p).copy())) for p in paths]
    per_epoch, lr, scale = 2, 0.1, 0.1
    optimizer = torch.optim.SGD([{"params": torch_params[:1]}, {"params": torch_params[1:], "lr": lr * scale}],
                                lr=lr, momentum=0.9, weight_decay=1e-4)
    scheduler = _torch_schedule(optimizer, per_epoch, 2, 0.01, (4,), 0.1)
    schedule = optim.learning_rate_fn(lr, per_epoch, 2, 0.01, (4,), 0.1)
    tx = optim.sgd(schedule, 0.9, 1e-4, True, scale, optim.head_mask(params))
    opt_state = tx.init(params)
    for _ in range(6 * per_epoch):  # warmup, full lr, and past the milestone
        grads = jax.tree_util.tree_map(lambda x: rng.normal(size=x.shape), params)
        for p, path in zip(torch_params, paths):
            p.grad = torch.from_numpy(get(grads, path).copy())
        optimizer.step()
        scheduler.step()
        updates, opt_state = tx.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        for p, path in zip(torch_params, paths):
            # The schedule's lr is float32 (1e-7 relative): the parameters,
            # of order 1, agree to ~1e-8. A head scale missed or misplaced
            # moves them by ~1e-2.
            np.testing.assert_allclose(np.asarray(get(params, path)), p.detach().numpy(), rtol=1e-7, atol=1e-7)
    # The scale reaches the classifier and nothing else.
    assert optim.head_mask(params) == {"layer1_0": {"conv1": {"kernel": False}}, "fc": {"kernel": True, "bias": True}}


def test_steps_and_schedule_count_clips_over_all_devices_and_scale_the_lr():
    from train.config import Config
    from train.loop import steps_and_schedule

    # One clip per video: 40 videos fill 5 steps of 8 clips; the lr is per device.
    config = Config(per_device_batch=8, lr=0.01, warmup_epochs=0, milestones=(), clips_per_video=1)
    per_epoch, schedule = steps_and_schedule(config, 40)
    assert per_epoch == 40 // (8 * jax.device_count())
    assert float(schedule(0)) == pytest.approx(0.01 * jax.device_count())
    with pytest.raises(ValueError, match=f"7 training videos cannot fill one global batch of {8 * jax.device_count()} clips"):
        steps_and_schedule(config, 7)


def test_replicated_state_does_not_retrace_the_train_step():
    traces = []

    def step(state):
        traces.append(1)
        return jax.tree_util.tree_map(lambda x: x + 1, state)

    state = steps.replicate({"w": np.zeros((3, 2), np.float32), "n": np.int32(0)})
    p_step = jax.pmap(step, axis_name=steps.AXIS, donate_argnums=0)
    for _ in range(3):
        state = p_step(state)
    assert len(traces) == 1
    assert int(state["n"][0]) == 3


def test_first_replica_gives_back_the_replicated_host_tree():
    tree = {"w": np.arange(6, dtype=np.float32).reshape(3, 2), "n": np.int32(7)}
    back = steps.first_replica(steps.replicate(tree))
    assert isinstance(back["w"], np.ndarray) and back["w"].dtype == np.float32 and back["n"].dtype == np.int32
    np.testing.assert_array_equal(back["w"], tree["w"])
    assert back["n"].shape == () and int(back["n"]) == 7


def test_ten_sgd_steps_match_torch():
    # In float64 on both sides: in fp32, train-mode BatchNorm makes each
    # forward 1e-5 from exact on either side, and SGD on these random batches
    # amplifies that past 1e-3 within 8 steps (measured), which would test
    # rounding rather than the update.
    with jax.enable_x64(True):
        _ten_steps()


def _ten_steps():
    torch.manual_seed(0)
    net = torch_model("mc3_18", num_classes=5).double().train()
    variables = jax.tree_util.tree_map(lambda x: x.astype(np.float64) if x.dtype == np.float32 else x,
                                       torchvision_to_flax(net.state_dict(), "mc3_18"))
    model = flax_video.create_model("mc3_18", num_classes=5, dtype=jax.numpy.float64)

    per_epoch, lr = 2, 0.01
    optimizer = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9, weight_decay=1e-4)
    scheduler = _torch_schedule(optimizer, per_epoch, 2, 0.01, (4,), 0.1)
    schedule = optim.learning_rate_fn(lr, per_epoch, 2, 0.01, (4,), 0.1)
    tx = optim.sgd(schedule, 0.9, 1e-4)
    state = steps.create_state(variables, tx)
    step = steps.pmapped_train_step(model, tx, schedule)  # the loop's step, state donated
    state = steps.replicate(state)

    rng = np.random.default_rng(0)
    for i in range(10):
        clips = rng.normal(size=(4, 4, 16, 16, 3))
        labels = rng.integers(0, 5, 4)
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(net(torch.from_numpy(clips).permute(0, 4, 1, 2, 3)), torch.from_numpy(labels))
        loss.backward()
        optimizer.step()
        scheduler.step()
        batch = {"clip": clips[None], "label": labels[None].astype(np.int32), "mask": np.ones((1, 4)),
                 "bad": np.zeros((1, 4), np.int32)}
        with_norms = i % 2 == 0  # the loop asks for norms on logged steps only
        state, metrics = step(state, batch, np.array([with_norms]))
        assert float(metrics["loss"][0]) == pytest.approx(loss.item(), rel=1e-3), i
        norms = [float(metrics["grad_norm"][0]), float(metrics["param_norm"][0])]
        if with_norms:
            grad_norm = torch.sqrt(sum((p.grad ** 2).sum() for p in net.parameters())).item()
            param_norm = torch.sqrt(sum((p.detach() ** 2).sum() for p in net.parameters())).item()
            assert norms == pytest.approx([grad_norm, param_norm], rel=1e-6), i
        else:
            assert norms == [0.0, 0.0]


def test_bfloat16_computes_convolutions_in_bf16_keeps_float32_state_and_learns():
    import functools
    import re

    from train import loop
    from train.config import Config

    rng = np.random.default_rng(0)
    batch = {"clip": rng.normal(size=(1, 8, 4, 16, 16, 3)).astype(np.float32),
             "label": rng.integers(0, 5, (1, 8)).astype(np.int32), "mask": np.ones((1, 8), np.float32),
             "bad": np.zeros((1, 8), np.int32)}
    for dtype in ("float32", "bfloat16"):
        config = Config(variant="r2plus1d_10", dtype=dtype, clip_len=4, crop=16)
        model = loop.create_model(config, 5)
        variables = loop.initial_variables(config, model, 5)
        schedule = optim.learning_rate_fn(0.01, 10, 0, 1.0, (), 0.1)
        tx = loop.create_optimizer(config, variables["params"], schedule)
        state = jax.tree_util.tree_map(lambda x: x[None], steps.create_state(variables, tx))
        step = jax.jit(jax.vmap(functools.partial(steps.train_step, model=model, tx=tx, schedule=schedule),
                                axis_name=steps.AXIS))
        # Forward and backward: the operands of every convolution (XLA's or
        # oneDNN's custom calls) and of every matrix product (the matmul
        # lowerings of convs on small frames, the head) are in `dtype`. Products with a vector are BatchNorm's channel
        # sums, float32 by design. Winograd convs (bf16 ones on CPUs where
        # oneDNN has no bf16 conv) take their activations in `dtype` and compute
        # in float32 inside, like the other convs' accumulators: their kernel
        # transforms (products with kron(G): 4/16/64 components x 3/9/27 taps)
        # and transformed kernel are float32 by design.
        operand_types = []
        convs = (r"stablehlo.(?:convolution|dot_general).*"
                 r"|stablehlo.custom_call @flax_video_(?:onednn_conv|winograd).*")
        kernel_transform = re.compile(r"(?:4|16|64)x(?:3|9|27)|(?:3|9|27)x(?:4|16|64)")
        for op in re.findall(convs, step.lower(state, batch).as_text()):
            signature = op.rsplit(" : ", 1)[-1]  # after the attributes
            operands = re.findall(r"tensor<([0-9x]+)x(\w+)>", signature.rsplit("->", 1)[0])
            if "winograd_forward" in op:
                operands = operands[:1]  # x; the transformed kernel is float32
            elif "dot_general" in op and kernel_transform.fullmatch(operands[0][0]):
                continue
            if all(shape.count("x") >= 1 for shape, _ in operands):
                operand_types += [t for _, t in operands]
        assert len(operand_types) > 2 * 3 * 20 and set(operand_types) == {"bf16" if dtype == "bfloat16" else "f32"}
        losses = []
        for _ in range(8):  # fit one fixed batch
            state, metrics = step(state, batch)
            losses.append(float(metrics["loss"][0]))
        leaves = jax.tree_util.tree_leaves((state.params, state.batch_stats, state.opt_state))
        assert {leaf.dtype for leaf in leaves if jnp.issubdtype(leaf.dtype, jnp.floating)} == {np.dtype(np.float32)}
        # Both fit the batch (measured with r2plus1d_10: 1.463 -> 0.0071 in float32,
        # 1.464 -> 0.0067 in bfloat16; 130 conv/matmul operands each).
        assert losses[-1] < 0.1 * losses[0], losses
