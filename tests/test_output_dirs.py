"""--out of kto-precompute and kto-train must be able to become a directory: a file, a folder
above it that is a file, or a symbolic link to nothing is refused in one line naming it, before
anything is read or written. kto-precompute ended such paths in a FileExistsError or
NotADirectoryError traceback (mkdir calls a dangling link "File exists"), kto-train said
"cannot create or lock (File exists)"."""

from __future__ import annotations

import os
import subprocess

import pytest

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def layout(tmp_path):
    (tmp_path / "afile").write_text("the user's\n")
    (tmp_path / "dangling").symlink_to("nowhere")
    return tmp_path


CASES = [
    ("afile", "--out afile: is a file, not a directory"),
    ("afile/sub", "--out afile/sub: afile, above it, is a file, not a directory"),
    ("dangling", "--out dangling: a symbolic link to nowhere, which does not exist; create that directory or give another path"),
    ("dangling/sub", "--out dangling/sub: dangling, above it, is a symbolic link to nowhere, which does not exist; create that directory or give another path"),
]


@pytest.mark.parametrize("command", ["kto-precompute", "kto-train"])
@pytest.mark.parametrize(("out", "message"), CASES)
def test_an_out_that_cannot_become_a_directory_is_refused_in_one_line(tmp_path, command, out, message):
    root = layout(tmp_path)
    inputs = ["--data", "rows.jsonl", "--model", "model"] if command == "kto-precompute" else ["--cache", "cache", "--model", "model"]
    result = subprocess.run([command, *inputs, "--out", out], cwd=root, env=ENV, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == [f"{command}: error: {message}"]
    assert sorted(p.name for p in root.iterdir()) == ["afile", "dangling"] and not (root / "nowhere").exists()
    assert (root / "afile").read_text() == "the user's\n"
