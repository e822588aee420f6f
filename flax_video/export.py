"""A model with its weights as a serialized `jax.export` artifact (StableHLO):

    python -m flax_video.export --weights r2plus1d_18 --output r2plus1d_18.bin [--batch N] [--dtype bfloat16]

The artifact holds the eval-mode forward pass with the weights as constants,
`(batch, clip_len, crop, crop, 3) float32 -> (batch, num_classes) float32`
logits (pooled features for `--num-classes 0`), with a symbolic batch
dimension unless `--batch` fixes it. `flax_video.load_exported(path)` runs it
in any JAX process without flax_video's model code; any other StableHLO
consumer (IREE, XLA's PJRT C API from C++) can compile the module that
`jax.export.deserialize(data).mlir_module()` gives.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from flax_video import onednn
from flax_video.registry import create_model
from flax_video.weights import EvalTransform


def export_model(name: str, variables: dict, num_classes: int, transform: EvalTransform = EvalTransform(),
                 batch: int | None = None, dtype=jnp.float32,
                 platforms: tuple[str, ...] | None = None) -> jax.export.Exported:
    """The eval-mode forward pass of `name` with `variables` baked in."""
    model = create_model(name, num_classes=num_classes, dtype=dtype)
    variables = jax.tree_util.tree_map(jnp.asarray, variables)
    size = jax.export.symbolic_shape("batch")[0] if batch is None else batch
    clips = jax.ShapeDtypeStruct((size, transform.clip_len, transform.crop, transform.crop, 3), jnp.float32)
    forward = jax.jit(lambda x: model.apply(variables, x).astype(jnp.float32))
    # XLA's own lowerings: an artifact must not call flax_video's oneDNN extension.
    with onednn.portable():
        return jax.export.export(forward, platforms=platforms)(clips)


def save_exported(exported: jax.export.Exported, path: str | os.PathLike) -> None:
    """Write the serialized artifact atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        staging.write_bytes(exported.serialize())
        os.replace(staging, path)
    finally:
        staging.unlink(missing_ok=True)


def load_exported(path: str | os.PathLike) -> Callable[[jax.Array], jax.Array]:
    """A callable running an exported artifact, checking its input first:
    a clip batch of another shape or dtype is refused with what it expects."""
    exported = jax.export.deserialize(bytearray(Path(path).read_bytes()))
    (expected,) = exported.in_avals
    wanted = tuple(d if isinstance(d, int) else str(d) for d in expected.shape)

    def run(clips):
        shape = np.shape(clips)
        fits = len(shape) == len(wanted) and all(not isinstance(w, int) or w == s for w, s in zip(wanted, shape))
        if not fits or jnp.result_type(clips) != expected.dtype:
            raise ValueError(f"{path} takes clips of shape {wanted} and dtype {expected.dtype}, "
                             f"not {shape} {jnp.result_type(clips)}")
        return exported.call(clips)

    run.exported = exported
    return run


def main(argv=None) -> int:
    from flax_video.inference import eval_transform_of, load_weights
    parser = argparse.ArgumentParser(prog="python -m flax_video.export", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", required=True, help="published weights by name, a converted directory, "
                                                         "or a torchvision .pth/.safetensors file")
    parser.add_argument("--variant", help="model name (default: from the weights)")
    parser.add_argument("--output", required=True, help="file to write")
    parser.add_argument("--batch", type=int, help="a fixed batch size (default: symbolic)")
    parser.add_argument("--clip-len", type=int, help="frames per clip (default: as the weights were published)")
    parser.add_argument("--num-classes", type=int, help="0: export the backbone (pooled features)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"], help="compute dtype")
    parser.add_argument("--platform", action="append", dest="platforms",
                        help="cpu, cuda or rocm; repeat for several (default: this machine's)")
    args = parser.parse_args(argv)
    try:
        variables, name = load_weights(args.weights, args.variant)
    except (OSError, ValueError) as error:
        print(f"error: --weights: {error}", file=sys.stderr)
        return 2
    num_classes = variables["params"]["fc"]["bias"].shape[0] if args.num_classes is None else args.num_classes
    transform = eval_transform_of(args.weights, args.clip_len)
    exported = export_model(name, variables, num_classes, transform, args.batch, jnp.dtype(args.dtype),
                            tuple(args.platforms) if args.platforms else None)
    save_exported(exported, args.output)
    print(f"{args.output}: {name}, input {exported.in_avals[0].str_short()}, output "
          f"{exported.out_avals[0].str_short()}, platforms {', '.join(exported.platforms)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
