"""Command line: python -m convert {torch2flax,flax2torch} ...

  python -m convert torch2flax --variant r2plus1d_18 --input r2plus1d_18-91a641e6.pth --output weights/r2plus1d_18
  python -m convert torch2flax --input r2plus1d_18 --output weights/r2plus1d_18   # published weights by name
  python -m convert flax2torch --input weights/r2plus1d_18 --output r2plus1d_18.safetensors
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from convert import (ConversionError, flax_to_torchvision, infer_variant, read_state_dict,
                     torchvision_to_flax, write_state_dict)
from flax_video import hub
from flax_video.pretrained import load_converted, save_variables
from flax_video.registry import list_models
from flax_video.weights import get_weights, named_weights


def torch2flax(args) -> str:
    source, variant = args.input, args.variant
    try:
        entry = named_weights(source, variant)
    except ValueError as error:
        raise ConversionError(str(error)) from None
    if entry is None and not Path(source).exists() and not Path(source).suffix:
        try:
            get_weights(source)  # neither a file nor a name: the error lists the names
        except ValueError as error:
            raise ConversionError(f"--input {source}: no such file, and {error}") from None
    if entry:
        source, variant = hub.fetch(entry.url, entry.sha256), entry.model
    state_dict = read_state_dict(source)
    variant = variant or infer_variant(state_dict)
    variables = torchvision_to_flax(state_dict, variant)
    num_classes = variables["params"]["fc"]["bias"].shape[0]
    save_variables(variables, args.output, variant, num_classes, overwrite=args.overwrite)
    return f"{args.input} -> {args.output} ({variant}, {num_classes} classes)"


def flax2torch(args) -> str:
    try:
        variables, variant = load_converted(args.input, args.variant)
    except ValueError as error:
        raise ConversionError(str(error)) from None
    state_dict = flax_to_torchvision(variables, variant)
    write_state_dict(state_dict, args.output, overwrite=args.overwrite)
    return f"{args.input} -> {args.output} ({variant}, {len(state_dict)} tensors)"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m convert", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = p.add_subparsers(dest="command", required=True)
    for name, run, in_help, out_help in (
            ("torch2flax", torch2flax, "torchvision .pth/.pt/.safetensors file, or published weights by name "
             "(downloaded and cached: " + ", ".join(list_models(pretrained=True)) + ")",
             "directory to write (orbax variables + model.json)"),
            ("flax2torch", flax2torch, "converted directory", "file to write: .pth, .pt or .safetensors")):
        c = commands.add_parser(name, help=f"{in_help} -> {out_help}")
        c.add_argument("--variant", choices=list_models(), metavar="NAME",
                       help="model name (default: inferred); one of " + ", ".join(list_models()))
        c.add_argument("--input", required=True, help=in_help)
        c.add_argument("--output", required=True, help=out_help)
        c.add_argument("--overwrite", action="store_true", help="replace an existing output")
        c.set_defaults(run=run)
    return p


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    try:
        print(args.run(args))
    except (ConversionError, OSError, hub.ChecksumError) as error:  # OSError: a missing file, no download
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
