"""One run per workdir: an exclusive lock on `WORKDIR/.lock` for the run's
lifetime. It is an `flock`, which the kernel drops when its holder exits in
any way, SIGKILL included, so a killed run never leaves it stuck. (Locks on
network filesystems are only as good as the filesystem's flock.)"""
from __future__ import annotations

import contextlib
import fcntl
import os
import socket
from pathlib import Path


class WorkdirBusy(RuntimeError):
    pass


@contextlib.contextmanager
def owned(workdir: str | Path):
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / ".lock"
    with open(path, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = path.read_text().strip() or "another process"
            raise WorkdirBusy(f"{workdir} is in use by another run ({holder}); wait for it to finish or stop it, "
                              "or choose another --workdir") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
        handle.flush()
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
