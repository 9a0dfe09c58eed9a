"""formats.lock: a second holder is refused with one line naming the first holder's pid."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from kto.formats.errors import InputError
from kto.formats.lock import locked_dir


def test_second_process_is_refused_with_the_holders_pid(tmp_path):
    code = (
        "import sys\n"
        "from kto.formats.lock import locked_dir\n"
        "from kto.formats.errors import InputError\n"
        f"try:\n    with locked_dir({str(tmp_path)!r}, '--out'): pass\n"
        "except InputError as e:\n    print(e); sys.exit(3)\n"
    )
    with locked_dir(tmp_path, "--out"):
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        assert proc.returncode == 3
        assert f"pid {os.getpid()}" in proc.stdout and "--out" in proc.stdout
    # Released on exit: the same child now gets it.
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_lock_is_not_reentrant_within_one_process(tmp_path):
    with locked_dir(tmp_path, "--cache"):
        with pytest.raises(InputError, match="in use by another kto process"):
            with locked_dir(tmp_path, "--cache"):
                pass


@pytest.mark.parametrize("kind", ["symlink", "hardlink"])
def test_a_lock_that_is_a_link_is_refused_and_its_target_untouched(tmp_path, kind):
    """Issue 19 item 5: a `.lock` that was a symlink was followed, and its target truncated and
    given the pid. A hard link to a user's file would be truncated the same way."""
    precious = tmp_path / "precious.txt"
    precious.write_text("my thesis\n")
    run = tmp_path / "run"
    run.mkdir()
    if kind == "symlink":
        (run / ".lock").symlink_to(precious)
    else:
        os.link(precious, run / ".lock")
    with pytest.raises(InputError, match=r"--out .*run: \.lock is not a lock file kto made"):
        with locked_dir(run, "--out"):
            pass
    assert precious.read_text() == "my thesis\n"


def test_a_lock_that_is_a_folder_is_refused_in_one_line(tmp_path):
    (tmp_path / ".lock").mkdir()
    with pytest.raises(InputError, match=r"\.lock is not a lock file kto made"):
        with locked_dir(tmp_path, "--cache"):
            pass


@pytest.mark.parametrize("where", ["mkdir", "open"])
def test_a_directory_that_cannot_be_created_or_locked_is_one_line(tmp_path, monkeypatch, where):
    """A read-only --out (EROFS; EACCES for a user without write access): kto-precompute ended
    in an OSError traceback, kto-train caught it itself. The refusal now comes from the lock
    both commands take. (Faked: the tests run as root, which a chmod does not stop.)"""
    import errno
    from pathlib import Path

    import kto.formats.lock as lock

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    if where == "mkdir":
        monkeypatch.setattr(Path, "mkdir", read_only)
    else:
        monkeypatch.setattr(lock.os, "open", read_only)
    with pytest.raises(InputError) as err:
        with locked_dir(tmp_path / "out", "--out"):
            pass
    assert str(err.value) == f"--out {tmp_path / 'out'}: cannot create or lock (Read-only file system)"
