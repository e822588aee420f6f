"""flax_video against torchvision, measured in one run.

    python -m benchmarks.vs_torchvision [--json results.json] [--batch 4] [--frames 16]
        [--size 112] [--variants r3d_18 mc3_18 r2plus1d_18] [--dtype float32|bfloat16]

For each variant and mode (`inference`: forward in eval mode; `training`:
forward, backward and SGD update in train mode) times torchvision (torch, in
whichever memory layout is faster: contiguous or channels_last_3d) and
flax_video (jit, warmed up) in alternation, `--repeats` rounds of `--steps`
steps each, and reports the median clips/s, the flax/torch ratio, flax's
first-call (compile) time and each side's peak memory for one step. Runs
unchanged on CUDA machines with GPU builds of jax and torch.

GFLOP/s is torch's FLOP count of a step (`FlopCounterMode`) times clips/s;
the header gives torch's GFLOP/s on one large 3x3 conv2d as a yardstick of
what the machine delivers to a convolution.

Peak memory is what one step allocates beyond its inputs: for torch the
allocator's peak (CUDA) or the profiler's peak of live allocations (CPU); for
flax the device's peak bytes in use (GPU) or XLA's buffer assignment of the
compiled step, temporaries plus outputs (CPU).
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import torch

from benchmarks.machine import cpu_info, describe
from flax_video import create_model
from tests.torch_reference import torch_model

MiB = 2 ** 20


# --- torch side

class TorchRunner:
    def __init__(self, variant, mode, x, labels, dtype, device):
        self.mode, self.device = mode, device
        self.model = torch_model(variant).to(device)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
        self.x = torch.from_numpy(x.transpose(0, 4, 1, 2, 3)).to(device)
        self.labels = torch.from_numpy(labels).long().to(device)
        self.autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=dtype == "bfloat16")
        self.layout = self._fastest_layout()

    def _set_layout(self, layout):
        fmt = torch.channels_last_3d if layout == "channels_last_3d" else torch.contiguous_format
        self.model = self.model.to(memory_format=fmt)
        self.x = self.x.contiguous(memory_format=fmt)

    def _fastest_layout(self):
        times = {}
        for layout in ("contiguous", "channels_last_3d"):
            self._set_layout(layout)
            self.step()
            times[layout] = min(self.timed(1) for _ in range(2))
        best = min(times, key=times.get)
        self._set_layout(best)
        return best

    def step(self):
        if self.mode == "inference":
            self.model.eval()
            with torch.inference_mode(), self.autocast:
                self.model(self.x)
        else:
            self.model.train()
            with self.autocast:
                loss = torch.nn.functional.cross_entropy(self.model(self.x).float(), self.labels)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()

    def sync(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize()

    def timed(self, steps):
        self.sync()
        start = time.perf_counter()
        for _ in range(steps):
            self.step()
        self.sync()
        return time.perf_counter() - start

    def flops(self):
        """FLOPs of one step as torch counts them: convolutions and matrix
        products, forward and (training) backward; not the elementwise ops
        or the SGD update. Both sides do this same arithmetic."""
        from torch.utils.flop_counter import FlopCounterMode

        with FlopCounterMode(display=False) as counter:
            self.step()
        return counter.get_total_flops()

    def peak_memory(self):
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            self.step()
            self.sync()
            return torch.cuda.max_memory_allocated() - base
        from torch.profiler import ProfilerActivity, profile
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            self.step()
        events = sorted((e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"),
                        key=lambda e: e.start_ns())
        live = peak = 0
        for event in events:
            live += event.nbytes()
            peak = max(peak, live)
        return peak


# --- flax side

class FlaxRunner:
    def __init__(self, variant, mode, x, labels, dtype):
        self.mode = mode
        model = create_model(variant, dtype=jnp.dtype(dtype))
        self.x, self.labels = jnp.asarray(x), jnp.asarray(labels)
        variables = jax.jit(model.init)(jax.random.key(0), self.x)
        self.params, self.batch_stats = variables["params"], variables["batch_stats"]
        tx = optax.chain(optax.add_decayed_weights(1e-4), optax.sgd(0.01, momentum=0.9))
        self.opt_state = tx.init(self.params)

        def inference(params, batch_stats, x):
            return model.apply({"params": params, "batch_stats": batch_stats}, x, train=False)

        def train_step(params, batch_stats, opt_state, x, labels):
            def loss_fn(params):
                logits, updates = model.apply({"params": params, "batch_stats": batch_stats}, x,
                                              train=True, mutable=["batch_stats"])
                loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
                return loss, updates["batch_stats"]
            (loss, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
            updates, opt_state = tx.update(grads, opt_state, params)
            return optax.apply_updates(params, updates), batch_stats, opt_state, loss

        if mode == "inference":
            self.fn = jax.jit(inference)
            self.args = lambda: (self.params, self.batch_stats, self.x)
        else:
            self.fn = jax.jit(train_step, donate_argnums=(0, 1, 2))
            self.args = lambda: (self.params, self.batch_stats, self.opt_state, self.x, self.labels)
        start = time.perf_counter()
        self.compiled = self.fn.lower(*self.args()).compile()
        self.step()
        self.compile_seconds = time.perf_counter() - start

    def step(self):
        out = self.compiled(*self.args())
        if self.mode == "training":
            self.params, self.batch_stats, self.opt_state, _ = out
        self.last = out

    def timed(self, steps):
        jax.block_until_ready(self.last)
        start = time.perf_counter()
        for _ in range(steps):
            self.step()
        jax.block_until_ready(self.last)
        return time.perf_counter() - start

    def peak_memory(self):
        device = jax.devices()[0]
        stats = device.memory_stats() if device.platform == "gpu" else None
        if stats and "peak_bytes_in_use" in stats:
            return stats["peak_bytes_in_use"]
        analysis = self.compiled.memory_analysis()
        return analysis.temp_size_in_bytes + analysis.output_size_in_bytes - analysis.alias_size_in_bytes


def measure(variant, mode, args, torch_device):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((args.batch, args.frames, args.size, args.size, 3), dtype=np.float32)
    labels = rng.integers(0, 400, args.batch).astype(np.int32)
    ours = FlaxRunner(variant, mode, x, labels, args.dtype)
    theirs = TorchRunner(variant, mode, x, labels, args.dtype, torch_device)
    flax_times, torch_times = [], []
    for _ in range(args.repeats):
        torch_times.append(theirs.timed(args.steps) / args.steps)
        flax_times.append(ours.timed(args.steps) / args.steps)
    torch_cps = args.batch / statistics.median(torch_times)
    flax_cps = args.batch / statistics.median(flax_times)
    gflop_per_clip = theirs.flops() / args.batch / 1e9
    return {"variant": variant, "mode": mode, "torch_clips_per_s": torch_cps,
            "flax_clips_per_s": flax_cps, "ratio": flax_cps / torch_cps, "gflop_per_clip": gflop_per_clip,
            "torch_gflops": gflop_per_clip * torch_cps, "flax_gflops": gflop_per_clip * flax_cps,
            "torch_layout": theirs.layout, "flax_compile_s": ours.compile_seconds,
            "torch_peak_mib": theirs.peak_memory() / MiB, "flax_peak_mib": ours.peak_memory() / MiB}


def conv_yardstick_gflops(device, dtype) -> float:
    """GFLOP/s of torch on one large 3x3 2D convolution (8 x 128 channels x
    56x56, its fastest layout): about the most this machine gives a
    convolution, to read the GFLOP/s columns against."""
    x = torch.randn(8, 128, 56, 56, device=device).contiguous(memory_format=torch.channels_last)
    w = torch.randn(128, 128, 3, 3, device=device).contiguous(memory_format=torch.channels_last)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=dtype == "bfloat16")
    times = []
    with torch.inference_mode(), autocast:
        for _ in range(6):
            start = time.perf_counter()
            torch.nn.functional.conv2d(x, w, padding=1)
            if device.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
    return 2 * 8 * 128 * 128 * 9 * 56 * 56 / min(times[1:]) / 1e9


def table(rows, header):
    lines = [header, f"{'variant':13} {'mode':10} {'torch clips/s':>13} {'flax clips/s':>12} "
                     f"{'flax/torch':>10} {'GFLOP/clip':>10} {'torch GF/s':>10} {'flax GF/s':>9} "
                     f"{'compile s':>9} {'torch MiB':>9} {'flax MiB':>8}  torch layout"]
    for r in rows:
        lines.append(f"{r['variant']:13} {r['mode']:10} {r['torch_clips_per_s']:13.2f} "
                     f"{r['flax_clips_per_s']:12.2f} {r['ratio']:10.2f} {r['gflop_per_clip']:10.1f} "
                     f"{r['torch_gflops']:10.0f} {r['flax_gflops']:9.0f} {r['flax_compile_s']:9.1f} "
                     f"{r['torch_peak_mib']:9.0f} {r['flax_peak_mib']:8.0f}  {r['torch_layout']}")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variants", nargs="+", default=["r3d_18", "mc3_18", "r2plus1d_18"])
    p.add_argument("--modes", nargs="+", default=["inference", "training"], choices=["inference", "training"])
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--size", type=int, default=112)
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--repeats", type=int, default=5, help="alternating rounds; the median is reported")
    p.add_argument("--steps", type=int, default=2, help="steps timed per round")
    p.add_argument("--json", help="also write the results to this file")
    args = p.parse_args(argv)

    torch_device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cpu = cpu_info()
    header = (f"{platform.node()} ({describe(cpu)}): jax {jax.__version__} on {jax.devices()[0].device_kind}, torch "
              f"{torch.__version__} on {torch_device} ({torch.get_num_threads()} threads); batch "
              f"{args.batch} x {args.frames}x{args.size}x{args.size}, {args.dtype}, median of "
              f"{args.repeats} x {args.steps} steps; a large 3x3 conv2d in torch: "
              f"{conv_yardstick_gflops(torch_device, args.dtype):.0f} GFLOP/s")
    rows = []
    for variant in args.variants:
        for mode in args.modes:
            rows.append(measure(variant, mode, args, torch_device))
            print(f"{variant} {mode}: flax/torch {rows[-1]['ratio']:.2f}", flush=True)
    print(table(rows, header))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"setup": header, "cpu": cpu, "args": vars(args), "results": rows}, f, indent=2)


if __name__ == "__main__":
    main()
