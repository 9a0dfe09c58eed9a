"""An exclusive lock on a directory that a command writes: a run directory, or a cache being made.

`fcntl.flock` on `DIR/.lock`: the kernel releases it when the holder exits, however it exits
(kill -9 included), so a stale lock never needs cleaning. The holder writes `PID@HOST` into the
file so that the process that is refused can say who holds it: on a shared filesystem (NFS,
where flock locks across machines) or from another container, a bare pid named some unrelated
process here, and a user who found it was not kto took the lock for stale. The lock is never
called stale: flock says it is held. A file of an older kto holds the pid alone.

A filesystem without locks (NFS without lockd: ENOLCK; Lustre mounted without `-o flock`:
ENOSYS or EOPNOTSUPP) is refused in one line, as are folders that cannot be written, and a disk
too full to take the `PID@HOST` (the line every writer gives: atomic.names_write_errors).

The pid is written into the lock file itself, so the lock file must be ours: it is opened with
O_NOFOLLOW (a `.lock` that is a symbolic link would send the pid into its target, truncating
it) and refused unless it is a regular file with one name (a hard link to a user's file would
be truncated the same way).

In a group-shared folder the lock file may be another member's: it is created 0666 so that the
umask decides its mode as it does every other file's, and one that this user cannot open for
writing (made by an older kto as 0644, or under a stricter umask) is opened read-only: flock
needs no write access. Such a holder cannot write its pid, so a refused process may then show
the pid of an earlier holder: the refusal says the pid is the one the lock file records, and,
where no process here has it, gives both explanations (another container, or a holder that
could not write its pid).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import re
import socket
import stat
from collections.abc import Iterator
from pathlib import Path

from .atomic import names_write_errors
from .errors import InputError
from .files import missing_paths, remove_made

LOCK_NAME = ".lock"
RECORD_BYTES = 320  # what a lock file's record is read as (_record); a longer file is not one of ours
# What a lock file holds: `PID@HOST` (_lock writes it; the pid alone from an older kto), or
# nothing yet (killed before it wrote, or opened read-only in a group-shared folder).
_LOCK_TEXT = re.compile(rb"(?:[0-9]+(?:@[^\s]*)?\n?)?")


@contextlib.contextmanager
def locked_dir(path: str | os.PathLike, flag: str) -> Iterator[Path]:
    """Hold an exclusive lock on directory `path` (created if missing) for the `with` block.

    `flag` names the option that chose `path` (e.g. "--out"), for the one-line error that a
    second process gets while the first one holds the lock.
    """
    path = Path(path)
    made = missing_paths(path / LOCK_NAME)  # removed again if locks fail
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, writable = _open_own_lock(path / LOCK_NAME, flag)
    except OSError as exc:  # read-only, no permission, no space: the folder, not a traceback
        raise InputError(f"{flag} {path}: cannot create or lock ({exc.strerror})") from None
    try:
        _lock(fd, path, flag, made)
        if writable:
            _write_holder(fd, path, made)
        yield path
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def _lock(fd: int, path: Path, flag: str, made: list[Path]) -> None:
    """flock `fd` or refuse in one line: held by another process (named), or a filesystem that
    has no locks, where what `locked_dir` made (`made`: the folder, the lock file) is removed."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = holder_of(_record(fd))
        raise InputError(f"{flag} {path}: in use by another kto process ({holder}); wait for it or choose another directory") from None
    except OSError as exc:
        remove_made(made, path / LOCK_NAME)
        raise InputError(
            f"{flag} {path}: its filesystem does not support file locks ({exc.strerror}), which keep two kto processes out of one"
            " directory; choose a directory on a local filesystem, or mount this one with locks (NFS: lockd; Lustre: -o flock)"
        ) from None


def _write_holder(fd: int, path: Path, made: list[Path]) -> None:
    """`PID@HOST` into the locked file `fd`. A full disk (or quota, or `ulimit -f`) refuses even
    these few bytes: the one line every writer gives (names_write_errors), naming the lock file,
    and what `locked_dir` made for it removed, so a refused start leaves no folder behind."""
    try:
        with names_write_errors(path / LOCK_NAME):
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}@{socket.gethostname()}\n".encode(), 0)
    except OSError:
        remove_made(made, path / LOCK_NAME)  # still locked here: no other process can be using what goes
        raise


def _record(fd: int) -> str:
    """What a lock file records (`PID@HOST`), read without moving its offset."""
    return os.pread(fd, RECORD_BYTES, 0).decode(errors="replace")


def reads_as_lock(path: Path) -> bool:
    """Whether the file at `path` reads as a lock file this module writes (_LOCK_TEXT, at most
    RECORD_BYTES): a plain file, not a link. kto-precompute takes such a `.lock` alone in a
    folder for a killed run's (the kill came right after the lock was taken), any other for the
    user's."""
    if path.is_symlink() or not path.is_file():
        return False
    try:
        with open(path, "rb") as f:
            text = f.read(RECORD_BYTES + 1)
    except OSError:
        return False
    return len(text) <= RECORD_BYTES and _LOCK_TEXT.fullmatch(text) is not None


