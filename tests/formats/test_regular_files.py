"""Files read whole must be regular files (formats/files.py): a FIFO blocked kto-precompute
forever and a symlink to /dev/zero made it read without end. Every call that could hang runs in
a process of its own with a timeout, so a regression fails instead of hanging the suite."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import precompute_args, write_rows

pytestmark = pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs os.mkfifo")
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def refusal(call: str) -> str:
    """The InputError message of `call` (Python code), run in a subprocess that must end in 60 s, so a hang fails the test."""
    code = textwrap.dedent(
        f"""
        import sys
        from kto.formats.errors import InputError
        try:
            {call}
        except InputError as exc:
            print(exc)
            sys.exit(2)
        """
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=ENV)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    return proc.stdout.strip()


def fifo(path: Path) -> Path:
    os.mkfifo(path)
    return path


def precompute_error(tmp_path: Path, data: Path, model: Path) -> str:
    cmd = [sys.executable, "-m", "kto.precompute.cli", *precompute_args(data, model, tmp_path / "out")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=ENV)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert not (tmp_path / "out").exists()
    return lines[0]


def test_precompute_data_fifo_is_refused_not_waited_on(tmp_path, tiny_model_dir):
    data = fifo(tmp_path / "rows.jsonl")
    assert (
        precompute_error(tmp_path, data, tiny_model_dir)
        == f"kto-precompute: error: --data {data}: a FIFO, not a regular file; write the rows to a file and give its path"
    )


def test_precompute_data_symlink_to_dev_zero_is_refused_not_read(tmp_path, tiny_model_dir):
    data = tmp_path / "rows.jsonl"
    data.symlink_to("/dev/zero")
    assert precompute_error(tmp_path, data, tiny_model_dir) == f"kto-precompute: error: --data {data}: a character device, not a regular file"


def test_data_dir_holding_a_fifo_is_refused(tmp_path):
    folder = tmp_path / "set"
    folder.mkdir()
    write_rows(folder / "a.jsonl", [{"prompt": "p", "completion": "c", "label": True}])
    fifo(folder / "b.jsonl")
    message = refusal(f"from kto.precompute.inputs.records import input_identity; input_identity('hf:{folder}:train')")
    assert message == f"--data {folder}: {folder / 'b.jsonl'}: a FIFO, not a regular file"


def test_read_file_refuses_a_fifo(tmp_path):
    path = fifo(tmp_path / "rows.jsonl")
    assert refusal(f"from kto.precompute.inputs.records import read_file; read_file({str(path)!r})") == f"{path}: a FIFO, not a regular file"


def test_config_file_fifo_is_refused(tmp_path):
    path = fifo(tmp_path / "run.yaml")
    message = refusal(f"from kto.formats.config_file import load_config_file; load_config_file({str(path)!r}, ['lr'])")
    assert message == f"--config {path}: a FIFO, not a regular file"


def test_chat_template_fifo_is_refused(tmp_path):
    path = fifo(tmp_path / "template.jinja")
    message = refusal(f"from kto.precompute.templates import load_chat_template; load_chat_template({str(path)!r}, None)")
    assert message == f"--chat-template {path}: a FIFO, not a regular file"


def test_sharegpt_info_symlink_to_dev_zero_is_refused(tmp_path):
    path = tmp_path / "dataset_info.json"
    path.symlink_to("/dev/zero")
    message = refusal(f"from kto.precompute.inputs.sharegpt import load_sharegpt_info; load_sharegpt_info({str(path) + '#x'!r})")
    assert message == f"--sharegpt-info {path}#x: a character device, not a regular file"


def test_missing_input_is_still_no_such_file(tmp_path):
    path = tmp_path / "absent.jsonl"
    assert refusal(f"from kto.precompute.inputs.records import read_file; read_file({str(path)!r})") == f"{path}: no such file"
