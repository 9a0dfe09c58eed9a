"""formats.lock: a second holder is refused with one line naming the first holder's pid and host;
a filesystem without locks is refused in one line."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import socket
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


@contextlib.contextmanager
def held_by(folder, text: str):
    """`folder`'s lock held (by this process, through a descriptor of its own: flock locks
    belong to the open file) with `text` in the lock file, as another kto writes it."""
    (folder / ".lock").write_text(text)
    fd = os.open(folder / ".lock", os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        yield
    finally:
        os.close(fd)


def refusal(folder) -> str:
    with pytest.raises(InputError) as err:
        with locked_dir(folder, "--out"):
            pass
    return str(err.value)


def test_the_holder_is_named_with_its_host(tmp_path):
    """Seen failing before: the file held the pid alone, so a holder on another machine sharing
    the folder (NFS) was named `pid 2`, some unrelated process here, and the lock looked stale."""
    with locked_dir(tmp_path, "--out"):
        assert (tmp_path / ".lock").read_text() == f"{os.getpid()}@{socket.gethostname()}\n"
        assert f"(pid {os.getpid()} on this host, {socket.gethostname()}, as its lock file records);" in refusal(tmp_path)
    with held_by(tmp_path, "4711@node07\n"):
        assert refusal(tmp_path) == (
            f"--out {tmp_path}: in use by another kto process (pid 4711 on host node07, as its lock file records); wait for it or choose another directory"
        )
    with held_by(tmp_path, "4711\n"):  # an older kto's lock file
        assert "(pid 4711, as its lock file records);" in refusal(tmp_path)


def test_a_recorded_pid_that_does_not_run_here_gets_both_explanations(tmp_path):
    """A container's kto on the same host (or one sharing its hostname), whose pid means nothing
    here; or a holder that opened `.lock` read-only (a group-shared folder) and could not write
    its pid, leaving an earlier holder's. Both are said, and the lock is not called stale (flock
    says it is held). Seen failing before: only the first was said, as a fact."""
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True).stdout.strip()
    with held_by(tmp_path, f"{gone}@{socket.gethostname()}\n"):
        message = refusal(tmp_path)
    assert (
        f"(pid {gone} on this host, {socket.gethostname()}, as its lock file records; no process has that pid here: the holder runs in"
        " another container or PID namespace, or it opened the lock file read-only and could not write its pid over an earlier holder's);"
    ) in message
    assert "stale" not in message


@pytest.mark.parametrize("code", [errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP])
def test_a_filesystem_without_locks_is_one_line_and_leaves_nothing(tmp_path, monkeypatch, code):
    """NFS without lockd (ENOLCK), Lustre without -o flock (ENOSYS, EOPNOTSUPP). Seen failing
    before: an OSError traceback, exit 1, and `.lock` left in the new folder."""
    import kto.formats.lock as lock

    def no_locks(fd, op):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(lock.fcntl, "flock", no_locks)
    (tmp_path / "kept").mkdir()
    for folder in (tmp_path / "new", tmp_path / "kept"):
        message = refusal(folder)
        assert message.startswith(f"--out {folder}: its filesystem does not support file locks ({os.strerror(code)})"), message
        assert "choose a directory on a local filesystem" in message
    assert not (tmp_path / "new").exists() and list((tmp_path / "kept").iterdir()) == []


def test_a_filesystem_without_locks_removes_every_folder_it_made(tmp_path, monkeypatch):
    """`--out lk2/a/b` made three folders. Seen failing before: `lk2/a` was left."""
    import kto.formats.lock as lock

    def no_locks(fd, op):
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))

    monkeypatch.setattr(lock.fcntl, "flock", no_locks)
    (tmp_path / "kept" / "mine").mkdir(parents=True)
    refusal(tmp_path / "lk2" / "a" / "b")
    refusal(tmp_path / "kept" / "a" / "b")
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")) == ["kept", "kept/mine"]


def test_a_filesystem_without_locks_exits_2_from_the_command(tmp_path, monkeypatch, tiny_model_dir):
    from click.testing import CliRunner

    import kto.formats.lock as lock
    from kto.precompute.cli import main

    def no_locks(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(lock.fcntl, "flock", no_locks)
    data = tmp_path / "data.jsonl"
    data.write_text('{"prompt": "p", "completion": "c", "label": true}\n')
    result = CliRunner().invoke(main, ["--data", str(data), "--model", str(tiny_model_dir), "--out", str(tmp_path / "c")])
    assert result.exit_code == 2, result.output
    assert result.output.strip().splitlines()[-1].startswith(f"kto-precompute: error: --out {tmp_path / 'c'}: its filesystem does not support file locks")
