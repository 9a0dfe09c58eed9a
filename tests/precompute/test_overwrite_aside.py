"""`kto-precompute --overwrite` builds the new cache aside, in `OUT/.next/`, and swaps it in at the end.

Found by a user: --overwrite removed the old cache as soon as the new rows were checked, before
the model was even loaded, so for the whole scoring --out held no cache (a kto-train reading the
old one died at its next shard) and a killed --overwrite left no cache at all. Now the old cache
stays whole and verifiable until the new one is complete, a kill while scoring leaves it so and
the same command resumes the build, and a kill during the swap is finished by the same command."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from conftest import chat_rows, one_line_error, precompute_args, write_rows
from conftest import run_precompute as run_cli

from kto.formats import schema as S
from kto.formats.cache import open_cache
from kto.formats.manifest import read_manifest
from kto.inspection.verify import verify
from kto.precompute import output, pipeline
from kto.precompute.output import NEXT


class Killed(Exception):
    """Stands for a kill: raised in the middle of a run, nothing after it runs."""


def verified(cache: Path) -> bool:
    return all(r.ok for r in verify(cache, check_tokenizer=False))


def old_cache_bytes(out: Path) -> dict[str, bytes]:
    """Every file of the old cache in `out`: not the lock, the new run's staging file or `.next/`."""
    return {
        str(p.relative_to(out)): p.read_bytes()
        for p in sorted(out.rglob("*"))
        if p.is_file() and p.name != ".lock" and not p.name.startswith(".staging-") and NEXT not in p.relative_to(out).parts
    }


def cache_bytes(out: Path) -> dict[str, bytes]:
    """The shards (train and eval) and manifests of the cache in `out`."""
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file() and (p.match(S.SHARD_GLOB) or p.name == S.MANIFEST_NAME)}


@pytest.fixture(scope="module")
def made(tmp_path_factory, tiny_model_dir):
    """An old cache (seed 0, with an eval split) and the new one an uninterrupted --overwrite makes
    of it (seed 1), made once at the same path; tests start from a copy of the old one."""
    root = tmp_path_factory.mktemp("aside")
    data = write_rows(root / "chat.jsonl", chat_rows())
    out = root / "c"
    old = precompute_args(data, tiny_model_dir, out, "--eval-fraction", "0.25", "--rows-per-shard", "2")
    assert run_cli(*old).exit_code == 0
    shutil.copytree(out, root / "old")
    result = run_cli(*old, "--seed", "1", "--overwrite")
    assert result.exit_code == 0, result.output
    assert not (out / NEXT).exists() and verified(out) and verified(out / S.EVAL_DIR)
    reference = cache_bytes(out)
    shutil.rmtree(out)
    return root, old, reference


@pytest.fixture
def old_cache(made):
    """--out holding the old cache (at the path the reference was made at), the old command, the
    new one, and the reference bytes of the new cache."""
    root, old, reference = made
    out = root / "c"
    shutil.rmtree(out, ignore_errors=True)
    shutil.copytree(root / "old", out)
    return out, old, [*old, "--seed", "1", "--overwrite"], reference


def kill_after_first_shard(monkeypatch, out: Path, seen: dict) -> None:
    """Score one shard of the new cache, check the old one as a kto-train would then, and die."""
    real = pipeline.score_and_write

    def one_then_kill(s, shard_ids, *args, **kwargs):
        real(s, shard_ids[:1], *args, **kwargs)
        assert s.out.is_relative_to(out / NEXT) and list((out / NEXT).rglob(S.SHARD_GLOB)), s.out
        seen["fingerprint"] = read_manifest(out).fingerprint
        cache = open_cache(out, stamps=False)  # as kto-train reads it: every shard, checked
        seen["opened"] = sum(cache.read_shard(k).num_rows for k in range(len(cache.manifest.shards)))
        seen["verified"] = verified(out) and verified(out / S.EVAL_DIR)
        seen["old"] = old_cache_bytes(out)
        raise Killed

    monkeypatch.setattr(pipeline, "score_and_write", one_then_kill)


