"""formats/atomic.py at the points where a kill or a power cut can land.

What must hold: the bytes of a file or folder reach the disk (fsync) before the rename that
publishes them, and the rename itself is made durable (fsync of the parent folder) after it;
replacing a folder never leaves a moment without a complete copy of it somewhere (under its
name, or as the `.NAME.old-PID` aside that `remove_stale_temps(restore_old=True)` renames back);
and a user's name that merely starts like one of our temp names is never removed or restored."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from kto.formats.atomic import atomic_dir, parse_temp_name, remove_stale_temps, temp_path_for, write_bytes_atomic


def _owns_final(name: str, kind: str) -> bool:
    """What kto-train's run directory owns of `final` (train/rundir.py written_here)."""
    return name == "final" and kind in ("tmp", "old")


@pytest.fixture
def calls(monkeypatch) -> list[tuple]:
    """Every os.fsync (as ("fsync", the path its descriptor names)) and os.replace (as
    ("replace", src, dst)), in order; the real calls still run."""
    seen: list[tuple] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        seen.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        return real_fsync(fd)

    def replace(src, dst, **kw):
        seen.append(("replace", os.fspath(src), os.fspath(dst)))
        return real_replace(src, dst, **kw)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    return seen


def test_a_file_is_fsynced_before_its_rename_and_its_folder_after(tmp_path, calls):
    path = tmp_path / "manifest.json"
    path.write_text("old")
    tmp = temp_path_for(path)
    write_bytes_atomic(path, b"new")
    assert path.read_bytes() == b"new"
    assert calls == [("fsync", str(tmp)), ("replace", str(tmp), str(path)), ("fsync", str(tmp_path))]


def test_every_file_of_a_folder_and_the_folder_are_fsynced_before_its_rename(tmp_path, calls):
    path = tmp_path / "final"
    path.mkdir()
    (path / "f").write_text("old")
    with atomic_dir(path) as tmp:
        (tmp / "f").write_text("new")
        (tmp / "sub").mkdir()
        (tmp / "sub" / "g").write_text("new")
    assert (path / "f").read_text() == "new" and (path / "sub" / "g").read_text() == "new"
    published = calls.index(("replace", str(tmp), str(path)))
    synced_before = {c[1] for c in calls[:published] if c[0] == "fsync"}
    # A sub-folder's entries reach the disk too (the files named in it): checkpoints of FSDP and
    # adapters hold sub-folders.
    assert {str(tmp / "f"), str(tmp / "sub" / "g"), str(tmp / "sub"), str(tmp)} <= synced_before, calls
    assert ("fsync", str(tmp_path)) in calls[published + 1 :], calls


def test_a_failed_rename_of_the_new_folder_keeps_the_old_one_to_restore(tmp_path, monkeypatch):
    """Killed (here: failed) between atomic_dir's renames: the previous complete folder is the
    `.final.old-PID` aside, and the next start's remove_stale_temps(restore_old=True) (kto-train's
    open_run_dir) puts it back. Deleting the old folder before the new one is in place would leave
    nothing."""
    path = tmp_path / "final"
    path.mkdir()
    (path / "f").write_text("old")
    real_replace = os.replace

    def replace(src, dst, **kw):
        if parse_temp_name(Path(src).name) == ("final", "tmp"):
            raise OSError(errno.EIO, "Input/output error", os.fspath(src))
        return real_replace(src, dst, **kw)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(OSError) as info, atomic_dir(path) as tmp:
        (tmp / "f").write_text("new")
    assert info.value.errno == errno.EIO
    monkeypatch.setattr(os, "replace", real_replace)
    left = {p.name: (p / "f").read_text() for p in tmp_path.iterdir()}
    assert list(left.values()) == ["old"], left  # the old folder alone, under its name or aside
    remove_stale_temps(tmp_path, owns=_owns_final, restore_old=True)
    assert [p.name for p in tmp_path.iterdir()] == ["final"] and (path / "f").read_text() == "old"


@pytest.mark.parametrize("name", [".final.old-2023-backup", ".final.old-7.bak", ".final.tmp-1-2-notes"])
@pytest.mark.parametrize("final", [True, False], ids=["beside-final", "no-final"])
def test_a_users_name_with_text_after_the_temp_suffix_is_never_removed_or_restored(tmp_path, name, final):
    """A user's `.final.old-2023-backup/` in a run directory starts like atomic_dir's aside of
    `final`; only the exact shapes (`.final.old-PID`, `.final.tmp-PID-THREAD`) are ours."""
    (tmp_path / name).mkdir()
    (tmp_path / name / "f").write_text("user")
    if final:
        (tmp_path / "final").mkdir()
    assert remove_stale_temps(tmp_path, owns=_owns_final, restore_old=True) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([name, *(["final"] if final else [])])
    assert (tmp_path / name / "f").read_text() == "user"
