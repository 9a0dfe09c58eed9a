"""kto-precompute never loses or launders data: resume, overwrite, input hashes, the --out lock,
full disks and leftovers of a killed run. Each test broke before the fix it is named after."""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import chat_rows, one_line_error, precompute_args, write_rows
from conftest import run_precompute as run_cli

from kto.formats import schema as S
from kto.formats.manifest import read_manifest
from kto.inspection.verify import verify


def flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def verified(cache: Path) -> bool:
    return all(r.ok for r in verify(cache, check_tokenizer=False))


@pytest.fixture(scope="module")
def made(tmp_path_factory, tiny_model_dir):
    """One finished 4-shard cache of chat rows, made once; tests work on copies of it."""
    root = tmp_path_factory.mktemp("made")
    data = write_rows(root / "chat.jsonl", chat_rows())
    assert run_cli(*precompute_args(data, tiny_model_dir, root / "c")).exit_code == 0
    return root


@pytest.fixture
def cache(made, tmp_path, tiny_model_dir):
    """A copy of the finished cache and its data file, and the args that resume it in place."""
    data = tmp_path / "chat.jsonl"
    shutil.copy(made / "chat.jsonl", data)
    out = tmp_path / "c"
    shutil.copytree(made / "c", out)
    return out, data, precompute_args(data, tiny_model_dir, out)


# ---- 1. a rerun must not launder a corrupted shard -------------------------------------------


def test_rerun_rebuilds_a_corrupted_shard_instead_of_laundering_it(cache):
    out, _, args = cache
    original = (out / "shard-00001.arrow").read_bytes()
    manifest = read_manifest(out)
    flip_byte(out / "shard-00001.arrow")
    assert not verified(out)
    result = run_cli(*args)
    assert result.exit_code == 0, result.output
    assert "shard-00001.arrow" in result.output and "rebuil" in result.output
    # The shard was scored again (same bytes as the first time on CPU), not re-hashed as it lay.
    assert (out / "shard-00001.arrow").read_bytes() == original
    rerun = read_manifest(out)  # `info` names this copy's data path; everything else is equal
    assert (rerun.fingerprint, rerun.shards, rerun.counts) == (manifest.fingerprint, manifest.shards, manifest.counts)
    assert verified(out)


def test_killed_run_state_is_resumed_to_the_same_bytes(cache):
    """What a kill can leave: the journal entry written but the rename not done (a staged temp, no
    shard), or a shard that changed since its entry: both are scored again, intact ones kept."""
    out, _, args = cache
    reference = {p.name: p.read_bytes() for p in out.glob(S.SHARD_GLOB)}
    (out / S.MANIFEST_NAME).unlink()
    flip_byte(out / "shard-00002.arrow")
    (out / "shard-00003.arrow").rename(out / ".shard-00003.arrow.tmp-999-1")
    before = (out / "shard-00000.arrow").stat().st_mtime_ns
    result = run_cli(*args)
    assert result.exit_code == 0, result.output
    assert (out / "shard-00000.arrow").stat().st_mtime_ns == before  # recorded and intact: kept
    assert {p.name: p.read_bytes() for p in out.glob(S.SHARD_GLOB)} == reference
    assert not (out / ".shard-00003.arrow.tmp-999-1").exists() and verified(out)


def test_a_shard_the_journal_does_not_name_is_refused_not_adopted(cache):
    out, _, args = cache
    (out / S.MANIFEST_NAME).unlink()
    (out / ".journal" / "shard-00002.arrow.json").unlink()
    message = one_line_error(run_cli(*args))
    assert "shard-00002.arrow" in message and "did not write" in message
    assert len(list(out.glob(S.SHARD_GLOB))) == 4


def test_manifest_shas_come_from_the_journal_not_from_rehashing(cache, monkeypatch):
    """If a shard changes after it was written and checked, the manifest refuses it."""
    from kto.precompute import pipeline

    out, _, args = cache
    (out / S.MANIFEST_NAME).unlink()
    real_finish = pipeline._finish

    def tamper_then_finish(s, *a, **kw):
        flip_byte(s.out / "shard-00003.arrow")
        return real_finish(s, *a, **kw)

    monkeypatch.setattr(pipeline, "_finish", tamper_then_finish)
    message = one_line_error(run_cli(*args))
    assert "shard-00003.arrow" in message and "sha256" in message
    assert not (out / S.MANIFEST_NAME).exists()


