"""Atomic writes: write under a temporary name in the same directory, fsync, then rename.

A crash leaves either the old file or the new one, never a half-written one, and a reader that
globs `shard-*.arrow` never sees a temp file (temp names start with a dot). Temp names are
`.NAME.tmp-PID-THREAD`, `.NAME.old-PID` (the old folder, renamed aside by `atomic_dir`) and
`.NAME.deleted-PID` (a folder renamed aside before it is deleted: `aside_path`);
`remove_stale_temps` clears those a killed run left behind, and only those whose NAME and kind
the caller's writers make: a user's `.photos.old-2023/` or `.notes.tmp-1` is never touched.

A write that fails because the disk is full raises `DiskFullError` (an `InputError`, so every
CLI prints it as one line) naming the path, instead of a traceback from deep inside a writer.
Every writer of the three commands runs inside `disk_full_names`, the one place that turns the
libraries' own ways of saying it (OSError ENOSPC, safetensors' SafetensorError, tokenizers'
plain Exception "... (os error 28)") into that line.

A write past the largest file this process may write (EFBIG, "File too large": its file-size
limit, `ulimit -f`, which batch systems such as SLURM pass to their jobs, or the filesystem's
largest file) raises `FileTooLargeError` the same way, from the same place, saying which limit
and its value. CPython ignores SIGXFSZ at start-up, so such a write fails with EFBIG: the signal,
whose default action is to kill the process with a core dump, never ends a kto command.

A write that the filesystem refuses (a read-only mount: EROFS; no permission: EACCES, EPERM)
raises `NotWritableError` the same way, from every atomic write here (`names_write_errors`);
`check_can_create` asks the same question before a command's expensive work. Removing a failed
write's temp name never replaces the error that stopped the write (on a read-only mount the
removal fails too). A name too long for its filesystem (ENAMETOOLONG) is said the same way.

A NAME near the filesystem's limit on a name (255 bytes on most) leaves no room for the ~30
characters a temp name adds: its temp names use a shorter stem instead, the start of NAME plus
a hash of all of it (`temp_stem`), so that a legal name is always writable. The stem is the same
for every kind and every process, so an `owns` that compares it with `temp_stem(NAME, DIR)`
recognises a killed run's temp names.

A symbolic link at `path` is replaced, never followed: a link planted in a cache or a run (as its
`.verified.json`, say) must not send kto's own writes elsewhere. A path the user named (kto-inspect
score --out) is resolved first by `write_target`: its target is replaced and the link stays; a
link to nothing, or a loop, is refused in one line.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import resource
import shutil
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from .errors import InputError, log

# Exactly the shapes this module makes: .NAME.tmp-PID-THREAD (temp_path_for), .NAME.old-PID and
# .NAME.deleted-PID (aside_path). Nothing looser: a name that merely resembles one is a user's.
TEMP_NAME = re.compile(r"^\.(?P<name>.+)\.(?:(?P<tmp>tmp)-[0-9]+-[0-9]+|(?P<aside>old|deleted)-[0-9]+)$")
_FULL = (errno.ENOSPC, errno.EDQUOT)
# How libraries that do not raise OSError say it: safetensors ("I/O error: No space left on
# device (os error 28)"), tokenizers (a plain Exception with the same words), pyarrow.
_FULL_WORDS = ("No space left on device", "os error 28", "Disk quota exceeded", "os error 122")
# EFBIG, the same ways: pyarrow's OSError carries errno 27; safetensors and tokenizers the words.
_TOO_LARGE_WORDS = ("File too large", "os error 27", "errno 27")
# The filesystem refuses to change the folder: read-only mount, no write permission, or a flag
# such as chattr +i (root gets EPERM, not EACCES, there).
_REFUSED = (errno.EROFS, errno.EACCES, errno.EPERM)
# Room that the longest temp name takes beside its stem: "." before it and ".tmp-PID-THREAD"
# after it, with a 7-digit pid (pid_max is at most 2**22) and a 20-digit thread id (64 bits).
_SUFFIX_ROOM = 1 + len(".tmp-") + 7 + 1 + 20
_HASH_CHARS = 16
_SHORT_STEM = re.compile(rf"~[0-9a-f]{{{_HASH_CHARS}}}$")


class DiskFullError(InputError, OSError):
    """A write failed for lack of space (ENOSPC, or the quota: EDQUOT).

    Also an OSError, so code that tolerates a failed optional write (`except OSError`, e.g. the
    shard verification stamp) keeps tolerating it. `then`: what to do once space is freed (a
    command that cannot simply run again, kto-train with a checkpoint, says to resume)."""

    def __init__(self, path: str | os.PathLike, then: str = "run the command again"):
        super().__init__(f"{path}: no space left on device; free some space and {then}")
        self.path = path


class FileTooLargeError(InputError, OSError):
    """A write failed with EFBIG: past the process's file-size limit (`ulimit -f`) or, without
    one, the filesystem's largest file. An OSError too, as `DiskFullError` is."""

    def __init__(self, path: str | os.PathLike, limit: int | None, then: str = "run the command again"):
        if limit is not None:
            # EFBIG does not say which cap it met: the process's limit, or the filesystem's own
            # largest file under a limit set higher. `ulimit -f` counts 1024-byte blocks.
            why = (
                f"file too large: this process may write files of at most {limit} bytes (its file-size limit, "
                f"`ulimit -f` {limit // 1024}, which batch systems such as SLURM pass to their jobs), or its "
                f"filesystem's largest file is smaller; raise that limit (or write elsewhere) and {then}"
            )
        else:
            why = f"file too large for its filesystem; write it to another filesystem and {then}"
        super().__init__(f"{path}: {why}")
        self.path = path
        self.limit = limit


