"""`train_and_evaluate(config, workdir)`: the training loop around the
pmapped steps, with evaluation, checkpoints and metrics."""
from __future__ import annotations

import dataclasses
import functools
import math
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

import flax_video
from flax_video.data import loader
from train import checkpoints, data, metrics, optim, parallel, steps
from train.config import Config


class NonFiniteLoss(RuntimeError):
    pass


def create_model(config: Config, num_classes: int):
    return flax_video.create_model(config.variant, num_classes=num_classes, dtype=jnp.dtype(config.dtype),
                                   bn_axis_name=steps.AXIS if config.sync_bn else None,
                                   zero_init_residual=config.zero_init_residual)


def create_optimizer(config: Config, params, schedule):
    return optim.sgd(schedule, config.momentum, config.weight_decay, optim.decay_mask(params, config.decay_bn_and_bias),
                     config.head_lr_scale, optim.head_mask(params))


def _init_clip(config: Config):
    return jax.ShapeDtypeStruct((1, config.clip_len, config.crop, config.crop, 3), jnp.float32)


def initial_variables(config: Config, model, num_classes: int):
    # lazy_init runs the initializers but not the forward pass on a dummy
    # clip: the same bits as init, 20 s instead of 26 for r2plus1d_18.
    variables = model.lazy_init(jax.random.key(config.seed), _init_clip(config), train=False)
    variables = jax.tree_util.tree_map(np.asarray, variables)
    if config.init_from:
        variables = _fine_tune_start(config, variables, num_classes)
    return variables


def steps_and_schedule(config: Config, num_train_videos: int):
    """Steps per epoch over all devices, and the lr schedule, whose lr is
    scaled linearly with the number of devices, as torchvision's recipe."""
    global_batch = config.per_device_batch * jax.device_count()
    per_epoch = loader.steps_per_epoch(num_train_videos, data.train_spec(config), global_batch)
    if per_epoch == 0:
        raise ValueError(f"{num_train_videos} training videos cannot fill one global batch of {global_batch} clips")
    schedule = optim.learning_rate_fn(config.lr * jax.device_count(), per_epoch, config.warmup_epochs,
                                      config.warmup_factor, config.milestones, config.gamma)
    return per_epoch, schedule


def optimizer_and_restore_target(config: Config, model, schedule):
    """The optimizer, and the train state as shapes and dtypes to restore a
    checkpoint into, without the ~30 s of an eager init."""
    variables = jax.eval_shape(functools.partial(model.init, train=False), jax.random.key(config.seed),
                               _init_clip(config))
    tx = create_optimizer(config, variables["params"], schedule)
    return tx, jax.eval_shape(functools.partial(steps.create_state, tx=tx), variables)


def _fine_tune_start(config: Config, fresh, num_classes: int):
    """Pretrained weights with the head re-initialized when its size differs."""
    from flax_video.inference import load_weights

    pretrained, _ = load_weights(config.init_from, config.variant)
    pretrained = {k: dict(v) for k, v in pretrained.items()}
    head = pretrained["params"].get("fc")
    if head is not None and head["kernel"].shape[-1] != num_classes:
        print(f"re-initializing the classifier for {num_classes} classes (pretrained: {head['kernel'].shape[-1]})")
        pretrained["params"]["fc"] = fresh["params"]["fc"]
    return pretrained


class Evaluator:
    """Clip and video accuracy on `validation` (summed over processes), one
    pass of an endless loader per call: its worker processes start once per
    run, not once per evaluation (~4 s of each of the demo's evaluations)."""

    def __init__(self, config: Config, validation, sharding: loader.Sharding, show: bool):
        spec = data.eval_spec(config)
        local_batch = config.per_device_batch * sharding.local_devices
        self.per_pass = len(loader.eval_items(len(validation), spec, local_batch, sharding)) // local_batch
        self.show = show
        self._batches = iter(loader.eval_loader(validation, spec, per_device_batch=config.per_device_batch,
                                                sharding=sharding, workers=config.workers, passes=None))

    def __call__(self, dstate, par) -> dict:
        accuracy = metrics.Accuracy()
        bad = 0
        for _ in tqdm(range(self.per_pass), desc="eval", disable=not self.show, leave=False):
            batch = next(self._batches)
            scores = par.eval(dstate, batch["clip"])
            flat = lambda x: x.reshape(-1, *x.shape[2:])
            accuracy.add(flat(scores), flat(batch["label"]), flat(batch["video"]), flat(batch["mask"]))
            bad += int(batch["bad"].sum())
        sums = np.append(accuracy.sums(), bad)
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            sums = np.asarray(multihost_utils.process_allgather(sums)).sum(0)
        result = metrics.summarize(sums[:6])
        result["bad_clips"] = int(sums[6])
        return result

    def close(self):
        # With worker processes this often waits grain's 25 s kill timeout
        # (the worker's queue feeder stays blocked; train/DEMO.md).
        self._batches.close()