# ---- 2. --overwrite deletes only what the cache wrote ----------------------------------------


@pytest.mark.parametrize("folder", [S.EVAL_DIR, S.TOKENIZER_DIR])
def test_overwrite_refuses_and_keeps_a_users_own_folder(tmp_path, tiny_model_dir, folder):
    data = write_rows(tmp_path / "chat.jsonl", chat_rows())
    out = tmp_path / "c"
    (out / folder).mkdir(parents=True)
    (out / folder / "mine.txt").write_text("my own notes")
    message = one_line_error(run_cli(*precompute_args(data, tiny_model_dir, out, "--overwrite")))
    assert f"{folder}" in message and "--out" in message
    assert (out / folder / "mine.txt").read_text() == "my own notes"
    assert not list(out.glob(S.SHARD_GLOB))


def test_overwrite_of_a_finished_cache_keeps_a_users_folder_put_into_it(cache):
    out, _, args = cache
    (out / "notes").mkdir()
    (out / "notes" / "a.txt").write_text("x")
    message = one_line_error(run_cli(*args, "--seed", "1", "--overwrite"))
    assert "notes" in message
    assert (out / "notes" / "a.txt").read_text() == "x"
    assert read_manifest(out).content.seed == 0  # nothing deleted either


def test_a_tokenizer_folder_the_cache_did_not_write_is_not_adopted(cache):
    """A rerun into a finished cache whose tokenizer/ was replaced refuses; it does not keep it."""
    out, _, args = cache
    shutil.rmtree(out / S.TOKENIZER_DIR)
    (out / S.TOKENIZER_DIR).mkdir()
    (out / S.TOKENIZER_DIR / "tokenizer.json").write_text("{}")
    message = one_line_error(run_cli(*args))
    assert S.TOKENIZER_DIR in message
    assert (out / S.TOKENIZER_DIR / "tokenizer.json").read_text() == "{}"


def test_overwrite_removes_exactly_the_old_cache(tmp_path, tiny_model_dir):
    data = write_rows(tmp_path / "chat.jsonl", chat_rows())
    out = tmp_path / "c"
    assert run_cli(*precompute_args(data, tiny_model_dir, out, "--eval-fraction", "0.25", "--rows-per-shard", "2")).exit_code == 0
    assert len(list(out.glob(S.SHARD_GLOB))) == 6
    result = run_cli(*precompute_args(data, tiny_model_dir, out, "--seed", "1", "--overwrite"))
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.glob(S.SHARD_GLOB)) == [S.shard_name(k) for k in range(4)]
    assert not (out / S.EVAL_DIR).exists() and verified(out)