def _file_size_limit() -> int | None:
    """This process's file-size limit in bytes (RLIMIT_FSIZE's soft value), None when unlimited."""
    soft, _ = resource.getrlimit(resource.RLIMIT_FSIZE)
    return None if soft == resource.RLIM_INFINITY else soft


def is_too_large(error: BaseException) -> bool:
    """EFBIG, or a library's exception whose message says so (see _TOO_LARGE_WORDS)."""
    if isinstance(error, (FileTooLargeError, DiskFullError)):
        return False  # already named: keep the innermost path
    if isinstance(error, OSError) and error.errno == errno.EFBIG:
        return True
    return isinstance(error, Exception) and any(w in str(error) for w in _TOO_LARGE_WORDS)


class NotWritableError(InputError, OSError):
    """A write the filesystem refused (_REFUSED: EROFS, EACCES, EPERM) at `path`.

    Also an OSError, as `DiskFullError` is, so that an optional write (the shard verification
    stamp on a read-only cache) is still skipped by its `except OSError`."""

    def __init__(self, path: str | os.PathLike, code: int, why: str | None = None) -> None:
        super().__init__(f"{path}: {why or f'cannot write ({os.strerror(code)}); choose a writable location'}")
        self.path = path


def name_too_long(path: str | os.PathLike) -> NotWritableError:
    """ENAMETOOLONG at `path`, as one line (a NotWritableError, so callers prefix their flag)."""
    return NotWritableError(path, errno.ENAMETOOLONG, f"cannot write ({os.strerror(errno.ENAMETOOLONG)}); choose a shorter name")


def _refused_at(error: BaseException, path: Path) -> bool:
    """EROFS/EACCES/EPERM met while writing `path`: in its folder (the temp name, the rename,
    the fsync), or naming no file (pyarrow's). One that names a file elsewhere (a source that a
    block reads, unreadable) is not about `path` and passes through."""
    if isinstance(error, (NotWritableError, DiskFullError)) or not isinstance(error, OSError) or error.errno not in _REFUSED:
        return False  # an error already named keeps its innermost path
    if error.filename is None or isinstance(error.filename, int):
        return True
    return Path(os.path.abspath(os.fsdecode(error.filename))).is_relative_to(os.path.abspath(path.parent))