def test_the_old_cache_stays_whole_while_the_new_one_is_scored_and_a_rerun_resumes(old_cache, monkeypatch):
    out, _, new, reference = old_cache
    before, fingerprint = old_cache_bytes(out), read_manifest(out).fingerprint
    seen: dict = {}
    with monkeypatch.context() as m:
        kill_after_first_shard(m, out, seen)
        killed = run_cli(*new)
    assert isinstance(killed.exception, Killed), killed.output
    # While it scored, and after the kill: the old cache opens and verifies, byte for byte as it was.
    assert seen["fingerprint"] == fingerprint and seen["opened"] > 0 and seen["verified"], seen
    assert seen["old"] == before and old_cache_bytes(out) == before
    assert read_manifest(out).fingerprint == fingerprint and verified(out)
    assert (out / NEXT / ".journal" / "run.json").is_file() and not (out / NEXT / S.MANIFEST_NAME).exists()
    # What a real kill in a shard's write leaves there: its temp names, cleared by the rerun.
    (out / NEXT / ".shard-00003.arrow.tmp-999-1").write_bytes(b"partial")
    (out / NEXT / ".journal" / ".shard-00003.arrow.json.tmp-999-1").write_bytes(b"{")
    resumed = run_cli(*new)
    assert resumed.exit_code == 0, resumed.output
    assert not (out / NEXT).exists()
    assert cache_bytes(out) == reference  # as an uninterrupted --overwrite made it
    assert read_manifest(out).fingerprint != fingerprint and verified(out) and verified(out / S.EVAL_DIR)


def test_a_rerun_without_overwrite_is_refused_and_changes_nothing(old_cache, monkeypatch):
    out, old, new, _ = old_cache
    with monkeypatch.context() as m:
        kill_after_first_shard(m, out, {})
        run_cli(*new)
    before = {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file() and p.name != ".lock"}
    for args in (old, new[:-1]):  # the old command, and the new one without the flag
        message = one_line_error(run_cli(*args))
        assert "unfinished --overwrite" in message and "pass --overwrite to finish it" in message and f"remove {out / NEXT}" in message, message
    after = {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file() and p.name != ".lock"}
    assert after == before and verified(out)


def test_bad_input_after_a_killed_overwrite_keeps_both_and_the_good_rerun_finishes(old_cache, monkeypatch):
    out, _, new, reference = old_cache
    with monkeypatch.context() as m:
        kill_after_first_shard(m, out, {})
        run_cli(*new)
    before = {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file() and p.name != ".lock"}
    rows = chat_rows()
    rows[-1]["label"] = "maybe"
    bad = write_rows(out.parent / "bad.jsonl", rows)
    message = one_line_error(run_cli(*[str(bad) if a == new[1] else a for a in new]))
    assert "maybe" in message, message
    after = {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file() and p.name != ".lock"}
    assert after == before and verified(out)
    assert run_cli(*new).exit_code == 0
    assert cache_bytes(out) == reference


def test_an_overwrite_of_a_third_configuration_replaces_the_unfinished_build(old_cache, monkeypatch):
    """A killed --overwrite, then an --overwrite of yet another configuration: the unfinished
    build in .next/ is ours (its journal proves it), removed, and the third one is built there."""
    out, old, new, _ = old_cache
    with monkeypatch.context() as m:
        kill_after_first_shard(m, out, {})
        run_cli(*new)
    third = run_cli(*old, "--seed", "2", "--overwrite")
    assert third.exit_code == 0, third.output
    assert not (out / NEXT).exists() and verified(out) and verified(out / S.EVAL_DIR)
    assert read_manifest(out).content.seed == 2


# The swap's renames, in order: eval/, shard-00000 … shard-00005, tokenizer/, the journal, the
# manifest (10), then `.next/` is removed.
@pytest.mark.parametrize("stop_at", [0, 1, 4, 7, 8, 9, 10])
def test_a_kill_during_the_swap_is_finished_by_the_same_command(old_cache, monkeypatch, stop_at):
    """Stop the swap at its `stop_at`-th rename (0: after the old cache was removed, before any
    rename; past the last one: before `.next/` itself is removed); the folder never reads as a
    finished cache of mixed shards, and the same command finishes the swap."""
    out, _, new, reference = old_cache
    moves = []
    real_move, real_rmdir = output._move, Path.rmdir

    def move(src, dst):
        if len(moves) == stop_at:
            raise Killed
        moves.append(src.name)
        real_move(src, dst)

    def rmdir(self):
        if self.name == NEXT:
            raise Killed
        real_rmdir(self)

    with monkeypatch.context() as m:
        m.setattr(output, "_move", move)
        m.setattr(Path, "rmdir", rmdir)
        killed = run_cli(*new)
    assert isinstance(killed.exception, Killed), killed.output
    if (out / S.MANIFEST_NAME).exists():  # what reads as a finished cache is one, whole
        assert verified(out)
    assert "unfinished --overwrite" in one_line_error(run_cli(*new[:-1]))
    finished = run_cli(*new)
    assert finished.exit_code == 0, finished.output
    assert not (out / NEXT).exists() and cache_bytes(out) == reference
    assert verified(out) and verified(out / S.EVAL_DIR) and (out / "README.md").is_file()


