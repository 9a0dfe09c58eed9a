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
    # Not EACCES, as it was: a refused write is now one line too (test_atomic_readonly.py).
    def io_error(*_a, **_kw):
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr(os, "replace", io_error)
    with pytest.raises(OSError) as info:
        write_bytes_atomic(tmp_path / "x", b"1")
    assert info.value.errno == errno.EIO and not isinstance(info.value, InputError)


def test_remove_stale_temps_removes_only_the_temp_names_the_caller_owns(tmp_path):
    ours = [tmp_path / ".shard-00001.arrow.tmp-999-140211", tmp_path / ".manifest.json.tmp-1-2"]
    for p in ours:
        p.write_bytes(b"partial")
    (tmp_path / ".tokenizer.old-42").mkdir()
    (tmp_path / ".tokenizer.old-42" / "vocab.json").write_text("{}")
    kept = [tmp_path / ".notes.tmp-abc", tmp_path / "shard.tmp-12", tmp_path / ".hidden", tmp_path / ".x.tmp-12.bak"]
    for p in kept:
        p.write_text("user")
    removed = remove_stale_temps(tmp_path, owns=lambda name, kind: True)
    assert sorted(t.path for t in removed) == sorted(ours + [tmp_path / ".tokenizer.old-42"])
    assert not any(t.restored_to for t in removed)  # restoring an .old is asked for, not the default
    assert sorted(tmp_path.iterdir()) == sorted(kept)


def test_names_only_shaped_like_temp_names_are_never_removed(tmp_path):
    """Issue 19 item 1: `.photos.old-2023/`, `.notes.tmp-1`, `.X.deleted-7` were deleted by a
    cleaner that matched the shape alone. Only the exact suffixes atomic.py makes (tmp-PID-THREAD,
    old-PID, deleted-PID) of names and kinds the caller owns go; links are never followed."""
    (tmp_path / ".photos.old-2023").mkdir()
    (tmp_path / ".photos.old-2023" / "cat.jpg").write_bytes(b"meow")
    user = [".notes.tmp-1", ".X.deleted-7", ".manifest.json.tmp-1", ".manifest.json.old-3", ".shard-00001.arrow.tmp-1-2-3"]
    for name in user:
        (tmp_path / name).write_text("user")
    (tmp_path / "target").write_text("precious")
    (tmp_path / ".manifest.json.tmp-5-6").symlink_to(tmp_path / "target")
    (tmp_path / ".manifest.json.tmp-7-8").write_text("{")  # ours: removed
    done = remove_stale_temps(tmp_path, owns=lambda name, kind: name == "manifest.json" and kind == "tmp")
    assert [t.path.name for t in done] == [".manifest.json.tmp-7-8"]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([".photos.old-2023", ".manifest.json.tmp-5-6", "target", *user])
    assert (tmp_path / ".photos.old-2023" / "cat.jpg").read_bytes() == b"meow" and (tmp_path / "target").read_text() == "precious"


def test_remove_stale_temps_restores_an_orphaned_old_copy_when_asked(tmp_path):
    """kto-train's run directory: an `.old` whose original is gone is the last complete version."""
    (tmp_path / ".a.old-7").mkdir()
    (tmp_path / ".a.old-7" / "x").write_text("1")
    (tmp_path / ".b.old-7").mkdir()
    (tmp_path / "b").mkdir()  # the original is there: its .old copy is only a leftover
    (tmp_path / ".c.deleted-3").mkdir()
    (tmp_path / ".mine.tmp-1-1").write_text("user")  # not a name the caller owns
    done = remove_stale_temps(tmp_path, owns=lambda name, kind: name != "mine", restore_old=True)
    assert [str(t) for t in done] == ["restored a from .a.old-7", "removed .b.old-7", "removed .c.deleted-3"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".mine.tmp-1-1", "a", "b"]
    assert (tmp_path / "a" / "x").read_text() == "1"


@pytest.mark.parametrize(
    "raised",
    [
        # What each library raised on a real full disk (a 64 KiB tmpfs), none of them an OSError:
        Exception("No space left on device (os error 28)"),  # tokenizers' Tokenizer.save
        RuntimeError("Error while serializing: I/O error: No space left on device (os error 28)"),  # safetensors (SafetensorError)
    ],
    ids=["tokenizers", "safetensors"],
)
def test_disk_full_said_by_a_library_without_oserror_is_one_line(tmp_path, raised):
    """Issue 19 item 12: these came out as tracebacks; the one disk-full path names the folder."""
    target = tmp_path / "final-merged"
    with pytest.raises(DiskFullError, match="final-merged: no space left on device"):
        with atomic_dir(target) as tmp:
            (tmp / "half.json").write_text("{")
            raise raised
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("free, full", [(4096, True), (50 << 30, False)])
def test_torchs_short_write_counts_as_a_full_disk_only_when_the_disk_is_full(tmp_path, monkeypatch, free, full):
    """torch's zip writer swallows the ENOSPC and says only "unexpected pos" (measured on a full
    64 KiB tmpfs; torch.distributed.checkpoint passes the same text on): named a full disk when
    the filesystem has (almost) nothing left, passed through otherwise."""
    import shutil

    real = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda p: real(p)._replace(free=free))
    raised = RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")
    with pytest.raises(DiskFullError if full else RuntimeError) as info:
        with atomic_dir(tmp_path / "checkpoint-4") as tmp:
            (tmp / "optimizer.pt").write_bytes(b"PK")
            raise raised
    assert isinstance(info.value, DiskFullError) == full
    assert list(tmp_path.iterdir()) == []
