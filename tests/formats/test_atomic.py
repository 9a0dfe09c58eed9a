"""Atomic writes: a full disk is one line naming the path; a killed run's temp files are ours to clean."""

from __future__ import annotations

import errno
import os

import pytest

from kto.formats.atomic import DiskFullError, atomic_dir, remove_stale_temps, write_bytes_atomic
from kto.formats.errors import InputError


def enospc(*_a, **_kw):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_disk_full_at_the_rename_names_the_path_and_leaves_no_temp(tmp_path, monkeypatch):
    target = tmp_path / "manifest.json"
    monkeypatch.setattr(os, "replace", enospc)
    with pytest.raises(DiskFullError) as info:
        write_bytes_atomic(target, b"{}")
    assert str(info.value).startswith(f"{target}: no space left on device")
    assert isinstance(info.value, InputError) and isinstance(info.value, OSError)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "raised",
    [OSError(errno.ENOSPC, "No space left on device"), OSError("IOError: No space left on device. Detail: [errno 28]")],
    ids=["errno", "pyarrow-message"],
)
def test_disk_full_while_writing_a_folder(tmp_path, raised):
    target = tmp_path / "tokenizer"
    with pytest.raises(DiskFullError, match="tokenizer: no space left on device"):
        with atomic_dir(target) as tmp:
            (tmp / "a.json").write_text("{}")
            raise raised
    assert list(tmp_path.iterdir()) == []


def test_other_os_errors_pass_through(tmp_path, monkeypatch):
    def denied(*_a, **_kw):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(os, "replace", denied)
    with pytest.raises(PermissionError):
        write_bytes_atomic(tmp_path / "x", b"1")


def test_remove_stale_temps_removes_only_our_temp_names(tmp_path):
    ours = [tmp_path / ".shard-00001.arrow.tmp-999", tmp_path / ".manifest.json.tmp-1"]
    for p in ours:
        p.write_bytes(b"partial")
    (tmp_path / ".tokenizer.old-42").mkdir()
    (tmp_path / ".tokenizer.old-42" / "vocab.json").write_text("{}")
    kept = [tmp_path / ".notes.tmp-abc", tmp_path / "shard.tmp-12", tmp_path / ".hidden", tmp_path / ".x.tmp-12.bak"]
    for p in kept:
        p.write_text("user")
    removed = remove_stale_temps(tmp_path)
    assert sorted(t.path for t in removed) == sorted(ours + [tmp_path / ".tokenizer.old-42"])
    assert not any(t.restored_to for t in removed)  # restoring an .old is asked for, not the default
    assert sorted(tmp_path.iterdir()) == sorted(kept)


def test_remove_stale_temps_restores_an_orphaned_old_copy_when_asked(tmp_path):
    """kto-train's run directory: an `.old` whose original is gone is the last complete version."""
    (tmp_path / ".a.old-7").mkdir()
    (tmp_path / ".a.old-7" / "x").write_text("1")
    (tmp_path / ".b.old-7").mkdir()
    (tmp_path / "b").mkdir()  # the original is there: its .old copy is only a leftover
    (tmp_path / ".c.deleted-3").mkdir()
    (tmp_path / ".mine.tmp-1").write_text("user")  # not a name the caller owns
    done = remove_stale_temps(tmp_path, owns=lambda name: name != "mine", restore_old=True)
    assert [str(t) for t in done] == ["restored a from .a.old-7", "removed .b.old-7", "removed .c.deleted-3"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".mine.tmp-1", "a", "b"]
    assert (tmp_path / "a" / "x").read_text() == "1"
