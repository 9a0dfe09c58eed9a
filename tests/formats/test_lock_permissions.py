"""Group-shared folders: the lock file and checkpoint folders keep what the umask and the
parent folder give every other file, so a second member of the group can rerun in the folder.

The tests run as root, which permission bits do not stop: the mode bits are checked directly,
and a lock file that cannot be opened for writing is faked by making os.open refuse it."""

from __future__ import annotations

import errno
import os
import stat

import pytest

import kto.formats.lock as lock
from kto.formats.errors import InputError
from kto.formats.lock import LOCK_NAME, locked_dir


@pytest.fixture
def umask_002():
    old = os.umask(0o002)
    yield
    os.umask(old)


def test_the_lock_file_gets_the_umasks_mode_like_every_other_file(tmp_path, umask_002):
    """umask 002 gave every file 664 but .lock 644 (created 0644, not 0666)."""
    with locked_dir(tmp_path / "c", "--out") as d:
        (d / "other").write_text("x")
    assert stat.S_IMODE((tmp_path / "c" / LOCK_NAME).stat().st_mode) == 0o664
    assert stat.S_IMODE((tmp_path / "c" / "other").stat().st_mode) == 0o664


def _refuse_writing_the_lock(monkeypatch, also_read_only: bool = False) -> None:
    """os.open as for a user without write access to an existing .lock (root is never refused)."""
    real_open = os.open

    def fake_open(path, flags, *args, **kwargs):
        if os.fspath(path).endswith(LOCK_NAME) and (also_read_only or flags & os.O_ACCMODE != os.O_RDONLY):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), os.fspath(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(lock.os, "open", fake_open)


def test_a_lock_file_another_user_made_read_only_still_locks(tmp_path, monkeypatch):
    """Another member's 0644 (here 0444) .lock: flock needs no write access, so a read-only
    descriptor takes the lock; the pid is not written (it cannot be)."""
    (tmp_path / LOCK_NAME).write_text("12345\n")
    (tmp_path / LOCK_NAME).chmod(0o444)
    _refuse_writing_the_lock(monkeypatch)
    with locked_dir(tmp_path, "--out"):
        # Held: a second taker in this process is refused (flock locks are per open file).
        monkeypatch.undo()
        with pytest.raises(InputError, match="in use by another kto process"):
            with locked_dir(tmp_path, "--out"):
                pass
        _refuse_writing_the_lock(monkeypatch)
    assert (tmp_path / LOCK_NAME).read_text() == "12345\n"


def test_a_lock_file_that_cannot_be_opened_at_all_is_named(tmp_path, monkeypatch):
    """Refused even read-only: the error names .lock, not the folder as a whole."""
    (tmp_path / LOCK_NAME).write_text("")
    _refuse_writing_the_lock(monkeypatch, also_read_only=True)
    with pytest.raises(InputError) as err:
        with locked_dir(tmp_path, "--out"):
            pass
    assert LOCK_NAME in str(err.value) and "Permission denied" in str(err.value) and "\n" not in str(err.value)


def test_a_folder_that_refuses_a_new_lock_file_still_blames_the_folder(tmp_path, monkeypatch):
    """No .lock yet and no permission to create one: the folder's fault, said as before."""
    _refuse_writing_the_lock(monkeypatch, also_read_only=True)
    with pytest.raises(InputError, match=r"--out .*: cannot create or lock \(Permission denied\)$"):
        with locked_dir(tmp_path, "--out"):
            pass


@pytest.mark.parametrize("bits", [stat.S_ISGID, stat.S_ISGID | stat.S_ISVTX])
def test_uniform_permissions_keeps_the_setgid_and_sticky_bits(tmp_path, umask_002, bits):
    """A g+s shared parent gives new folders setgid; chmod(0o777 & ~umask) dropped it from
    checkpoint-N/ and final/ (train/checkpoint.py, tested here beside the lock's permissions)."""
    from kto.formats.files import uniform_permissions

    root = tmp_path / "checkpoint-1"
    (root / "sub").mkdir(parents=True)
    (root / "w.bin").write_bytes(b"x")
    for d in (root, root / "sub"):
        os.chmod(d, 0o700 | bits)
    uniform_permissions(root)
    for d in (root, root / "sub"):
        assert stat.S_IMODE(d.stat().st_mode) == 0o775 | bits
    assert stat.S_IMODE((root / "w.bin").stat().st_mode) == 0o664
