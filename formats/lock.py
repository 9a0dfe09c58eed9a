"""An exclusive lock on a directory that a command writes: a run directory, or a cache being made.

`fcntl.flock` on `DIR/.lock`: the kernel releases it when the holder exits, however it exits
(kill -9 included), so a stale lock never needs cleaning. The holder's pid is written into the
file so that the process that is refused can say who holds it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from .errors import InputError

LOCK_NAME = ".lock"


@contextlib.contextmanager
def locked_dir(path: str | os.PathLike, flag: str) -> Iterator[Path]:
    """Hold an exclusive lock on directory `path` (created if missing) for the `with` block.

    `flag` names the option that chose `path` (e.g. "--out"), for the one-line error that a
    second process gets while the first one holds the lock.
    """
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    lock_file = path / LOCK_NAME
    fd = os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            raise InputError(f"{flag} {path}: in use by another kto process (pid {holder}); wait for it or choose another directory") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield path
    finally:
        os.close(fd)  # closing the descriptor releases the lock