def lock_state(lock: Path) -> tuple[bool | None, str]:
    """(whether a process holds the lock on `lock`, what the file records: `PID@HOST`), or (None,
    what it records) where flock cannot tell. Probed with a shared lock taken and let go at
    once: a kto-precompute starting in that instant is refused as "in use" and runs when
    started again; nothing else is written."""
    try:
        fd = os.open(lock, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)  # a FIFO named .lock must not hang us
    except OSError:
        return None, ""
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None, ""
        text = _record(fd)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True, text
        except OSError:  # no locks on this filesystem (ENOLCK, ENOSYS, EOPNOTSUPP)
            return None, text
        return False, text
    finally:
        os.close(fd)  # lets go of the shared lock, if taken


def holder_of(text: str) -> str:
    """Who holds the lock, as its file records it, `PID@HOST` (`PID` alone: an older kto's):
    `pid 4711 on host node07, as its lock file records`. A recording, not a fact: a holder that
    opened the file read-only (see the module's docstring) left an earlier holder's pid in it.
    On this host a pid that does not run here gets both explanations: the holder is in another
    container or PID namespace, or it could not write its pid (a file lock always has a live
    holder, so the lock is never called stale)."""
    pid, _, host = text.strip().partition("@")
    if not pid:
        return "pid unknown"
    recorded = "as its lock file records"
    if not host:
        return f"pid {pid}, {recorded}"
    if host != socket.gethostname():
        return f"pid {pid} on host {host}, {recorded}"
    if running_here(pid):
        return f"pid {pid} on this host, {host}, {recorded}"
    return (
        f"pid {pid} on this host, {host}, {recorded}; no process has that pid here: the holder runs in another container or PID"
        " namespace, or it opened the lock file read-only and could not write its pid over an earlier holder's"
    )


def running_here(pid: str) -> bool:
    """Whether a process `pid` exists in this PID namespace (one of another user counts)."""
    try:
        os.kill(int(pid), 0)
    except (ValueError, OverflowError, ProcessLookupError):
        return False
    except PermissionError:
        return True
    return True


def _open_own_lock(lock_file: Path, flag: str) -> tuple[int, bool]:
    """The lock file's descriptor and whether it is writable, refusing (one line) a `.lock` that
    is not a plain file of ours, or one that exists but cannot be opened at all."""
    refused = f"{flag} {lock_file.parent}: {LOCK_NAME} is not a lock file kto made"
    # O_NONBLOCK: a FIFO named .lock must not hang the open; it is refused below.
    flags = os.O_NOFOLLOW | os.O_NONBLOCK
    writable = True
    try:
        try:
            # 0o666: the umask decides, as for every other file the commands write.
            fd = os.open(lock_file, os.O_RDWR | os.O_CREAT | flags, 0o666)
        except PermissionError:
            if not os.path.lexists(lock_file):
                raise  # the folder refuses a new file: said of the folder by locked_dir
            fd, writable = _open_read_only(lock_file, flag, flags), False
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
    return fd, writable


def _open_read_only(lock_file: Path, flag: str, flags: int) -> int:
    """Another user's lock file that this one may not write: flock works on a read-only
    descriptor. Refused even that, the error names the lock file, not the whole folder."""
    try:
        return os.open(lock_file, os.O_RDONLY | flags)
    except PermissionError as exc:
        raise InputError(
            f"{flag} {lock_file.parent}: cannot open its lock file {LOCK_NAME} ({exc.strerror}); ask its owner to make it readable, or remove it"
        ) from None


# ---- manifest.json: a reader's open against kto-precompute --overwrite's swap -----------------
#
# A reader (formats/cache.py open_cache) holds a shared lock on manifest.json while it reads it
# and opens the shards it lists; `swap_in` holds an exclusive one on the old manifest.json while
# it removes the old cache and renames the new one in. So a reader never pairs one cache's
# manifest with the other's shards, and once it holds its shards' descriptors the swap may unlink
# their names: the inodes stay readable. Where the filesystem has no locks both go on without
# them; the reader then still sees a replaced manifest.json by its inode (cache.py).


def share_lock(fd: int) -> bool:
    """Wait for a shared flock on `fd` (a read-only descriptor will do); False where the
    filesystem has no locks (ENOLCK, ENOSYS, EOPNOTSUPP). Released when `fd` is closed."""
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)
    except OSError:
        return False
    return True


@contextlib.contextmanager
def manifests_locked(paths: list[Path]) -> Iterator[None]:
    """Hold an exclusive flock on each of `paths` that exists (the manifests a swap replaces),
    waiting for the readers that hold a shared one, for the `with` block."""
    fds = []
    try:
        for path in paths:
            fd = _open_to_lock(path)
            if fd is None:
                continue
            fds.append(fd)
            with contextlib.suppress(OSError):  # no locks on this filesystem: readers re-check the inode
                fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        for fd in fds:
            os.close(fd)


def _open_to_lock(path: Path) -> int | None:
    """A descriptor of `path` to lock, or None where it cannot be opened. Read-write where it
    may be (over NFS an exclusive flock is a write lock, which needs one; nothing is written),
    else read-only. O_NONBLOCK: a FIFO must not hang the open."""
    for flags in (os.O_RDWR, os.O_RDONLY):
        with contextlib.suppress(OSError):
            return os.open(path, flags | os.O_NONBLOCK)
    return None