def tree_bytes(out: Path) -> dict[str, bytes]:
    """Every file under `out` with its bytes; the lock's bytes are the pid of its last holder."""
    return {str(p.relative_to(out)): b"" if p.name == ".lock" else p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


@pytest.mark.parametrize(
    "bad",
    [
        pytest.param("label", id="a-row-refused-while-staging"),
        pytest.param("eval-fraction", id="refused-after-staging-with-an-eval-split"),
    ],
)
def test_overwrite_with_bad_input_keeps_the_old_cache_whole(cache, bad):
    """Seen by a bug hunter: `--overwrite` with a bad last row ("label": "maybe") deleted the old
    cache before any row was read, and left a journal of the new configuration that refused the
    old command. The old cache now stays whole until the new cache, built in OUT/.next/, is complete
    (test_overwrite_aside.py): after
    the one-line error, OUT holds exactly what it held, verifies, and the old command resumes it."""
    out, data, args = cache
    before = tree_bytes(out)
    if bad == "label":
        rows = chat_rows()
        rows[-1]["label"] = "maybe"
        extra = []
    else:  # every row reads well; splitting 16 rows by 0.05 leaves too few eval rows
        rows, extra = chat_rows(), ["--eval-fraction", "0.05"]
    new = write_rows(data.parent / "new.jsonl", rows)
    message = one_line_error(run_cli(*precompute_args(new, args[3], out, *extra, "--overwrite")))
    assert ("maybe" in message) if bad == "label" else ("--eval-fraction" in message), message
    assert tree_bytes(out) == before
    assert verified(out)
    rerun = run_cli(*args)
    assert rerun.exit_code == 0, rerun.output
    assert read_manifest(out).content.inputs[0]["name"] == data.name and verified(out)


# ---- 3. inputs are hashed in the read that parses them ---------------------------------------


def test_input_hash_is_of_the_bytes_that_were_parsed(tmp_path, tiny_model_dir, monkeypatch):
    """The data file changes after it was read: the fingerprint still names what was read."""
    from kto.precompute import pipeline

    rows = chat_rows()
    data = write_rows(tmp_path / "chat.jsonl", rows)
    read_sha = hashlib.sha256(data.read_bytes()).hexdigest()
    real = pipeline.tokenize_example

    def change_file_then_tokenize(*a, **kw):  # rows are read before the first is tokenized
        write_rows(data, rows[::-1])
        return real(*a, **kw)

    monkeypatch.setattr(pipeline, "tokenize_example", change_file_then_tokenize)
    out = tmp_path / "c"
    assert run_cli(*precompute_args(data, tiny_model_dir, out)).exit_code == 0
    assert read_manifest(out).content.inputs == ({"name": "chat.jsonl", "sha256": read_sha},)


def test_resume_refuses_an_input_that_changed_since_the_interrupted_run(cache):
    out, data, args = cache
    (out / S.MANIFEST_NAME).unlink()  # killed before the manifest
    write_rows(data, chat_rows()[::-1])
    message = one_line_error(run_cli(*args))
    assert "chat.jsonl" in message and "changed" in message
    assert len(list(out.glob(S.SHARD_GLOB))) == 4  # nothing removed


# ---- 4. one writer per cache -------------------------------------------------------------------


def test_second_concurrent_precompute_into_one_out_exits_2_naming_the_holder(cache):
    out, _, args = cache
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\nfrom kto.formats.lock import locked_dir\n"
            "with locked_dir(sys.argv[1], '--out'):\n    print('held', flush=True)\n    time.sleep(60)\n",
            str(out),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        manifest = (out / S.MANIFEST_NAME).read_bytes()
        message = one_line_error(run_cli(*args, "--seed", "1", "--overwrite"))
        assert f"pid {holder.pid}" in message and "--out" in message
        assert (out / S.MANIFEST_NAME).read_bytes() == manifest
    finally:
        holder.kill()
        holder.wait()
    assert run_cli(*args).exit_code == 0  # released when the holder died


def test_the_lock_file_counts_as_the_caches_own(cache):
    out, _, args = cache
    assert (out / ".lock").is_file()
    result = run_cli(*args)
    assert result.exit_code == 0, result.output


# ---- 6. full disks and leftovers ----------------------------------------------------------------


def test_disk_full_names_the_path_in_one_line(cache, monkeypatch):
    out, _, args = cache
    (out / S.MANIFEST_NAME).unlink()
    real = os.replace

    def full(src, dst, *a, **kw):
        if str(dst).endswith(S.MANIFEST_NAME):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(src, dst, *a, **kw)

    monkeypatch.setattr(os, "replace", full)
    message = one_line_error(run_cli(*args))
    assert "no space left on device" in message and str(out / S.MANIFEST_NAME) in message
    assert not [p for p in out.iterdir() if ".tmp-" in p.name]


def test_temp_files_of_a_killed_run_are_cleaned_at_the_next_start(cache):
    out, _, args = cache
    leftovers = [
        out / ".shard-00001.arrow.tmp-999-1",
        out / ".journal" / ".shard-00001.arrow.json.tmp-999-1",
        out / ".manifest.json.tmp-12-3",
    ]
    for p in leftovers:
        p.write_bytes(b"partial")
    (out / ".tokenizer.old-77").mkdir()
    (out / ".tokenizer.old-77" / "tokenizer.json").write_text("{}")
    result = run_cli(*args)
    assert result.exit_code == 0, result.output
    assert not any(p.exists() for p in leftovers) and not (out / ".tokenizer.old-77").exists()
    assert verified(out)


@pytest.mark.parametrize("where", ["cache", "fresh"])
def test_files_only_named_like_temp_files_are_refused_never_deleted(cache, tmp_path, where):
    """Issue 19 item 1: `.photos.old-2023/`, `.notes.tmp-1` and `.X.deleted-5` in --out were
    deleted (no --overwrite, no message) and the cache written beside them, exit 0. Only the exact
    temp names our writers make for our own files go; anything else is refused in one line."""
    out, data, args = cache
    if where == "fresh":
        out = tmp_path / "fresh"
        out.mkdir()
        args = [*args[: args.index("--out") + 1], str(out), *args[args.index("--out") + 2 :]]
    (out / ".photos.old-2023").mkdir()
    (out / ".photos.old-2023" / "cat.jpg").write_bytes(b"meow")
    for name in (".notes.tmp-1", ".X.deleted-5", ".manifest.json.tmp-1", ".tokenizer.deleted-4"):
        (out / name).write_text("mine")
    before = sorted(p.name for p in out.iterdir())
    message = one_line_error(run_cli(*args))
    assert "which this cache did not write" in message and ".X.deleted-5" in message, message
    assert sorted(p.name for p in out.iterdir()) == before
    assert (out / ".photos.old-2023" / "cat.jpg").read_bytes() == b"meow" and (out / ".notes.tmp-1").read_text() == "mine"


@pytest.mark.parametrize("where", ["cache", "fresh"])
def test_a_users_own_journal_folder_is_refused_never_written_or_deleted(cache, tmp_path, where):
    """`.journal/` was ours by its name alone: a user's `.journal/` in --out got run.json written
    into it, and --overwrite would have deleted it whole. Ours is a folder of journal files only."""
    out, _, args = cache
    if where == "fresh":
        out = tmp_path / "fresh"
        out.mkdir()
        args = [*args[: args.index("--out") + 1], str(out), *args[args.index("--out") + 2 :]]
    (out / ".journal").mkdir(exist_ok=True)
    (out / ".journal" / "diary.txt").write_text("dear diary")
    before = {p.name for p in (out / ".journal").iterdir()}
    for extra in ([], ["--seed", "7", "--overwrite"]):
        message = one_line_error(run_cli(*args, *extra))
        assert "holds .journal/" in message and "which this cache did not write" in message, message
        assert {p.name for p in (out / ".journal").iterdir()} == before and (out / ".journal" / "diary.txt").read_text() == "dear diary"


def test_a_lock_that_is_a_symlink_is_refused_and_its_target_untouched(cache, tmp_path):
    """Issue 19 item 5: the pid went into the symlink's target, truncating it."""
    out, _, args = cache
    precious = tmp_path / "precious.txt"
    precious.write_text("my thesis\n")
    (out / ".lock").unlink()
    (out / ".lock").symlink_to(precious)
    message = one_line_error(run_cli(*args))
    assert ".lock is not a lock file kto made (a symbolic link)" in message
    assert precious.read_text() == "my thesis\n"


def test_disk_full_while_saving_the_tokenizer_is_one_line(cache, monkeypatch):
    """Issue 19 item 12: tokenizers raises a plain Exception on a full disk (measured on a 64 KiB
    tmpfs: "No space left on device (os error 28)"), which came out as a traceback."""
    from transformers.tokenization_utils_tokenizers import TokenizersBackend

    out, _, args = cache
    shutil.rmtree(out / "tokenizer")
    (out / S.MANIFEST_NAME).unlink()

    def full(self, save_directory, file_names, *a, **kw):
        (Path(save_directory) / "tokenizer.json").write_text('{"vers')  # what fit before the disk filled
        raise Exception("No space left on device (os error 28)")

    monkeypatch.setattr(TokenizersBackend, "_save_pretrained", full)
    message = one_line_error(run_cli(*args))
    assert message.endswith(f"{out / 'tokenizer'}: no space left on device; free some space and run the command again"), message
    assert not (out / "tokenizer").exists() and not [p for p in out.iterdir() if ".tmp-" in p.name]


@pytest.mark.numerics
def test_kill_at_any_point_then_rerun_is_byte_identical(made, tmp_path, tiny_model_dir):
    """Kill a real precompute process while it writes shards; the rerun ends with the same bytes.

    The killed process runs as many threads as this one, which made the reference and makes
    the rerun: the same kernels on the same shapes. With 1 thread against 2, MKL splits some
    matmul sums otherwise (under AVX2 the shards then differ in the last bits)."""
    import torch

    ref = made / "c"
    expected = {p.name: p.read_bytes() for p in ref.glob(S.SHARD_GLOB)}
    data = tmp_path / "chat.jsonl"
    shutil.copy(made / "chat.jsonl", data)
    out = tmp_path / "c"
    args = precompute_args(data, tiny_model_dir, out)
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}
    proc = subprocess.Popen([sys.executable, "-m", "kto.precompute.cli", *args], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while len(list(out.glob(S.SHARD_GLOB))) < 2 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.002)
    proc.kill()
    assert proc.wait() == -signal.SIGKILL, "the run finished before it could be killed"
    result = run_cli(*args)
    assert result.exit_code == 0, result.output
    assert {p.name: p.read_bytes() for p in out.glob(S.SHARD_GLOB)} == expected
    got, want = read_manifest(out), read_manifest(ref)
    assert (got.fingerprint, got.shards, got.counts) == (want.fingerprint, want.shards, want.counts)


