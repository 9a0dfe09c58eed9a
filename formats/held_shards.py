"""Hold a cache's shards open, so that a reader reads the cache it opened to its end.

Owns what formats/cache.py `open_cache` does before any shard is read: manifest.json read and
every listed shard opened together, under a shared flock on manifest.json (formats/lock.py; the
`kto-precompute --overwrite` swap, precompute/output.py `swap_in`, takes an exclusive one and
waits), re-read where a rename replaced the manifest meanwhile (a filesystem without locks).
Once held, the swap may unlink the shards' names: their inodes stay readable through these
descriptors. Before, each shard was opened by path at its first use, and one opened after a
swap was the new file, refused as "modified or corrupt" while `kto-inspect verify` said ok.

It also owns the open-files budget of the whole process: a held shard costs two descriptors in
the end (the held one, and the one its memory map keeps: Python's mmap duplicates it); a
shard read by path none once read (pyarrow's memory map keeps no descriptor open). Every open
cache's share is reserved here until
it is closed, so a second cache (kto-train's eval cache beside its train cache) is held only
where it fits beside the first one's memory maps still to come; else its shards are read by
path, as before holding existed. The soft RLIMIT_NOFILE is raised to the hard one where needed.

Who holds: kto-train (its train and eval caches), `kto-inspect score`/`rows` reading rows,
`kto-inspect summary`/`verify` reading every shard, `kto.formats.scan`. Who does not
(`open_cache(hold=False)`): callers that read only the manifest (kto-train's config check,
the early checks of kto-precompute and kto-train, `kto-inspect`'s manifest comparisons).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import stat
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from . import schema as S
from .errors import InputError
from .lock import share_lock
from .manifest import Manifest, read_manifest

# How often a manifest.json replaced while it was read is read again before giving up: each
# retry means that a whole --overwrite swap came and went meanwhile.
READ_TRIES = 20
# Descriptors kept free beside the shards' own, for everything else the process opens.
SPARE_DESCRIPTORS = 256

_budget = threading.Lock()
_reserved = [0]  # descriptors promised to the open caches of this process, not all open yet

Identity = tuple[int, int]  # manifest.json's (st_dev, st_ino) as read


@dataclass
class Holding:
    """What one open cache holds: `fds`, a descriptor of each listed shard (None: missing or
    not a regular file at open; the OSError: could not be opened), or None where its shards
    are read by path; `reserved`, its share of the process's open-files budget."""

    fds: list | None
    reserved: int = 0
    _closed: list = field(default_factory=list)

    def close(self) -> None:
        """Close the descriptors and give back the reservation (once)."""
        if self._closed:
            return
        self._closed.append(True)
        for fd in self.fds or []:
            if isinstance(fd, int):
                with contextlib.suppress(OSError):
                    os.close(fd)
        with _budget:
            _reserved[0] -= self.reserved


def read_holding(cache_dir: Path, *, hold: bool) -> tuple[Manifest, Holding, Identity | None]:
    """The manifest of `cache_dir`, its shards held (`hold`, where they fit the open-files
    limit) and manifest.json's identity, read together: holding a shared lock on manifest.json
    (the swap's exclusive one waits), and seeing it still name the inode read before and after
    (a swap where the filesystem has no locks: read again)."""
    path = cache_dir / S.MANIFEST_NAME
    for _ in range(READ_TRIES):
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # O_NONBLOCK: a FIFO must not hang us
        except OSError as exc:
            if out_of_descriptors(exc):
                raise InputError(limit_line(path)) from None
            return read_manifest(cache_dir), Holding(None), None  # read_manifest says why, in one line
        try:
            share_lock(fd)  # released by the close below; False where the filesystem has no locks
            if not names(path, fd):
                continue
            manifest = read_manifest(cache_dir)
            holding = open_shards(cache_dir, manifest) if hold else Holding(None)
            if names(path, fd):
                st = os.fstat(fd)
                return manifest, holding, (st.st_dev, st.st_ino)
            holding.close()
        finally:
            os.close(fd)
    raise InputError(f"{path}: replaced {READ_TRIES} times while this process read it; is a kto-precompute --overwrite rebuilding {cache_dir} again and again?")


def names(path: Path, fd: int) -> bool:
    """`path` still names the file open as `fd` (a rename onto it makes it name another)."""
    try:
        now = os.stat(path)
    except OSError:
        return False
    held = os.fstat(fd)
    return (now.st_dev, now.st_ino) == (held.st_dev, held.st_ino)


def open_shards(cache_dir: Path, manifest: Manifest) -> Holding:
    """A read-only descriptor of each listed shard, two descriptors each reserved; where they
    do not fit the open-files limit, none, and none reserved (shards read by path)."""
    shards = len(manifest.shards)
    with _budget:  # checked and reserved in one go: two threads opening caches at once
        if not descriptors_fit(shards):
            return Holding(None)
        _reserved[0] += 2 * shards
    fds: list = []
    holding = Holding(fds, 2 * shards)  # its close() gives the reservation back
    for entry in manifest.shards:
        try:
            fd = os.open(cache_dir / entry.name, os.O_RDONLY | os.O_NONBLOCK)
        except OSError as exc:
            if exc.errno in (errno.EMFILE, errno.ENFILE):  # the limit, after all: read by path
                holding.close()
                return Holding(None)
            fds.append(None if exc.errno in (errno.ENOENT, errno.ENOTDIR) else exc)
            continue
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            fd = None
        fds.append(fd)
    return holding


def descriptors_fit(shards: int) -> bool:
    """Room under RLIMIT_NOFILE for `shards` held shards (two descriptors each) beside those
    open now, those reserved for the caches already open, and SPARE_DESCRIPTORS. Counts the
    held descriptors of open caches twice (open now and reserved): it errs toward reading by
    path. The soft limit is raised to the hard one where needed; False where that is too few.
    Called holding `_budget` (open_shards)."""
    import resource

    try:
        in_use = len(os.listdir("/proc/self/fd"))
    except OSError:  # not Linux: counted as none
        in_use = 0
    want = in_use + _reserved[0] + 2 * shards + SPARE_DESCRIPTORS
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or want <= soft:
        return True
    if hard != resource.RLIM_INFINITY and want > hard:
        return False
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard if hard != resource.RLIM_INFINITY else want, hard))
    except (ValueError, OSError):
        return False
    return True


def out_of_descriptors(exc: BaseException) -> bool:
    """`exc` is the open-files limit (EMFILE, ENFILE), from the OS or through pyarrow."""
    if isinstance(exc, OSError) and exc.errno in (errno.EMFILE, errno.ENFILE):
        return True
    return "Too many open files" in str(exc)


def limit_line(path: Path) -> str:
    """The refusal of a read that ran out of descriptors: the limit, not the shard."""
    import resource

    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return f"{path}: too many open files (limit {soft}): raise it with ulimit -n {max(2 * soft, 4096)} before the command"


@contextlib.contextmanager
def still_current(path: Path, identity: Identity) -> Iterator[bool]:
    """True while manifest.json at `path` is still the one read as `identity`, holding a shared
    lock on it for the block (a swap waits); False where it was replaced, or a swap holds it."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError:
        yield False
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            busy = False
        except BlockingIOError:
            busy = True
        except OSError:  # no locks on this filesystem: the inode tells
            busy = False
        st = os.fstat(fd)
        yield not busy and (st.st_dev, st.st_ino) == identity and names(path, fd)
    finally:
        os.close(fd)
