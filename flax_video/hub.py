"""Fetching published weight files into a local cache, safely.

A file is looked for in `$FLAX_VIDEO_HOME/checkpoints` (default
`~/.cache/flax_video`), then in torch's hub cache
(`$TORCH_HOME/hub/checkpoints`, default `~/.cache/torch/hub/checkpoints`),
and only then downloaded: from its publisher, or from `$FLAX_VIDEO_MIRROR/<file
name>` when that is set. A download goes to a temporary file beside the target
and is renamed into place only after its sha256 is checked, under a lock, so an
interrupted download or a second process never leaves a partial file where a
complete one is expected. `FLAX_VIDEO_OFFLINE=1` forbids downloads.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import http.client
import os
import sys
import tempfile
import urllib.request
from pathlib import Path

from tqdm import tqdm

CHUNK = 1 << 20


class WeightsUnavailable(OSError):
    """The file is not cached and cannot be downloaded."""


class ChecksumError(ValueError):
    """A file's sha256 does not match the one published with it."""


def home() -> Path:
    return Path(os.environ.get("FLAX_VIDEO_HOME") or Path.home() / ".cache" / "flax_video")


def torch_hub_checkpoints() -> Path:
    torch_home = os.environ.get("TORCH_HOME") or Path.home() / ".cache" / "torch"
    return Path(torch_home) / "hub" / "checkpoints"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while chunk := file.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def matches(path: Path, sha256: str) -> bool:
    """Whether the file's sha256 starts with `sha256` (a full hash or the
    prefix that torchvision-style file names carry)."""
    return sha256_of(path).startswith(sha256.lower())


@contextlib.contextmanager
def locked(name: str):
    """An exclusive lock across processes for work on the cache entry `name`;
    the kernel releases it when a holder dies, so a killed process never
    leaves it stuck."""
    lock_dir = home() / "locks"
    lock_dir.mkdir(parents=True, exist_ok=True)
    with open(lock_dir / f"{name}.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def source_url(url: str) -> str:
    mirror = os.environ.get("FLAX_VIDEO_MIRROR")
    return f"{mirror.rstrip('/')}/{url.rsplit('/', 1)[-1]}" if mirror else url


def _download(url: str, target: Path, sha256: str, progress: bool) -> None:
    handle, staging = tempfile.mkstemp(prefix=f".{target.name}.tmp-", dir=target.parent)
    try:
        digest = hashlib.sha256()
        with os.fdopen(handle, "wb") as out, urllib.request.urlopen(url, timeout=60) as response:
            size = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(total=size, unit="B", unit_scale=True, unit_divisor=1024, desc=target.name,
                      disable=not progress, file=sys.stderr) as bar:
                while chunk := response.read(CHUNK):
                    out.write(chunk)
                    digest.update(chunk)
                    bar.update(len(chunk))
            if size is not None and out.tell() != size:
                raise WeightsUnavailable(f"{url}: the download stopped at {out.tell()} of {size} bytes")
        if not digest.hexdigest().startswith(sha256.lower()):
            raise ChecksumError(f"{url}: sha256 {digest.hexdigest()} does not start with the published "
                                f"{sha256}; the file was deleted")
        os.replace(staging, target)
    finally:
        if os.path.exists(staging):
            os.remove(staging)


def fetch(url: str, sha256: str, progress: bool = True) -> Path:
    """The local path of the file published at `url` with hash `sha256`,
    downloaded into the cache if neither cache has it."""
    name = url.rsplit("/", 1)[-1]
    target = home() / "checkpoints" / name
    torch_copy = torch_hub_checkpoints() / name
    with locked(name):
        if target.is_file():
            return target
        if torch_copy.is_file():
            if matches(torch_copy, sha256):
                return torch_copy
            print(f"warning: ignoring {torch_copy}: its sha256 does not start with {sha256}", file=sys.stderr)
        where = (f"Download {url} yourself and place it at {target} (or in {torch_copy.parent}), "
                 "or set FLAX_VIDEO_MIRROR to a server that holds it.")
        if os.environ.get("FLAX_VIDEO_OFFLINE", "").lower() in ("1", "true", "yes"):
            raise WeightsUnavailable(f"{name} is not cached and FLAX_VIDEO_OFFLINE is set. {where}")
        target.parent.mkdir(parents=True, exist_ok=True)
        source = source_url(url)
        try:
            _download(source, target, sha256, progress)
        except (OSError, http.client.HTTPException) as error:  # URLError is an OSError
            if isinstance(error, WeightsUnavailable):
                raise WeightsUnavailable(f"{error}. {where}") from None
            raise WeightsUnavailable(f"cannot download {name} from {source} ({error}). {where}") from None
        return target
