"""Converted weights on disk: a directory holding `model.json` (model name and
number of classes) and `variables/`, an orbax checkpoint of
`{"params", "batch_stats"}`."""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import orbax.checkpoint as ocp

MODEL_FILE = "model.json"
VARIABLES_DIR = "variables"


def read_model_info(path: str | os.PathLike) -> dict:
    """`{"model": name, "num_classes": n}` of a converted directory."""
    info_path = Path(path) / MODEL_FILE
    if not info_path.is_file():
        raise FileNotFoundError(f"{path} is not a converted flax_video directory (no {MODEL_FILE})")
    return json.loads(info_path.read_text())


def load_converted(path: str | os.PathLike, variant: str | None = None) -> tuple[dict, str]:
    """Variables and model name of a converted directory; `variant`, when
    given, must be the model the directory holds."""
    name = read_model_info(path)["model"]
    if variant and variant != name:
        raise ValueError(f"{path} holds {name} weights, not {variant}")
    with ocp.StandardCheckpointer() as checkpointer:
        return checkpointer.restore(Path(path).absolute() / VARIABLES_DIR), name


def load_variables(path: str | os.PathLike) -> dict:
    """Variables of a converted directory, ready for `model.apply`."""
    return load_converted(path)[0]


def save_variables(variables: dict, path: str | os.PathLike, model_name: str,
                   num_classes: int, overwrite: bool = False) -> None:
    """Write a converted directory atomically: built under a temporary name
    beside `path`, then renamed; an existing `path` is replaced only with
    `overwrite`, and only once the new one is complete."""
    path = Path(path).absolute()
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass overwrite=True (--overwrite) to replace it")
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        with ocp.StandardCheckpointer() as checkpointer:
            checkpointer.save(staging / VARIABLES_DIR, variables)
        (staging / MODEL_FILE).write_text(
            json.dumps({"model": model_name, "num_classes": num_classes}, indent=2) + "\n")
        if path.exists():
            retired = path.with_name(f".{path.name}.old-{os.getpid()}")
            path.rename(retired)
            staging.rename(path)
            shutil.rmtree(retired)
        else:
            staging.rename(path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
