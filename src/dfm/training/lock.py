"""One writer per run directory.

Two trainings writing into one ``out_dir`` would prune each other's checkpoints and delete each other's
saves in progress. The trainer therefore holds an exclusive ``flock`` on ``out_dir/.dfm-lock`` while it
trains (only the writing process under torchrun / accelerate). The kernel drops the lock when its holder
exits, however it exits (``kill -9`` included), so a lock left by a crash is never stale: the file stays,
records who held it last, and the next training takes it over. The lock is advisory: it keeps dfm
trainings apart, not other programs.
"""

from __future__ import annotations

import fcntl
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

LOCK_FILE = ".dfm-lock"


class RunInUseError(RuntimeError):
    """Another process is training into the same run directory."""


@contextmanager
def run_lock(out_dir: str | os.PathLike) -> Iterator[Path]:
    """Hold the run directory's lock for the duration of the block (creating the directory if needed);
    raises RunInUseError at once, naming the holder, if another process holds it."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 512, 0).decode(errors="replace").strip() or "another process"
            raise RunInUseError(
                f"{out_dir} is in use by another training ({holder}); wait for it to finish, or train into "
                "another out_dir"
            ) from None
        os.ftruncate(fd, 0)
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}, since {stamp}\n".encode(), 0)
        yield path
    finally:
        os.close(fd)  # releases the lock
