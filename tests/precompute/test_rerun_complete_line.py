"""A rerun of kto-precompute on a finished cache says, in one line before the summary, that every
shard was already finished and nothing was scored; before, it printed the summary alone ("…
tokens scored …", the cache's counts), as if it had just scored them all."""

from __future__ import annotations

import hashlib

from conftest import chat_rows, precompute_args, write_rows
from conftest import run_precompute as run_cli

from kto.formats import schema as S

LINE = "already complete, nothing scored: the 3 train shards (12 rows) and the 1 eval shard (4 rows) were finished by an earlier run; the summary below is the cache's"


def test_a_rerun_on_a_finished_cache_says_nothing_was_scored(tmp_path, tiny_model_dir):
    data = write_rows(tmp_path / "chat.jsonl", chat_rows())
    args = precompute_args(data, tiny_model_dir, tmp_path / "c", "--eval-fraction", "0.25")
    first = run_cli(*args)
    assert first.exit_code == 0 and "already complete" not in first.output, first.output
    manifest = (tmp_path / "c" / S.MANIFEST_NAME).read_bytes()
    again = run_cli(*args)
    assert again.exit_code == 0, again.output
    lines = again.output.splitlines()
    assert not any(line.startswith("resuming:") for line in lines), again.output
    assert lines.index(LINE) + 1 == next(i for i, line in enumerate(lines) if line.startswith("train: 12 rows")), again.output
    assert hashlib.sha256((tmp_path / "c" / S.MANIFEST_NAME).read_bytes()).digest() == hashlib.sha256(manifest).digest()


def test_a_partly_finished_rerun_keeps_its_resuming_line(tmp_path, tiny_model_dir):
    data = write_rows(tmp_path / "chat.jsonl", chat_rows())
    out = tmp_path / "c"
    assert run_cli(*precompute_args(data, tiny_model_dir, out)).exit_code == 0
    (out / S.MANIFEST_NAME).unlink()
    sorted(out.glob(S.SHARD_GLOB))[0].unlink()
    again = run_cli(*precompute_args(data, tiny_model_dir, out))
    assert again.exit_code == 0, again.output
    assert "already complete" not in again.output and "resuming: 3 of 4 train shards (11 rows) kept from an earlier run" in again.output


def test_a_run_killed_before_its_manifest_is_finished_without_the_line(tmp_path, tiny_model_dir):
    """Every shard done but no manifest (a kill between them): the rerun writes the manifest, and
    the cache was not complete before it, so it does not say so."""
    data = write_rows(tmp_path / "chat.jsonl", chat_rows())
    out = tmp_path / "c"
    assert run_cli(*precompute_args(data, tiny_model_dir, out)).exit_code == 0
    (out / S.MANIFEST_NAME).unlink()
    again = run_cli(*precompute_args(data, tiny_model_dir, out))
    assert again.exit_code == 0 and (out / S.MANIFEST_NAME).is_file(), again.output
    assert "already complete" not in again.output and "resuming" not in again.output, again.output


def test_the_line_is_dropped_when_a_shard_was_written_during_the_run(tmp_path):
    """Under two processes the main one counts another rank's shards as kept from the journal,
    before that rank checks their bytes: a damaged shard rebuilt there was followed by "already
    complete, nothing scored". A shard written since the run began drops the line."""
    import os
    from types import SimpleNamespace

    from kto.precompute.pipeline import _unless_rewritten

    (tmp_path / "eval").mkdir()
    old, rebuilt = tmp_path / "shard-00000.arrow", tmp_path / "eval" / "shard-00000.arrow"
    old.write_bytes(b"a")
    rebuilt.write_bytes(b"b")
    begun = 1_000_000.0
    os.utime(old, (begun - 60, begun - 60))
    splits = [SimpleNamespace(out=tmp_path), SimpleNamespace(out=tmp_path / "eval")]
    os.utime(rebuilt, (begun - 5, begun - 5))
    assert _unless_rewritten("already complete", splits, begun) == "already complete"
    os.utime(rebuilt, (begun + 1, begun + 1))
    assert _unless_rewritten("already complete", splits, begun) is None
    assert _unless_rewritten(None, splits, begun) is None


