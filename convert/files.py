"""Reading and writing torch weight files.

`.pth`/`.pt` are read with `torch.load(weights_only=True)`, so a file that
needs arbitrary pickled code is refused and never executed; `.safetensors` is
read and written with numpy alone, without importing torch.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np

from convert.core import ConversionError, to_numpy

TORCH_SUFFIXES = (".pth", ".pt")
WEIGHT_SUFFIXES = TORCH_SUFFIXES + (".safetensors",)


def _check_suffix(path: Path):
    if path.suffix not in WEIGHT_SUFFIXES:
        raise ConversionError(f"{path}: unsupported file type {path.suffix!r}; "
                              f"expected one of {', '.join(WEIGHT_SUFFIXES)}")


def read_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """A state dict from a bare `.pth`/`.pt` state dict, a training checkpoint
    with a `model` entry (torchvision's reference scripts), or `.safetensors`."""
    path = Path(path)
    _check_suffix(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    if path.suffix == ".safetensors":
        from safetensors.numpy import load_file
        return dict(load_file(path))
    import pickle

    import torch
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise ConversionError(f"{path}: refused to load: it needs arbitrary pickled code, "
                              f"which is never executed ({str(error).splitlines()[0]})") from None
    except (RuntimeError, EOFError) as error:
        raise ConversionError(f"{path}: not a readable torch file ({error})") from None
    if isinstance(loaded, dict) and isinstance(loaded.get("model"), dict):
        loaded = loaded["model"]
    if not isinstance(loaded, dict) or not all(hasattr(v, "shape") for v in loaded.values()):
        raise ConversionError(f"{path}: holds no state dict (name -> tensor), nor a checkpoint "
                              "with a 'model' state dict")
    return {key: to_numpy(value) for key, value in loaded.items()}


def write_state_dict(state_dict: dict[str, np.ndarray], path: str | os.PathLike,
                     overwrite: bool = False) -> None:
    """Write `.pth`/`.pt` (torch tensors) or `.safetensors` atomically; an
    existing file is replaced only with `overwrite`."""
    path = Path(path).absolute()
    _check_suffix(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass --overwrite to replace it")
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, staging = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    os.close(handle)
    try:
        if path.suffix == ".safetensors":
            from safetensors.numpy import save_file
            save_file({k: np.require(v, requirements="C") for k, v in state_dict.items()}, staging)
        else:
            import torch
            torch.save({k: torch.from_numpy(np.require(v, requirements="C")) for k, v in state_dict.items()},
                       staging)
        os.replace(staging, path)
    finally:
        if os.path.exists(staging):
            os.remove(staging)
