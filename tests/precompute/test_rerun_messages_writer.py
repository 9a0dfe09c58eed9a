"""A cache without a manifest that a kto-precompute is writing, or stopped writing, says so.

Found by a user: `kto-precompute --overwrite` removed the old cache once the new rows were read (it
now builds in OUT/.next/; a first run into a new --out still leaves a folder without a manifest
while it scores), and a kto-train started while it scored got "no manifest; is cbig a finished kto-precompute
cache?", as if the folder were not a cache at all. The lock file (formats/lock.py) records the
writer's PID@HOST, and flock tells whether it still holds the lock."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest

from kto.formats.cache import open_cache
from kto.formats.errors import InputError
from kto.formats.lock import LOCK_NAME, locked_dir
from kto.formats.shards import JOURNAL_DIR


def _cache_being_written(root):
    """What --out holds while kto-precompute scores: the lock and the journal, no manifest."""
    cache = root / "cbig"
    (cache / JOURNAL_DIR).mkdir(parents=True)
    return cache


def test_a_cache_being_written_names_its_writer(tmp_path):
    cache = _cache_being_written(tmp_path)
    with locked_dir(cache, "--out"), pytest.raises(InputError) as err:
        open_cache(cache)
    said = str(err.value)
    assert said == (
        f"{cache / 'manifest.json'}: no manifest yet: kto-precompute (pid {os.getpid()} on this host, {socket.gethostname()},"
        f" as its lock file records) is writing {cache} now; wait for it to finish"
    ), said


def test_the_eval_split_of_a_cache_being_written_names_the_writer_of_its_parent(tmp_path):
    cache = _cache_being_written(tmp_path)
    (cache / "eval" / JOURNAL_DIR).mkdir(parents=True)
    with locked_dir(cache, "--out"), pytest.raises(InputError, match=f"is writing {cache} now; wait for it to finish$"):
        open_cache(cache / "eval")


def test_a_writer_that_stopped_is_not_said_to_be_writing(tmp_path):
    cache = _cache_being_written(tmp_path)
    (cache / LOCK_NAME).write_text("4711@node07\n")
    with pytest.raises(InputError) as err:
        open_cache(cache)
    said = str(err.value)
    assert said == (
        f"{cache / 'manifest.json'}: no manifest: the kto-precompute that wrote {cache} last (pid 4711 on host node07, as its lock file"
        " records) did not finish it; run the same kto-precompute command again to finish it"
    ), said


def test_a_folder_with_no_lock_file_keeps_the_plain_message(tmp_path):
    (tmp_path / "c").mkdir()
    with pytest.raises(InputError) as err:
        open_cache(tmp_path / "c")
    assert str(err.value) == f"{tmp_path / 'c' / 'manifest.json'}: no manifest; is {tmp_path / 'c'} a finished kto-precompute cache?"


def test_kto_train_started_while_the_cache_is_written_is_told_to_wait(tmp_path, model_dir):
    """The command itself, in another process, while this one holds the cache's lock as
    kto-precompute does; its early check (formats/compute/early_checks.py) says it in one line."""
    cache = _cache_being_written(tmp_path)
    with locked_dir(cache, "--out"):
        code = "import sys; sys.argv[0] = 'kto'; from kto.train.cli import main; main()"
        args = ["--cache", str(cache), "--model", str(model_dir), "--out", str(tmp_path / "run")]
        proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"kto-train: error: {cache / 'manifest.json'}: no manifest yet: kto-precompute (pid {os.getpid()} "), lines
    assert lines[0].endswith(f"is writing {cache} now; wait for it to finish"), lines
    assert not (tmp_path / "run").exists()


def test_a_locked_folder_that_is_no_cache_keeps_the_plain_message(tmp_path):
    """A kto-train run directory has a lock file too: without a precompute journal the folder
    is not called a cache being written."""
    run = tmp_path / "run"
    with locked_dir(run, "--out"), pytest.raises(InputError) as err:
        open_cache(run)
    assert str(err.value) == f"{run / 'manifest.json'}: no manifest; is {run} a finished kto-precompute cache?"
