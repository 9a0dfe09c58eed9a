"""Files the commands read whole: only regular files, each refusal one line naming the path.

A FIFO blocks a read until someone writes to it, and a character device such as `/dev/zero`
never ends one: `--data` given either (directly or through a symlink) hung kto-precompute while
its memory grew without limit. So every file a command reads whole (inputs, `--config`,
`--chat-template`, `--sharegpt-info`) is first `stat`ed, symlinks resolved, and must be a
regular file; a directory input must be a directory and hold only regular files and folders.
Of these, the files read whole as configuration (utf8_text) are also capped in size (CONFIG_BYTES).

`read_json` is how every cache and run file (manifest.json, .verified.json,
.tokenizer-checked.json, the journal, run/kto_run.json, checksums.json, tokenizer.json) is read: Python's parser
raises RecursionError, not ValueError, on JSON nested a few thousand levels deep, and that came
out of verify, summary, rows and kto-train as a traceback. Here every failure is one line,
`PATH: unreadable (why)`; callers that can do without the file (a stamp, a remembered check)
catch it and carry on.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

from .errors import InputError

_KINDS = (
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISDIR, "a directory"),
)


def kind_of(mode: int) -> str:
    """'a FIFO', 'a character device', … for a `st_mode` that is not a regular file."""
    return next((name for test, name in _KINDS if test(mode)), "not a regular file")


CONFIG_BYTES = 16 << 20
"""The most a file read whole as configuration may hold (utf8_text: --config, --chat-template,
dataset_info.json, --sharegpt-info). Such files are kilobytes; a 1 GB YAML --config was parsed for
minutes, memory growing to gigabytes (PyYAML's pure-Python loader reads ~3 MB/s), with no word.
Data files are read by streaming readers and are not capped."""


def utf8_text(path: str | os.PathLike, what: str, limit: int = CONFIG_BYTES) -> str:
    """The text of the file `path`, UTF-8, at most `limit` bytes; InputError `WHAT: cannot read
    (why)`, `WHAT: N bytes (… MiB); …` or `WHAT: not valid UTF-8 at byte N` (Path.read_text's
    locale decoding raised a UnicodeDecodeError traceback)."""
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            # Never more than limit + 1 bytes: a /proc file says size 0, and a file may grow.
            data = f.read(limit + 1) if size <= limit else b""
    except OSError as exc:
        raise InputError(f"{what}: cannot read ({exc.strerror})") from None
    if size > limit or len(data) > limit:
        said = f"{size:,} bytes ({size / (1 << 20):.1f} MiB)" if size > limit else f"more than {limit >> 20} MiB"
        raise InputError(f"{what}: {said}; a file read whole as configuration may hold at most {limit >> 20} MiB")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(f"{what}: not valid UTF-8 at byte {exc.start}") from None


def regular_file(path: str | os.PathLike, what: str | None = None) -> Path:
    """`path`, when it (after symlinks) is a regular file; InputError `WHAT: ...` otherwise.

    `what` names the file in the message (default: the path itself, e.g. `--config run.yaml`)."""
    what = what or str(path)
    try:
        mode = os.stat(path).st_mode  # follows symlinks: a link to /dev/zero is a device
    except FileNotFoundError:
        raise InputError(f"{what}: no such file") from None
    except OSError as e:
        raise InputError(f"{what}: cannot read ({e.strerror})") from None
    if not stat.S_ISREG(mode):
        raise InputError(f"{what}: {kind_of(mode)}, not a regular file")
    return Path(path)


def same_dir(a: Path, b: Path) -> bool:
    """Whether `a` and `b` resolve to one path (links followed); False where either cannot be resolved."""
    try:
        return a.resolve() == b.resolve()
    except OSError:
        return False


def stat_or_none(path: str | os.PathLike, what: str, verb: str = "read") -> os.stat_result | None:
    """os.stat(`path`), symlinks followed; None where nothing is there (no such file, a file
    where a folder was named, a link to nothing). Any other failure is InputError `WHAT: cannot
    VERB (why)`: Python 3.11's Path.exists()/is_file()/is_dir() return False for those but raise
    the rest, and a folder above `path` that cannot be searched (Permission denied), a name over
    the filesystem's limit (File name too long) or a loop of links came out of the commands'
    path checks as tracebacks. `what` names the flag and the path (`--data d/a.jsonl`)."""
    try:
        return os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as e:
        raise InputError(f"{what}: cannot {verb} ({e.strerror})") from None


def output_dir(path: str | os.PathLike, what: str) -> None:
    """InputError `WHAT: ...` when `path` cannot become a directory: it, or a folder above it, is
    a file, or a symbolic link to nothing (mkdir says only "File exists" of such a link), or it
    cannot be looked at (`WHAT: cannot create (why)`: a name too long, a folder not searchable)."""
    for p in (Path(path), *Path(path).parents):
        st = stat_or_none(p, what, "create")
        if st is None and os.path.islink(p):
            which = "" if p == Path(path) else f"{p}, above it, is "
            raise InputError(f"{what}: {which}a symbolic link to {os.readlink(p)}, which does not exist; create that directory or give another path")
        if st is not None:
            if not stat.S_ISDIR(st.st_mode):
                raise InputError(f"{what}: {'is a file' if p == Path(path) else f'{p}, above it, is a file'}, not a directory")
            return


def missing_paths(path: str | os.PathLike) -> list[Path]:
    """`path` and each of its parents that does not exist yet, innermost first: what a command
    about to create `path` (mkdir parents=True) makes, and so may remove again on failure."""
    path, missing = Path(path), []
    while not os.path.lexists(path) and path != path.parent:
        missing.append(path)
        path = path.parent
    return missing


def remove_made(made: list[Path], file: Path | None = None) -> None:
    """Remove what a command made (`missing_paths`, innermost first): `file`, the one file it
    made there, then each folder, each only if still empty (what another process put there
    since stays)."""
    for p in made:
        with contextlib.suppress(OSError):
            if p == file:
                os.unlink(p)
            else:
                os.rmdir(p)


def regular_tree(root: str | os.PathLike, what: str | None = None, skip: Callable[[Path], bool] | None = None) -> list[Path]:
    """Every file under the directory `root`, sorted; InputError if any entry (after symlinks)
    is neither a regular file nor a directory. `skip(relative path)`: entries left out unseen."""
    what = what or str(root)
    files = []
    for p in sorted(Path(root).rglob("*")):
        if skip is not None and skip(p.relative_to(root)):
            continue
        try:
            mode = os.stat(p).st_mode
        except OSError as e:
            raise InputError(f"{what}: {p}: cannot read ({e.strerror})") from None
        if stat.S_ISDIR(mode):
            continue
        if not stat.S_ISREG(mode):
            raise InputError(f"{what}: {p}: {kind_of(mode)}, not a regular file")
        files.append(p)
    return files


def read_json(path: str | os.PathLike) -> Any:
    """The parsed JSON of the regular file `path`; InputError `PATH: unreadable (why)` when it is
    missing, not a regular file, not UTF-8, not JSON, or nested too deeply to parse."""
    try:
        regular_file(path)
        text = Path(path).read_bytes().decode("utf-8")
        return json.loads(text)
    except InputError as e:
        raise InputError(f"{path}: unreadable ({str(e).removeprefix(f'{path}: ')})") from None
    except OSError as e:
        raise InputError(f"{path}: unreadable ({e.strerror})") from None
    except UnicodeDecodeError as e:
        raise InputError(f"{path}: unreadable (not valid UTF-8 at byte {e.start})") from None
    except json.JSONDecodeError as e:
        raise InputError(f"{path}: unreadable (not JSON: {e.msg} at line {e.lineno} column {e.colno})") from None
    except RecursionError:
        raise InputError(f"{path}: unreadable (JSON nested too deeply)") from None


def sha256_file(path: str | os.PathLike, block: int = 1 << 20) -> str:
    with open(path, "rb") as f:
        return sha256_stream(f, block)


def sha256_stream(f: BinaryIO, block: int = 1 << 20) -> str:
    """Hex sha256 of what is left to read in `f`, `block` bytes at a time (a file already opened
    and checked, e.g. by its descriptor's fstat)."""
    h = hashlib.sha256()
    while chunk := f.read(block):
        h.update(chunk)
    return h.hexdigest()


def umask() -> int:
    """The process umask, read from /proc where possible: os.umask() can only be read by setting
    it, which would briefly change it for every thread."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def uniform_permissions(root: Path) -> None:
    """Every file 0666 & ~umask, every directory 0777 & ~umask, as a plain open()/mkdir() gives.

    transformers writes model.safetensors through a private temporary file (mode 0600) while the
    files beside it get the umask's default: a checkpoint would be half unreadable to the group.
    A directory keeps its setgid and sticky bits: a g+s shared parent gives them to new folders,
    so that the files in them stay the group's, and a plain chmod would drop them."""
    mask = umask()
    for p in [root, *root.rglob("*")]:
        if p.is_symlink():
            continue
        if p.is_dir():
            os.chmod(p, (0o777 & ~mask) | (p.stat().st_mode & (stat.S_ISGID | stat.S_ISVTX)))
        else:
            os.chmod(p, 0o666 & ~mask)
