"""Atomic writes into a folder that cannot be written (a read-only mount, no permission): one line
naming the path, and the cleanup of the temp name never hides the error that stopped the write.

Faked with monkeypatch: the tests run as root, which a chmod does not stop, and mounting a
read-only tmpfs needs privileges a test run may not have. On a read-only mount every call that
would change the folder fails with EROFS, the cleanup's unlink included (even of a missing name),
so each fake makes the cleanup fail too."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from kto.formats.atomic import DiskFullError, NotWritableError, atomic_dir, atomic_path, check_can_create, write_bytes_atomic
from kto.formats.errors import InputError

REFUSED = [errno.EROFS, errno.EACCES, errno.EPERM]


def failing(code: int):
    def fail(*_a, **_kw):
        raise OSError(code, os.strerror(code))

    return fail


@pytest.fixture
def cleanup_fails(monkeypatch):
    """The cleanup's unlink fails as it does on a read-only mount (EROFS even for a missing name)."""
    monkeypatch.setattr(Path, "unlink", failing(errno.EROFS))


@pytest.mark.parametrize("code", REFUSED, ids=errno.errorcode.get)
def test_a_refused_write_is_one_line_naming_the_path(tmp_path, monkeypatch, cleanup_fails, code):
    target = tmp_path / "report.md"
    monkeypatch.setattr(Path, "write_bytes", failing(code))
    with pytest.raises(NotWritableError) as info:
        write_bytes_atomic(target, b"# report\n")
    assert str(info.value) == f"{target}: cannot write ({os.strerror(code)}); choose a writable location"
    assert isinstance(info.value, InputError) and isinstance(info.value, OSError)  # `except OSError` of optional writes still holds
    assert info.value.path == target
    assert "\n" not in str(info.value)


def test_pyarrows_refusal_names_the_target_not_the_temp_name(tmp_path, monkeypatch, cleanup_fails):
    """pyarrow's own OSError carries errno 30 and names the temp file, in a sentence of its own."""
    target = tmp_path / "s.parquet"

    def pyarrow_open(tmp: Path) -> None:
        raise OSError(errno.EROFS, f"Failed to open local file '{tmp}'. Detail: [errno 30] Read-only file system")

    with pytest.raises(NotWritableError, match=rf"^{target}: cannot write \(Read-only file system\)"):
        with atomic_path(target) as tmp:
            pyarrow_open(tmp)


def test_a_refused_rename_is_one_line(tmp_path, monkeypatch):
    target = tmp_path / "manifest.json"
    monkeypatch.setattr(os, "replace", failing(errno.EROFS))
    with pytest.raises(NotWritableError, match="manifest.json: cannot write"):
        write_bytes_atomic(target, b"{}")
    assert list(tmp_path.iterdir()) == []  # the temp name was removed (the fake left unlink working)


def test_a_refused_folder_is_one_line(tmp_path, monkeypatch, cleanup_fails):
    monkeypatch.setattr(Path, "mkdir", failing(errno.EROFS))
    with pytest.raises(NotWritableError, match="tokenizer: cannot write"):
        with atomic_dir(tmp_path / "tokenizer"):
            pass


def test_a_failing_cleanup_never_hides_the_error_that_stopped_the_write(tmp_path, monkeypatch):
    """Before: the finally block's unlink raised its own OSError and the block's error was lost."""
    monkeypatch.setattr(Path, "unlink", failing(errno.EIO))
    with pytest.raises(ValueError, match="the block's own error"):
        with atomic_path(tmp_path / "x.json"):
            raise ValueError("the block's own error")


def test_a_full_disk_is_still_named_when_the_cleanup_fails(tmp_path, monkeypatch, cleanup_fails):
    monkeypatch.setattr(Path, "write_bytes", failing(errno.ENOSPC))
    with pytest.raises(DiskFullError, match="x.json: no space left on device"):
        write_bytes_atomic(tmp_path / "x.json", b"{}")


def test_the_innermost_path_is_kept(tmp_path, monkeypatch):
    """An error already named (a file inside an atomic_dir) is not renamed after the outer folder."""
    monkeypatch.setattr(Path, "write_bytes", failing(errno.EROFS))
    with pytest.raises(NotWritableError) as info:
        with atomic_dir(tmp_path / "tokenizer") as tmp:
            inner = tmp / "vocab.json"
            write_bytes_atomic(inner, b"{}")
    assert info.value.path == inner


def test_a_refusal_about_another_file_passes_through(tmp_path, monkeypatch):
    """An unreadable source that the block reads is not a refused write of the target."""
    source = tmp_path / "elsewhere" / "weights.bin"
    with pytest.raises(PermissionError):
        with atomic_path(tmp_path / "out" / "model.bin"):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(source))


def test_other_os_errors_still_pass_through(tmp_path, monkeypatch, cleanup_fails):
    monkeypatch.setattr(Path, "write_bytes", failing(errno.EIO))
    with pytest.raises(OSError) as info:
        write_bytes_atomic(tmp_path / "x", b"1")
    assert info.value.errno == errno.EIO and not isinstance(info.value, InputError)


@pytest.mark.parametrize("code", REFUSED, ids=errno.errorcode.get)
def test_check_can_create_refuses_before_any_work(tmp_path, monkeypatch, code):
    monkeypatch.setattr(os, "open", failing(code))
    with pytest.raises(NotWritableError, match=rf"^{tmp_path / 's.parquet'}: cannot write \({os.strerror(code)}\)"):
        check_can_create(tmp_path / "s.parquet")


def test_check_can_create_leaves_nothing_behind(tmp_path):
    (tmp_path / "s.parquet").write_bytes(b"old")
    check_can_create(tmp_path / "s.parquet")
    assert [(p.name, p.read_bytes()) for p in tmp_path.iterdir()] == [("s.parquet", b"old")]