def saves_at(done: int, per_epoch: int, total_steps: int, every: int) -> bool:
    """Whether to checkpoint after `done` steps: each epoch end, the last
    step, and every `every` steps (0: no others)."""
    return done % per_epoch == 0 or done == total_steps or (every > 0 and done % every == 0)


def train_and_evaluate(config: Config, workdir: str | Path) -> dict:
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    lead = jax.process_index() == 0
    sharding = data.sharding()
    sources = data.sources(config, workdir)
    num_classes = config.num_classes or sources.num_classes
    global_batch = config.per_device_batch * jax.device_count()
    per_epoch, schedule = steps_and_schedule(config, len(sources.train))
    total_steps = config.epochs * per_epoch
    if config.max_steps:
        total_steps = min(total_steps, config.max_steps)
    model = create_model(config, num_classes)
    tx, target = optimizer_and_restore_target(config, model, schedule)

    mngr = checkpoints.manager(workdir, config.keep_checkpoints)
    restored = checkpoints.restore(mngr, target)
    train_iter = iter(loader.train_loader(sources.train, data.train_spec(config), per_device_batch=config.per_device_batch,
                                          epochs=config.epochs, seed=config.seed, sharding=sharding, workers=config.workers))
    if restored is not None:
        state, data_state = restored
        train_iter.set_state(data_state)
        print(f"resuming from step {int(state.step)} in {workdir}")
    else:
        state = steps.create_state(initial_variables(config, model, num_classes), tx)
    start = int(state.step)
    par = parallel.create(config.parallel, model, tx, schedule)
    dstate = par.put_state(state)
    writer = metrics.Writer(workdir, enabled=lead)

    def save(step):
        nonlocal dstate
        dstate = par.sync(dstate)
        checkpoints.save(mngr, step, par.host_state(dstate), train_iter.get_state(), dataclasses.asdict(config))

    evaluator = None

    def run_eval(step):
        nonlocal dstate, evaluator
        dstate = par.sync(dstate)
        evaluator = evaluator or Evaluator(config, sources.validation, sharding, lead)
        result = evaluator(dstate, par)
        writer.write("eval", step, result)
        writer.plot()
        return result

    last_eval, window, bad_total = {}, [], 0
    bar = tqdm(total=total_steps, initial=start, desc="train", disable=not lead, dynamic_ncols=True)
    tick = time.perf_counter()
    try:
        for step in range(start, total_steps):
            batch = next(train_iter)
            done = step + 1
            logged = done % config.log_every == 0 or done == total_steps
            dstate, m = par.train(dstate, batch, logged)
            if not math.isfinite(m["loss"]):
                raise NonFiniteLoss(f"non-finite loss ({m['loss']}) at step {done}; stopping. The last good "
                                    f"checkpoint (step {mngr.latest_step()}) in {workdir} is kept.")
            bad_total += int(m["bad"])
            window.append(m)
            now = time.perf_counter()
            clips_per_s = global_batch / max(now - tick, 1e-9)
            tick = now
            bar.set_postfix(loss=f"{m['loss']:.3f}", lr=f"{m['lr']:.2e}", clips_s=f"{clips_per_s:.1f}", refresh=False)
            bar.update(1)
            if logged:
                count = sum(w["count"] for w in window)
                writer.write("train", done, {"epoch": done / per_epoch, "loss": np.mean([w["loss"] for w in window]),
                                             "train_acc1": sum(w["correct"] for w in window) / max(count, 1),
                                             "lr": m["lr"], "clips_per_s": clips_per_s, "grad_norm": m["grad_norm"],
                                             "param_norm": m["param_norm"], "bad_clips": bad_total})
                window = []
            epoch_end = done % per_epoch == 0
            if epoch_end and ((done // per_epoch) % config.eval_every_epochs == 0) and done != total_steps:
                last_eval = run_eval(done)
                bar.write(f"epoch {done // per_epoch}: " + format_metrics(last_eval))
            if saves_at(done, per_epoch, total_steps, config.checkpoint_every):
                save(done)
        if start < total_steps or not last_eval:
            last_eval = run_eval(total_steps)
    finally:
        bar.close()
        if evaluator is not None:
            evaluator.close()
        writer.close()
        checkpoints.finish(mngr)
    summary = {"steps": total_steps, "epochs": total_steps / per_epoch, **last_eval, "bad_training_clips": bad_total}
    if lead:
        print("done: " + format_metrics(summary))
    return {"state": par.host_state(dstate), **summary}


def format_metrics(values: dict) -> str:
    return ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in values.items())
