"""A path that cannot be looked at is one line naming its flag, never a traceback.

Python 3.11's Path.exists()/is_file()/is_dir() return False for a missing path but raise for
the rest: a folder above it that cannot be searched (EACCES) and a name over the filesystem's
255-byte limit (ENAMETOOLONG) came out of kto-precompute, kto-train and kto-inspect verify as
tracebacks. formats/files.py's stat_or_none turns them into `FLAG PATH: cannot read (why)`.

The tests run as root, which a chmod does not stop: an unsearchable folder is faked by making
os.stat (what pathlib calls) raise EACCES below it, as the kernel does without
CAP_DAC_OVERRIDE. A name too long is real.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
from conftest import one_line_error, run_precompute, run_train, text_rows, write_rows

LONG = "x" * 260  # one component past every common filesystem's NAME_MAX (255 bytes)


def blocked(monkeypatch, folder: Path) -> None:
    """os.stat and open() of anything below `folder` raise EACCES, as for a chmod 000 folder."""
    real_stat, real_open = os.stat, open
    below = f"{os.path.abspath(folder)}{os.sep}"

    def inside(path) -> bool:
        return isinstance(path, (str, os.PathLike)) and os.path.abspath(os.fspath(path)).startswith(below)

    def stat(path, *args, **kwargs):
        if inside(path):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), os.fspath(path))
        return real_stat(path, *args, **kwargs)

    def fake_open(path, *args, **kwargs):
        if inside(path):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), os.fspath(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(os, "stat", stat)
    monkeypatch.setattr("builtins.open", fake_open)


def precompute(tmp_path: Path, model: Path | str, *args: str | Path):
    return run_precompute(*map(str, args), "--model", str(model), "--out", str(tmp_path / "out"), "--max-length", "64")


@pytest.fixture
def rows(tmp_path) -> Path:
    return write_rows(tmp_path / "rows.jsonl", text_rows())


# ---- (a) a folder that cannot be searched ---------------------------------------------------


def test_data_in_an_unsearchable_folder(tmp_path, monkeypatch, tiny_model_dir, rows):
    folder = tmp_path / "ddir"
    folder.mkdir()
    data = write_rows(folder / "data.jsonl", text_rows())
    blocked(monkeypatch, folder)
    assert one_line_error(precompute(tmp_path, tiny_model_dir, "--data", data)) == f"kto-precompute: error: --data {data}: cannot read (Permission denied)"
    line = one_line_error(precompute(tmp_path, tiny_model_dir, "--data", rows, "--eval-data", data))
    assert line == f"kto-precompute: error: --eval-data {data}: cannot read (Permission denied)"
    assert not (tmp_path / "out").exists()


def test_model_folder_that_cannot_be_searched(tmp_path, monkeypatch, tiny_model_dir, tiny_cache, rows):
    model = tmp_path / "modeldir"
    model.mkdir()
    blocked(monkeypatch, model)
    said = f"--model {model}: cannot read (Permission denied)"
    assert one_line_error(precompute(tmp_path, model, "--data", rows)) == f"kto-precompute: error: {said}"
    assert one_line_error(run_train(tiny_cache, model, tmp_path / "run")) == f"kto-train: error: {said}"
    assert not (tmp_path / "out").exists() and not (tmp_path / "run").exists()


def test_an_unreadable_weight_file_is_one_line(tmp_path, monkeypatch, tiny_model_dir):
    """As an unreadable config.json is: `PATH: unreadable (why)`."""
    from kto.formats.compute.safetensors_headers import safetensors_names
    from kto.formats.errors import InputError

    weights = tiny_model_dir / "model.safetensors"
    real_open = open

    def fake_open(path, *args, **kwargs):
        if str(path) == str(weights):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr("builtins.open", fake_open)
    with pytest.raises(InputError) as err:
        safetensors_names(tiny_model_dir)
    assert str(err.value) == f"{weights}: unreadable (Permission denied)"


# ---- (b) a name over the filesystem's limit -------------------------------------------------


def test_a_name_too_long_is_one_line_naming_its_flag(tmp_path, monkeypatch, tiny_model_dir, tiny_cache, rows):
    monkeypatch.chdir(tmp_path)
    too_long = "(File name too long)"
    line = one_line_error(run_precompute("--data", str(rows), "--model", str(tiny_model_dir), "--out", LONG))
    assert line == f"kto-precompute: error: --out {LONG}: cannot create {too_long}"
    assert one_line_error(run_train(tiny_cache, tiny_model_dir, Path(LONG))) == f"kto-train: error: --out {LONG}: cannot create {too_long}"
    line = one_line_error(run_precompute("--data", f"{LONG}.jsonl", "--model", str(tiny_model_dir), "--out", "out"))
    assert line == f"kto-precompute: error: --data {LONG}.jsonl: cannot read {too_long}"
    line = one_line_error(run_precompute("--data", str(rows), "--model", LONG, "--out", "out"))
    assert line == f"kto-precompute: error: --model {LONG}: cannot read {too_long}"
    line = one_line_error(run_train(Path(LONG), tiny_model_dir, tmp_path / "run"))
    assert line == f"kto-train: error: --cache {LONG}: cannot read {too_long}"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rows.jsonl"]


def test_inspect_verify_of_a_name_too_long(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from kto.inspection.cli import main

    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, ["verify", LONG])
    assert one_line_error(result) == f"kto-inspect: error: {LONG}: cannot read (File name too long)"


# ---- (c) ./hf:NAME is a local file ----------------------------------------------------------


def test_dot_slash_hf_names_a_local_file(tmp_path, monkeypatch, tiny_model_dir):
    from kto.formats.paths import HOME_PATH
    from kto.precompute.inputs.hub import is_dataset_input

    monkeypatch.chdir(tmp_path)
    local = HOME_PATH.convert("./hf:x.jsonl", None, None)
    assert local == tmp_path / "hf:x.jsonl" and not is_dataset_input(local)
    assert HOME_PATH.convert("hf:org/set:train", None, None) == Path("hf:org/set:train")  # a spec stays one
    write_rows(tmp_path / "hf:x.txt", text_rows())
    line = one_line_error(run_precompute("--data", "./hf:x.txt", "--model", str(tiny_model_dir), "--out", "out"))
    assert line.startswith(f"kto-precompute: error: --data {tmp_path / 'hf:x.txt'}: unknown file type '.txt'"), line


# ---- (d) the flag is named ------------------------------------------------------------------


def test_a_missing_input_names_its_flag(tmp_path, tiny_model_dir, rows):
    missing = tmp_path / "nope.jsonl"
    assert one_line_error(precompute(tmp_path, tiny_model_dir, "--data", missing)) == f"kto-precompute: error: --data {missing}: no such file"
    line = one_line_error(precompute(tmp_path, tiny_model_dir, "--data", rows, "--eval-data", missing))
    assert line == f"kto-precompute: error: --eval-data {missing}: no such file"


def test_dash_is_not_stdin(tmp_path, monkeypatch, tiny_model_dir):
    monkeypatch.chdir(tmp_path)
    line = one_line_error(precompute(tmp_path, tiny_model_dir, "--data", "-"))
    assert line == "kto-precompute: error: --data -: standard input is not read; write the rows to a file and give its path"


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs os.mkfifo")
def test_a_pipe_without_a_suffix_is_called_a_fifo(tmp_path, tiny_model_dir):
    """`--data /dev/stdin` from a pipe: "unknown file type '(none)'" hid what it was."""
    pipe = tmp_path / "stdin"
    os.mkfifo(pipe)
    line = one_line_error(precompute(tmp_path, tiny_model_dir, "--data", pipe))
    assert line == f"kto-precompute: error: --data {pipe}: a FIFO, not a regular file; write the rows to a file and give its path"


def test_a_file_given_as_cache_says_so(tmp_path, tiny_model_dir, rows):
    line = one_line_error(run_train(rows, tiny_model_dir, tmp_path / "run"))
    assert line == f"kto-train: error: --cache {rows}: a file, not a cache directory; give the folder kto-precompute --out wrote"
    assert not (tmp_path / "run").exists()
