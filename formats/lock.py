"""An exclusive lock on a directory that a command writes: a run directory, or a cache being made.

`fcntl.flock` on `DIR/.lock`: the kernel releases it when the holder exits, however it exits
(kill -9 included), so a stale lock never needs cleaning. The holder's pid is written into the
file so that the process that is refused can say who holds it.

The pid is written into the lock file itself, so the lock file must be ours: it is opened with
O_NOFOLLOW (a `.lock` that is a symbolic link would send the pid into its target, truncating
it) and refused unless it is a regular file with one name (a hard link to a user's file would
be truncated the same way).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import stat
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
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd = _open_own_lock(path / LOCK_NAME, flag)
    except OSError as exc:  # read-only, no permission, no space: the folder, not a traceback
        raise InputError(f"{flag} {path}: cannot create or lock ({exc.strerror})") from None
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


def _open_own_lock(lock_file: Path, flag: str) -> int:
    """The lock file's descriptor, refusing (one line) a `.lock` that is not a plain file of ours."""
    refused = f"{flag} {lock_file.parent}: {LOCK_NAME} is not a lock file kto made"
    try:
        # O_NONBLOCK: a FIFO named .lock must not hang the open; it is refused below.
        fd = os.open(lock_file, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK, 0o644)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise InputError(f"{refused} (a symbolic link); remove it, kto never follows it") from None
        if exc.errno in (errno.EISDIR, errno.ENXIO):
            raise InputError(f"{refused} ({exc.strerror.lower()}); remove it or choose another directory") from None
        raise
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
        os.close(fd)
        what = "not a regular file" if not stat.S_ISREG(st.st_mode) else f"a file with {st.st_nlink} hard links"
        raise InputError(f"{refused} ({what}); remove it or choose another directory")
    return fd