def is_disk_full(error: BaseException) -> bool:
    """ENOSPC/EDQUOT, or a library's exception whose message says so (see _FULL_WORDS)."""
    if isinstance(error, DiskFullError):
        return False  # already named: keep the innermost path
    if isinstance(error, OSError) and error.errno in _FULL:
        return True
    return isinstance(error, Exception) and any(w in str(error) for w in _FULL_WORDS)


# torch's C++ zip writer swallows the OSError of a failed write and fails later with one of
# these, naming no cause; torch.distributed.checkpoint passes that text on. Counted as a full disk
# only when the filesystem that holds the path has (almost) nothing left.
_SHORT_WRITE = ("unexpected pos", "file write failed")
_NEARLY_FULL = 1 << 20  # bytes free; what a failed write leaves is far below this


def _short_write_on_full_disk(error: BaseException, path: Path) -> bool:
    if not any(w in str(error) for w in _SHORT_WRITE):
        return False
    existing = next((p for p in (path, *path.parents) if p.exists()), None)
    try:
        return existing is not None and shutil.disk_usage(existing).free < _NEARLY_FULL
    except OSError:
        return False


@contextlib.contextmanager
def disk_full_names(path: str | os.PathLike) -> Iterator[None]:
    """Turn a full disk inside the block into a one-line `DiskFullError` naming `path`, and a
    write past the largest file allowed (EFBIG) into a `FileTooLargeError`."""
    try:
        yield
    except Exception as e:
        if is_too_large(e):
            raise FileTooLargeError(path, _file_size_limit()) from None
        if is_disk_full(e) or (not isinstance(e, (DiskFullError, FileTooLargeError)) and _short_write_on_full_disk(e, Path(path))):
            raise DiskFullError(path) from None
        raise


@contextlib.contextmanager
def names_write_errors(path: str | os.PathLike) -> Iterator[None]:
    """`disk_full_names`, and a refused write inside the block becomes a one-line
    `NotWritableError` naming `path`. Every atomic write of this module runs inside it."""
    try:
        with disk_full_names(path):
            yield
    except OSError as e:
        if _refused_at(e, Path(path)):
            raise NotWritableError(path, e.errno) from None
        if e.errno == errno.ENAMETOOLONG and not isinstance(e, NotWritableError):
            raise name_too_long(path) from None
        raise


def check_can_create(path: str | os.PathLike) -> None:
    """Refuse, with the one line an atomic write of `path` would end in, a folder where that
    write cannot create its temp name: before the work that would produce the file. A real
    create, not os.access: root passes every permission check but not a read-only mount."""
    path = Path(path)
    _refuse_too_long(path)
    tmp = temp_path_for(path)
    with names_write_errors(path):
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        os.close(fd)
    _remove_quietly(tmp)


def _refuse_too_long(path: Path) -> None:
    """A name past the filesystem's limit, in one line: its temp name is shortened and fits, so
    only the rename would fail, after the work."""
    if len(os.fsencode(path.name)) > name_max(path.parent):
        raise name_too_long(path)


def write_target(path: str | os.PathLike) -> Path:
    """The file that a write of a path the user named (kto-inspect score --out) replaces: `path`,
    or the target of the symbolic link `path` (replacing the link with a regular file would
    leave its target stale, while every check before the write follows the link). A link to
    nothing, or a loop, is refused in one line, as formats/files.py `output_dir` refuses one for
    a folder. Not for the files kto names itself (atomic_path does not follow links): a link
    planted in a cache or run as `.verified.json` would have sent a write to any file."""
    path = Path(path)
    _refuse_too_long(path)
    if not path.is_symlink():
        return path
    try:
        os.path.realpath(path, strict=True)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise NotWritableError(path, errno.ELOOP, "a symbolic link loop; give another path") from None
    if not path.exists():
        target = os.readlink(path)
        missing = "directory" if not Path(os.path.realpath(path)).parent.is_dir() else "file"
        raise NotWritableError(path, errno.ENOENT, f"a symbolic link to {target}, which does not exist; create that {missing} or give another path")
    return Path(os.path.realpath(path))