def test_a_kill_while_the_old_cache_is_removed_is_finished_by_the_same_command(old_cache, monkeypatch):
    out, _, new, reference = old_cache
    real = output._remove

    def remove_half(entries, keep=(".lock",)):
        if any(p.name == NEXT for p in entries):  # swap_in's removal of the old cache
            ordered = sorted(entries, key=lambda p: (p.name != S.MANIFEST_NAME, p.name == ".journal"))
            real(ordered[: len(ordered) // 2], keep)
            raise Killed
        real(entries, keep)

    with monkeypatch.context() as m:
        m.setattr(output, "_remove", remove_half)
        killed = run_cli(*new)
    assert isinstance(killed.exception, Killed), killed.output
    assert not (out / S.MANIFEST_NAME).exists()  # the manifest went first: never a finished cache with holes
    finished = run_cli(*new)
    assert finished.exit_code == 0, finished.output
    assert cache_bytes(out) == reference and verified(out)


@pytest.mark.parametrize("folder", [S.TOKENIZER_DIR, S.EVAL_DIR])
def test_a_kill_half_way_through_deleting_an_old_folder_is_finished_by_the_same_command(old_cache, monkeypatch, folder):
    """Found by a reviewer's real SIGKILL: an old eval/ emptied, or a tokenizer/ missing some of its
    files, was no longer provably ours (its manifest or the exact files the journal records), and
    every rerun refused it as the user's. Such a folder is now renamed aside first; the kill
    leaves `.NAME.deleted-PID`, which the next run clears."""
    out, _, new, reference = old_cache
    real = shutil.rmtree

    def rmtree_half(path, *args, **kwargs):
        path = Path(path)
        if path.name.startswith(f".{folder}.deleted-") or (path.name == folder and path.parent == out):
            next(p for p in sorted(path.rglob("*")) if p.is_file()).unlink()
            raise Killed
        real(path, *args, **kwargs)

    with monkeypatch.context() as m:
        m.setattr(output.shutil, "rmtree", rmtree_half)
        killed = run_cli(*new)
    assert isinstance(killed.exception, Killed), killed.output
    finished = run_cli(*new)
    assert finished.exit_code == 0, finished.output
    assert cache_bytes(out) == reference and verified(out)
    assert not [p.name for p in out.iterdir() if ".deleted-" in p.name]


@pytest.mark.parametrize("where", ["in-out", "in-next"])
def test_foreign_files_are_refused_and_kept_during_an_unfinished_overwrite(old_cache, monkeypatch, where):
    out, _, new, _ = old_cache
    with monkeypatch.context() as m:
        kill_after_first_shard(m, out, {})
        run_cli(*new)
    mine = (out if where == "in-out" else out / NEXT) / "notes.txt"
    mine.write_text("mine")
    message = one_line_error(run_cli(*new))
    assert "notes.txt" in message or NEXT in message, message
    assert mine.read_text() == "mine" and verified(out)


def test_a_users_own_next_folder_is_foreign(old_cache):
    """A `.next/` that no --overwrite of ours made is the user's: refused, never deleted."""
    out, _, new, _ = old_cache
    (out / NEXT).mkdir()
    (out / NEXT / "photo.jpg").write_bytes(b"\xff\xd8")
    message = one_line_error(run_cli(*new))
    assert f"{NEXT}/" in message and "did not write" in message, message
    assert (out / NEXT / "photo.jpg").read_bytes() == b"\xff\xd8" and verified(out)


def test_an_overwrite_that_adds_an_eval_split_swaps_it_in(tmp_path, tiny_model_dir):
    """The old cache has no eval/, the new one has: eval/ is built in .next/eval/ and renamed in."""
    data = write_rows(tmp_path / "chat.jsonl", chat_rows())
    out = tmp_path / "c"
    assert run_cli(*precompute_args(data, tiny_model_dir, out)).exit_code == 0
    result = run_cli(*precompute_args(data, tiny_model_dir, out, "--eval-fraction", "0.25", "--overwrite"))
    assert result.exit_code == 0, result.output
    assert not (out / NEXT).exists() and verified(out) and verified(out / S.EVAL_DIR)
    assert read_manifest(out / S.EVAL_DIR).content.split == "eval"
