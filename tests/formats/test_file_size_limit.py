"""A file-size limit (`ulimit -f`, which SLURM passes to its jobs: EFBIG, "File too large") gave
a traceback and exit 1 where a full disk gave one line and exit 2. Now it is one line naming the
file and the limit, exit 2, and nothing half-written. (CPython ignores SIGXFSZ at start-up, so a
write past the limit fails with EFBIG instead of the signal killing the process with a core dump,
whatever the batch system's default: the subprocess test below runs a real interpreter.)"""

from __future__ import annotations

import errno
import os
import resource
import subprocess
import sys

import pytest
from conftest import chat_rows, precompute_args, write_rows

from kto.formats import atomic
from kto.formats import schema as S
from kto.formats.atomic import FileTooLargeError, atomic_path


def test_efbig_inside_a_write_is_one_line_naming_the_file_and_the_limit(tmp_path, monkeypatch):
    monkeypatch.setattr(atomic, "_file_size_limit", lambda: 1_000_000)
    target = tmp_path / "shard-00000.arrow"
    with pytest.raises(FileTooLargeError) as caught, atomic_path(target) as tmp:
        tmp.write_bytes(b"x")
        raise OSError(errno.EFBIG, "Error writing bytes to file. Detail: [errno 27] File too large")
    message = str(caught.value)
    assert message == (
        f"{target}: file too large: this process may write files of at most 1000000 bytes "
        "(its file-size limit, `ulimit -f` 976, which batch systems such as SLURM pass to their jobs), "
        "or its filesystem's largest file is smaller; raise that limit (or write elsewhere) and run the command again"
    )
    assert "\n" not in message and os.listdir(tmp_path) == []  # nothing half-written


def test_a_library_that_says_it_in_words_is_recognised(tmp_path, monkeypatch):
    """safetensors and tokenizers (Rust) raise their own exception, "... (os error 27)"."""
    monkeypatch.setattr(atomic, "_file_size_limit", lambda: None)

    class SafetensorError(Exception):
        pass

    with pytest.raises(FileTooLargeError, match="file too large for its filesystem"), atomic_path(tmp_path / "model.safetensors"):
        raise SafetensorError("I/O error: File too large (os error 27)")


def test_a_real_limit_on_a_real_write(tmp_path):
    """A real EFBIG from a real write, through a command's one_line_errors: one line, exit 2."""
    code = (
        "import os, resource, click\n"
        "from kto.formats.atomic import write_bytes_atomic\n"
        "from kto.formats.errors import one_line_errors\n"
        "@click.command()\n"
        "@one_line_errors('probe')\n"
        "def main():\n"
        "    resource.setrlimit(resource.RLIMIT_FSIZE, (4096, resource.RLIM_INFINITY))\n"
        "    write_bytes_atomic(os.environ['TARGET'], b'x' * 10000)\n"
        "main(args=[])\n"
    )
    target = tmp_path / "big.bin"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ, "TARGET": str(target)})
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines() == [
        f"probe: error: {target}: file too large: this process may write files of at most 4096 bytes "
        "(its file-size limit, `ulimit -f` 4, which batch systems such as SLURM pass to their jobs), "
        "or its filesystem's largest file is smaller; raise that limit (or write elsewhere) and run the command again"
    ]
    assert os.listdir(tmp_path) == []


def test_precompute_under_a_file_size_limit_is_one_line_and_leaves_no_temp(tmp_path, tiny_model_dir):
    """The real command, in a real interpreter, under a limit that its journal's run.json (3.7 KB)
    stays within and its staging file passes (shards are written through the same atomic_path)."""
    data = write_rows(tmp_path / "chat.jsonl", chat_rows())
    out = tmp_path / "c"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def limited() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (4500, resource.RLIM_INFINITY))

    done = subprocess.run(
        [sys.executable, "-m", "kto.precompute.cli", *precompute_args(data, tiny_model_dir, out)],
        capture_output=True,
        text=True,
        env=env,
        preexec_fn=limited,
        timeout=300,
    )
    assert done.returncode == 2, done.stderr[-3000:]
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith(f"kto-precompute: error: {out}/.staging-") and "file too large" in last and "at most 4500 bytes" in last, last
    assert "Traceback" not in done.stderr, done.stderr
    assert not (out / S.MANIFEST_NAME).exists()
    assert not [p for p in out.rglob("*") if atomic.is_temp_name(p.name)]


def test_a_checkpoint_past_the_limit_is_one_line_and_leaves_no_temp(tmp_path, tiny_cache, tiny_model_dir):
    """kto-train's checkpoint: the tokenizer (3.5 MB) within an 8 MB limit, the weights (12.7 MB)
    past it."""
    out = tmp_path / "run"
    args = ["--cache", str(tiny_cache), "--model", str(tiny_model_dir), "--out", str(out), "--batch-size", "2", "--max-steps", "1", "--save-every", "1"]

    def limited() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (8_000_000, resource.RLIM_INFINITY))

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "kto.train.cli", *args], capture_output=True, text=True, env=env, preexec_fn=limited, timeout=300)
    assert done.returncode == 2, done.stderr[-3000:]
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith(f"kto-train: error: {out}/") and "file too large" in last and "at most 8000000 bytes" in last, last
    assert "Traceback" not in done.stderr, done.stderr
    assert not list(out.glob("checkpoint-*")) and not [p for p in out.rglob("*") if atomic.is_temp_name(p.name)]