def _fsync_dir(path: Path) -> None:
    """Persist a rename: the directory entry itself must reach the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(root: Path) -> None:
    """Every file and every folder under root (a folder's fsync makes the names in it durable),
    root last."""
    for p in sorted(root.rglob("*")):
        if p.is_symlink():
            continue
        if p.is_file():
            with open(p, "rb") as f:
                os.fsync(f.fileno())
        elif p.is_dir():
            _fsync_dir(p)
    _fsync_dir(root)


def name_max(folder: str | os.PathLike) -> int:
    """The longest file name (bytes) that `folder`'s filesystem takes; 255 where it cannot say."""
    try:
        limit = os.pathconf(folder, "PC_NAME_MAX")
    except (OSError, ValueError):  # no such folder yet, or no such limit on this system
        return 255
    return limit if limit > 0 else 255


def temp_stem(name: str, folder: str | os.PathLike) -> str:
    """NAME as the temp names of `folder/NAME` carry it: NAME itself, or, where NAME leaves no
    room for the temp suffix within the filesystem's limit, its start plus `~` and a hash of
    all of it. The same in every process and for every kind, so `owns` may compare with it."""
    limit = name_max(folder)
    if len(os.fsencode(name)) + _SUFFIX_ROOM <= limit:
        return name
    digest = hashlib.sha256(os.fsencode(name)).hexdigest()[:_HASH_CHARS]
    room = max(0, limit - _SUFFIX_ROOM - len(digest) - 1)
    stem = name
    while len(os.fsencode(stem)) > room:  # by characters, so no character is cut in half
        stem = stem[:-1]
    return f"{stem}~{digest}"


def temp_path_for(path: Path) -> Path:
    # Process and thread: kto-train's batch prefetch thread may record a verified shard while the
    # main thread records another in the same cache directory.
    return path.with_name(f".{temp_stem(path.name, path.parent)}.tmp-{os.getpid()}-{threading.get_ident()}")


def aside_path(path: Path, kind: str) -> Path:
    """`.NAME.KIND-PID` next to `path`: where `path` is renamed before it is replaced (`old`) or
    deleted (`deleted`), so that no half-replaced or half-deleted `path` is ever visible."""
    return path.with_name(f".{temp_stem(path.name, path.parent)}.{kind}-{os.getpid()}")


def free_name(path: Path, nth: Callable[[int], str] | None = None) -> Path:
    """`path`, or path.1, path.2 … : the first name not taken. nth(n): the n-th name where the
    number goes elsewhere (before a suffix)."""
    n, free = 0, path
    while free.exists() or free.is_symlink():
        n += 1
        free = path.with_name(nth(n) if nth else f"{path.name}.{n}")
    return free


def is_temp_name(name: str) -> bool:
    """True for the temp names of this module (`.NAME.tmp-PID-THREAD`, `.NAME.old-PID`, `.NAME.deleted-PID`)."""
    return TEMP_NAME.match(name) is not None


def parse_temp_name(name: str) -> tuple[str, str] | None:
    """(NAME, kind) of one of this module's temp names, kind being tmp, old or deleted; else None.
    NAME is the stem the temp name carries: `temp_stem(NAME, DIR)` for a name near the limit."""
    m = TEMP_NAME.match(name)
    return (m["name"], m["tmp"] or m["aside"]) if m else None


def _remove(path: Path) -> None:
    """Delete a file or a folder (a link to a folder is a file here), whichever `path` is, if any."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _remove_quietly(path: Path) -> None:
    """`_remove` for a cleanup in a finally block: an error here must not replace the one that
    stopped the write (on a read-only mount the unlink fails too, even of a missing name). A
    temp name that really stays is said; a later run's `remove_stale_temps` clears it."""
    try:
        _remove(path)
    except OSError as e:
        if os.path.lexists(path):
            log(f"note: could not remove the temp file {path} ({e.strerror or e}); delete it by hand")


@dataclass(frozen=True)
class StaleTemp:
    """One temp name that a killed run left, and what `remove_stale_temps` did with it."""

    path: Path
    restored_to: Path | None = None  # renamed back onto its original name instead of deleted

    def __str__(self) -> str:
        return f"restored {self.restored_to.name} from {self.path.name}" if self.restored_to else f"removed {self.path.name}"


def remove_stale_temps(directory: str | os.PathLike, owns: Callable[[str, str], bool], restore_old: bool = False) -> list[StaleTemp]:
    """Clear our temp names in `directory` (not below it) that a killed run left; return them.

    `owns(NAME, KIND)`: True only for a NAME that the caller's own writers write in `directory`
    and a KIND (tmp, old, deleted) that they make for it; every other name, temp-shaped or not,
    is left alone (the caller refuses what it does not own). `restore_old`: an `.NAME.old-PID`
    whose NAME is missing (killed between atomic_dir's two renames) is the last complete version
    of NAME: it is renamed back instead of deleted.

    Only call it while holding the directory's lock (formats/lock.py): a temp name of a live
    writer looks the same as one of a killed writer.
    """
    directory = Path(directory)
    done: list[StaleTemp] = []
    if not directory.is_dir():
        return done
    for p in sorted(directory.iterdir()):
        parsed = parse_temp_name(p.name)
        if parsed is None or not owns(*parsed) or p.is_symlink():
            continue  # a link is never one of ours: we rename and write real files and folders
        name, kind = parsed
        original = directory / name
        if restore_old and kind == "old" and _SHORT_STEM.search(name):
            continue  # a shortened stem does not say which name to restore: leave it, never lose it
        if restore_old and kind == "old" and not original.exists():
            os.replace(p, original)
            done.append(StaleTemp(p, restored_to=original))
        else:
            _remove(p)
            done.append(StaleTemp(p))
    return done


@contextlib.contextmanager
def _temp_beside(path: Path) -> Iterator[Path]:
    """A temp name next to `path`, for the block to fill and rename onto `path`; whatever is left
    under it at the end (the block failed) is removed, and a full disk or a refused write names
    `path` (`names_write_errors`)."""
    tmp = temp_path_for(path)
    try:
        with names_write_errors(path):
            yield tmp
    finally:
        _remove_quietly(tmp)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp path to write to; on success it is fsynced and renamed onto `path`. A
    symbolic link at `path` is replaced, not followed: a link kto did not make inside its own
    folders (a cache's `.verified.json`, say) must not send the write elsewhere. Resolve a path
    the user named with `write_target` first."""
    path = Path(path)
    _refuse_too_long(path)
    with _temp_beside(path) as tmp:
        yield tmp
        if tmp.is_file():
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
        rename_into_place(tmp, path)


def rename_into_place(tmp: Path, path: Path) -> None:
    """os.replace, then fsync the folder so that the rename itself survives a power cut."""
    with names_write_errors(path):
        os.replace(tmp, path)
        _fsync_dir(Path(path).parent)


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_json_atomic(path: str | os.PathLike, obj: object) -> None:
    write_bytes_atomic(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp directory; on success it replaces `path` (an old `path` is removed first)."""
    path = Path(path)
    with _temp_beside(path) as tmp:
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
        yield tmp
        _fsync_tree(tmp)  # contents on disk before the rename makes them visible
        if path.exists():
            # Rename the old one aside first, so the window without any `path` is one rename long.
            old = aside_path(path, "old")
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
        _fsync_dir(path.parent)
