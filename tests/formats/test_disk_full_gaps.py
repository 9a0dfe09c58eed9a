"""Full-disk gaps outside the writers' own handling: the lock file's `PID@HOST` (formats/lock.py)
and the journal's folder (formats/shards.py Journal._write). Both escaped as an `OSError: [Errno
28]` traceback; now each is the one line every writer gives (atomic.names_write_errors)."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from kto.formats.atomic import DiskFullError, NotWritableError
from kto.formats.errors import InputError
from kto.formats.lock import LOCK_NAME, locked_dir
from kto.formats.shards import JOURNAL_DIR, Journal


def open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def full_disk(code: int = errno.ENOSPC):
    def refuse(*args: object, **kwargs: object) -> None:
        raise OSError(code, os.strerror(code))

    return refuse


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT])
def test_a_full_disk_at_lock_time_is_one_line_and_leaves_no_new_folder(tmp_path, monkeypatch, code):
    """Seen: kto-precompute and kto-train on a full tmpfs ended in a traceback from os.pwrite.
    Now the writers' line, naming the lock file; the folder made for it is gone again and the
    descriptor (so the lock) is released."""
    out = tmp_path / "new" / "out"
    before = open_fds()
    monkeypatch.setattr(os, "pwrite", full_disk(code))
    with pytest.raises(DiskFullError) as caught:
        with locked_dir(out, "--out"):
            pytest.fail("the block ran without the lock's record")
    assert str(caught.value) == f"{out / LOCK_NAME}: no space left on device; free some space and run the command again"
    assert isinstance(caught.value, InputError)  # what the CLIs print as one line, exit 2
    assert not (tmp_path / "new").exists()
    assert open_fds() == before
    monkeypatch.undo()
    with locked_dir(out, "--out"):  # nothing is left holding it
        assert (out / LOCK_NAME).read_text().startswith(f"{os.getpid()}@")


def test_a_full_disk_in_an_existing_folder_keeps_the_folder(tmp_path, monkeypatch):
    """An existing --out (with a lock file of an earlier run) is not removed: only what was made."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "metrics.jsonl").write_text("")
    (out / LOCK_NAME).write_text("1@host\n")
    monkeypatch.setattr(os, "pwrite", full_disk())
    with pytest.raises(DiskFullError):
        with locked_dir(out, "--out"):
            pytest.fail("the block ran")
    assert sorted(p.name for p in out.iterdir()) == [LOCK_NAME, "metrics.jsonl"]


@pytest.mark.parametrize(
    "code, error, line",
    [
        (errno.ENOSPC, DiskFullError, "{path}: no space left on device; free some space and run the command again"),
        (errno.EROFS, NotWritableError, "{path}: cannot write (Read-only file system); choose a writable location"),
    ],
)
def test_the_journal_folder_that_cannot_be_made_is_one_line(tmp_path, monkeypatch, code, error, line):
    """Seen on a full ext4 disk (a new folder needs a block; the empty temp file does not):
    kto-precompute's first journal write raised `OSError: [Errno 28] ... '.journal'` from mkdir."""
    real_mkdir = os.mkdir

    def mkdir(path: str | os.PathLike, *args: object, **kwargs: object) -> None:
        if Path(path).name == JOURNAL_DIR:
            raise OSError(code, os.strerror(code), str(path))
        real_mkdir(path, *args, **kwargs)

    monkeypatch.setattr(os, "mkdir", mkdir)
    with pytest.raises(error) as caught:
        Journal(tmp_path).start("f" * 64, {"rows_per_shard": 5}, {"model": "m"})
    assert str(caught.value) == line.format(path=tmp_path / JOURNAL_DIR / "run.json")
    assert list(tmp_path.iterdir()) == []