def test_a_rerun_on_a_finished_cache_writes_nothing(tmp_path, tiny_model_dir, monkeypatch):
    """The rerun decides "already complete" from the manifest, the journal and the shards' bytes
    before it takes --out's lock or stages a row: a finished cache on a read-only mount, another
    user's, or on a full disk is said complete as kto-train reads it (it took the lock and staged
    the rows again, and so failed there). Here both fail if reached, and no file is touched."""
    import kto.precompute.output as output
    import kto.precompute.pipeline as pipeline

    data = write_rows(tmp_path / "chat.jsonl", chat_rows())
    args = precompute_args(data, tiny_model_dir, tmp_path / "c", "--eval-fraction", "0.25")
    assert run_cli(*args).exit_code == 0
    before = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in (tmp_path / "c").rglob("*") if p.is_file()}

    def refused(*a, **k):
        raise OSError(30, "Read-only file system")

    monkeypatch.setattr(output, "locked_dir", refused)
    monkeypatch.setattr(pipeline, "_stage_and_split", refused)
    again = run_cli(*args)
    assert again.exit_code == 0, again.output
    assert LINE in again.output.splitlines(), again.output
    after = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in (tmp_path / "c").rglob("*") if p.is_file()}
    assert after == before


def test_a_rerun_that_would_change_the_manifest_runs_under_the_lock(tmp_path, tiny_model_dir):
    """The same rows from another path: the rerun scores nothing, but the manifest's `info`
    records the new path, as it did before the rerun could skip the lock; so that rerun is not
    the read-only one. A changed shard is rebuilt as before (the bytes are checked first)."""
    import json
    import shutil

    data = write_rows(tmp_path / "chat.jsonl", chat_rows())
    out = tmp_path / "c"
    assert run_cli(*precompute_args(data, tiny_model_dir, out)).exit_code == 0
    (tmp_path / "elsewhere").mkdir()
    moved = tmp_path / "elsewhere" / "chat.jsonl"
    shutil.copy(data, moved)
    again = run_cli(*precompute_args(moved, tiny_model_dir, out))
    assert again.exit_code == 0 and "already complete, nothing scored" in again.output, again.output
    assert json.loads((out / S.MANIFEST_NAME).read_text())["info"]["data_paths"] == [str(moved)]
    shard = sorted(out.glob(S.SHARD_GLOB))[0]
    shard.write_bytes(shard.read_bytes()[:-1] + b"\0")
    rebuilt = run_cli(*precompute_args(moved, tiny_model_dir, out))
    assert rebuilt.exit_code == 0 and "already complete" not in rebuilt.output and f"{shard}: not the shard" in rebuilt.output, rebuilt.output


def test_what_the_locked_rerun_would_do_is_left_to_it(tmp_path, tiny_model_dir):
    """The read-only rerun stands aside where the locked one has work or a say: a killed run's
    staging file and temp name are cleared, a file the cache did not write is refused, and a lock
    held by another kto-precompute (an --overwrite staging its rows, about to swap another cache
    in) refuses the rerun as in use, rather than calling the cache complete."""
    from kto.formats.lock import locked_dir

    data = write_rows(tmp_path / "chat.jsonl", chat_rows())
    out = tmp_path / "c"
    args = precompute_args(data, tiny_model_dir, out)
    assert run_cli(*args).exit_code == 0
    leftovers = [out / ".staging-0123456789abcdef01234567.arrow", out / ".shard-00001.arrow.tmp-999999-12345"]
    for p in leftovers:
        p.write_bytes(b"x")
    again = run_cli(*args)
    assert again.exit_code == 0 and LINE.split(":")[0] in again.output, again.output
    assert not any(p.exists() for p in leftovers)
    (out / "notes.txt").write_text("mine")
    refused = run_cli(*args)
    assert refused.exit_code == 2 and "holds notes.txt, which this cache did not write" in refused.output, refused.output
    (out / "notes.txt").unlink()
    with locked_dir(out, "--out"):
        busy = run_cli(*args)
    assert busy.exit_code == 2 and "in use by another kto process" in busy.output, busy.output