# kto-precompute as its console script runs it, paused with the second shard's bytes written under
# their temp name, not yet recorded or renamed (write_shard's `announce`, where the journal records
# them): a line on stdout says so, for the test to signal it.
PAUSED = """
import sys, time
import kto.formats.shards as shards
write, written = shards.write_shard, []
def paused(path, *args, announce=None, **kwargs):
    def pause(sha):
        written.append(path)
        if len(written) == 2:
            print("temp written", flush=True)
            time.sleep(60)
        if announce is not None:
            announce(sha)
    return write(path, *args, announce=pause, **kwargs)
shards.write_shard = paused
from kto.precompute.cli import main
main(prog_name="kto-precompute")
"""


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1])
def test_a_stop_signal_is_one_line_and_the_rerun_is_byte_identical(made, tmp_path, tiny_model_dir, signum):
    """Seen failing before: SIGTERM, SIGHUP and SIGUSR1 ended kto-precompute silently (returncode
    -signum). Now one line says so and how to go on, exit 128 + signum, and the shard being
    written when it came leaves no file behind: the rerun finishes the same bytes."""
    import torch

    data = tmp_path / "chat.jsonl"
    shutil.copy(made / "chat.jsonl", data)
    out = tmp_path / "c"
    args = precompute_args(data, tiny_model_dir, out)
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}  # as test_kill_at_any_point_then_rerun_is_byte_identical
    proc = subprocess.Popen([sys.executable, "-c", PAUSED, *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline() == "temp written\n", proc.stderr.read()[-3000:]
        assert [p.name for p in out.rglob("*.tmp-*")], "no shard under its temp name"
        proc.send_signal(signum)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 128 + signum, err[-3000:]
    name = signal.Signals(signum).name
    assert err.splitlines()[-1] == f"kto-precompute: stopped by {name}; finished shards are kept; run the same command again to resume", err[-3000:]
    assert "Traceback" not in err and not list(out.rglob("*.tmp-*")) and not (out / S.MANIFEST_NAME).exists()
    result = run_cli(*args)
    assert result.exit_code == 0, result.output
    assert {p.name: p.read_bytes() for p in out.glob(S.SHARD_GLOB)} == {p.name: p.read_bytes() for p in (made / "c").glob(S.SHARD_GLOB)}


def test_overwrite_with_bad_input_keeps_an_unfinished_runs_staging(cache, monkeypatch):
    """Seen by a reviewer: OUT held an unfinished run of another configuration (killed after it
    staged its rows); a bad `--overwrite` deleted that run's staging file before reading a row,
    so resuming it tokenized everything again. Staging files are now removed only once the new
    rows are staged, and a refused run removes only those it made."""
    from kto.precompute import pipeline

    out, data, args = cache
    unfinished = [*precompute_args(data, args[3], out, "--max-length", "48"), "--overwrite"]
    with monkeypatch.context() as m:
        m.setattr(pipeline, "warn_without_stop", lambda *a, **kw: (_ for _ in ()).throw(RuntimeError("killed")))
        assert run_cli(*unfinished).exit_code != 0
    before = tree_bytes(out)
    assert any(name.startswith(".staging-") for name in before), sorted(before)
    rows = chat_rows()
    rows[-1]["label"] = "maybe"
    new = write_rows(data.parent / "bad.jsonl", rows)
    assert "maybe" in one_line_error(run_cli(*precompute_args(new, args[3], out, "--overwrite")))
    assert tree_bytes(out) == before
    resumed = run_cli(*unfinished)
    assert resumed.exit_code == 0, resumed.output
    assert verified(out)
