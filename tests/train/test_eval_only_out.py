"""kto-train --eval-only --out NEWDIR that cannot be made: refused in one line before the
evaluation, as training refuses the same --out. Seen: the whole eval ran, then the folder's
mkdir ended in a traceback (a read-only filesystem, a full disk, a file above it, a name over
255 bytes)."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import train_error_line


@pytest.fixture
def never_evaluated(monkeypatch):
    """The evaluation itself fails the test: every refusal here comes before it."""
    import kto.train.eval_only as eval_only

    monkeypatch.setattr(eval_only, "eval_line", lambda *a, **kw: pytest.fail("evaluated before refusing --out"))


def eval_only(model: Path, eval_cache: Path, out: Path | str):
    from accelerate.state import AcceleratorState

    from kto.train.cli import main

    AcceleratorState._reset_state(reset_partial_state=True)
    return CliRunner().invoke(main, ["--eval-only", "--model", str(model), "--eval-cache", str(eval_cache), "--out", str(out)])


def refused_mkdir(monkeypatch, below: Path, code: int) -> None:
    """mkdir of any folder under `below` fails with `code` (a read-only mount, a full ext4 disk),
    as root, whom permissions do not stop, would see it."""
    real = os.mkdir

    def mkdir(path: str | os.PathLike, *args: object, **kwargs: object) -> None:
        if Path(path).is_relative_to(below):
            raise OSError(code, os.strerror(code), str(path))
        real(path, *args, **kwargs)

    monkeypatch.setattr(os, "mkdir", mkdir)


@pytest.mark.parametrize("code", [errno.EROFS, errno.ENOSPC])
def test_a_new_out_that_cannot_be_made_is_refused_before_evaluating(tiny_model_dir, tiny_eval_cache, tmp_path, monkeypatch, never_evaluated, code):
    out = tmp_path / "new" / "dir"
    refused_mkdir(monkeypatch, tmp_path / "new", code)
    result = eval_only(tiny_model_dir, tiny_eval_cache, out)
    assert result.exit_code == 2, result.output
    assert train_error_line(result.output) == f"kto-train: error: --out {out}: cannot create ({os.strerror(code)})"
    assert list(tmp_path.iterdir()) == []


def test_a_new_out_under_a_file_is_refused_before_evaluating(tiny_model_dir, tiny_eval_cache, tmp_path, never_evaluated):
    (tmp_path / "data.jsonl").write_text("{}\n")
    out = tmp_path / "data.jsonl" / "sub"
    result = eval_only(tiny_model_dir, tiny_eval_cache, out)
    assert result.exit_code == 2, result.output
    assert train_error_line(result.output) == f"kto-train: error: --out {out}: {tmp_path / 'data.jsonl'}, above it, is a file, not a directory"


def test_a_name_too_long_is_refused_before_evaluating(tiny_model_dir, tiny_eval_cache, tmp_path, never_evaluated):
    """Seen: Path.exists raised ENAMETOOLONG, a traceback before anything else."""
    out = tmp_path / ("a" * 300)
    result = eval_only(tiny_model_dir, tiny_eval_cache, out)
    assert result.exit_code == 2, result.output
    assert train_error_line(result.output) == f"kto-train: error: --out {out}: cannot create (File name too long)"
    assert list(tmp_path.iterdir()) == []


def test_a_new_out_is_made_before_evaluating_and_removed_when_the_command_fails(tiny_model_dir, tiny_eval_cache, tmp_path, monkeypatch):
    """The check makes --out (as training makes its own before training); a failure after it
    (here the evaluation) leaves no empty folder behind."""
    import kto.train.eval_only as eval_only_module
    from kto.formats.errors import InputError

    out = tmp_path / "new" / "dir"

    def evaluation(*args: object, **kwargs: object) -> dict:
        assert out.is_dir() and list(out.iterdir()) == []  # made, and writable (its probe removed)
        raise InputError("stopped here")

    monkeypatch.setattr(eval_only_module, "eval_line", evaluation)
    result = eval_only(tiny_model_dir, tiny_eval_cache, out)
    assert train_error_line(result.output) == "kto-train: error: stopped here"
    assert list(tmp_path.iterdir()) == []
