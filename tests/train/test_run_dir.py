"""The run directory: one kto-train at a time, RUN/config.json and what a resume may change,
checkpoints (limit, corrupt fallback, permissions) and what a killed run leaves behind."""

import json
import os
import shutil
import stat
import subprocess
import sys
import time

import pytest
import torch
from conftest import metrics, train_error_line
from test_loop import ARGS, train_cli

RUN = ("--max-steps", "3", "--save-every", "1", "--beta", "0.2")


@pytest.fixture(scope="module")
def run3(tiny_cache, tiny_model_dir, tmp_path_factory):
    """3 steps, a checkpoint after steps 1 and 2, β = 0.2."""
    out = tmp_path_factory.mktemp("run") / "r"
    result = train_cli(tiny_cache, tiny_model_dir, out, *RUN)
    assert result.exit_code == 0, result.output
    return out


def test_a_second_kto_train_into_the_same_out_exits_2_naming_the_holder(tiny_cache, tiny_model_dir, tmp_path):
    """The first run is a process of its own; the second runs in this (pytest's) process."""
    out = tmp_path / "r"
    cmd = [sys.executable, "-m", "kto.train.cli", "--cache", str(tiny_cache), "--model", str(tiny_model_dir), "--out", str(out), *ARGS, "--max-steps", "100000"]
    first = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        deadline = time.monotonic() + 300
        while not ((out / "metrics.jsonl").is_file() and (out / "metrics.jsonl").stat().st_size):  # training: it holds the lock
            assert first.poll() is None and time.monotonic() < deadline, "the first run did not start"
            time.sleep(0.5)
        # --resume is the dangerous case: without a checkpoint yet, it used to train alongside.
        second = train_cli(tiny_cache, tiny_model_dir, out, "--max-steps", "2", "--resume")
        assert first.poll() is None  # the first run was not disturbed
    finally:
        first.kill()
        first.wait()
    assert second.exit_code == 2, second.output
    line = train_error_line(second.output)
    assert f"--out {out}: in use by another kto process (pid {first.pid})" in line


def test_the_run_records_its_resolved_configuration(run3, tiny_cache):
    from kto.formats.manifest import read_manifest

    record = json.loads((run3 / "config.json").read_text())
    assert record["config"]["beta"] == 0.2 and record["config"]["lr"] == 1e-3 and record["config"]["batch_size"] == 2
    assert record["derived"]["total_steps"] == 3 and record["derived"]["world_size"] == 1
    assert record["derived"]["cache_fingerprint"] == read_manifest(tiny_cache).fingerprint


def test_resume_with_other_hyperparameters_is_refused_naming_each(run3, tiny_cache, tiny_model_dir, tmp_path):
    out = tmp_path / "r"
    shutil.copytree(run3, out)
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir() if p.name != ".lock"}
    result = train_cli(
        tiny_cache, tiny_model_dir, out, "--max-steps", "3", "--save-every", "1", "--beta", "0.3", "--lr", "2e-3", "--kl-scope", "microbatch", "--resume"
    )
    assert result.exit_code == 2
    line = train_error_line(result.output)
    for diff in ("beta (0.2 there, 0.3 now)", "lr (0.001 there, 0.002 now)", "kl_scope (step there, microbatch now)"):
        assert diff in line, line
    assert "warmup_ratio" not in line  # only the differences
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir() if p.name != ".lock"} == before
    longer = train_cli(tiny_cache, tiny_model_dir, out, "--max-steps", "4", "--save-every", "1", "--beta", "0.2", "--resume")
    assert longer.exit_code == 2 and "total_steps (3 there, 4 now)" in train_error_line(longer.output)


def test_resume_without_a_run_record_is_refused(run3, tiny_cache, tiny_model_dir, tmp_path):
    out = tmp_path / "r"
    shutil.copytree(run3, out)
    (out / "config.json").unlink()
    result = train_cli(tiny_cache, tiny_model_dir, out, *RUN, "--resume")
    assert result.exit_code == 2 and "config.json is missing" in train_error_line(result.output)


def test_corrupt_latest_checkpoint_falls_back_and_stale_temp_files_are_cleaned(run3, tiny_cache, tiny_model_dir, tmp_path):
    """checkpoint-2's optimizer state is truncated: resume from checkpoint-1, say so, and still
    reproduce the uninterrupted run; leftovers of a killed run are removed; the limit applies."""
    from kto.train.checkpoint import checkpoint_problem, checkpoints

    out = tmp_path / "r"
    shutil.copytree(run3, out, ignore=shutil.ignore_patterns("final"))
    opt = out / "checkpoint-2" / "optimizer.pt"
    opt.write_bytes(opt.read_bytes()[:1000])
    (out / ".checkpoint-3.tmp-4242").mkdir()
    (out / ".checkpoint-3.tmp-4242" / "model.safetensors").write_bytes(b"half")
    (out / ".metrics.jsonl.tmp-4242").write_text("{")
    lines = (out / "metrics.jsonl").read_text().splitlines()
    (out / "metrics.jsonl").write_text("\n".join(lines[:2]) + "\n")  # killed after step 2
    result = train_cli(tiny_cache, tiny_model_dir, out, *RUN, "--save-total-limit", "1", "--resume")
    assert result.exit_code == 0, result.output
    assert "checkpoint-2 is corrupt (optimizer.pt: cannot be loaded" in result.output
    assert "fell back to checkpoint-1" in result.output and "resumed from" in result.output
    assert "changed --save-total-limit 0 -> 1" in result.output
    assert not (out / ".checkpoint-3.tmp-4242").exists() and not (out / ".metrics.jsonl.tmp-4242").exists()
    assert [p.name for _, p in checkpoints(out)] == ["checkpoint-2"]  # rebuilt at step 2; checkpoint-1 pruned
    assert (out / "checkpoint-2.corrupt").is_dir() and checkpoint_problem(out / "checkpoint-2") is None
    for a, b in zip(metrics(run3), metrics(out), strict=True):
        assert (a["step"], a["loss"], a["grad_norm"]) == (b["step"], b["loss"], b["grad_norm"])


def test_every_file_of_a_checkpoint_has_the_same_permissions(run3):
    mask = os.umask(0o022)
    os.umask(mask)
    for folder in (run3 / "checkpoint-1", run3 / "final"):
        modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in folder.iterdir()}
        assert set(modes.values()) == {0o666 & ~mask}, modes


@pytest.mark.parametrize(
    "damage, problem",
    [
        (lambda c: (c / "trainer_state.json").write_text("{"), "trainer_state.json unreadable"),
        (lambda c: (c / "model.safetensors").write_bytes((c / "model.safetensors").read_bytes()[:-1]), "model.safetensors: "),
        (lambda c: (c / "model.safetensors").unlink(), "no .safetensors weights"),
        (lambda c: (c / "rng.pt").unlink(), "rng.pt: cannot be loaded"),
        (lambda c: (c / "scheduler.pt").write_bytes(b"not a zip"), "scheduler.pt: cannot be loaded"),
    ],
)
def test_what_makes_a_checkpoint_corrupt(run3, tmp_path, damage, problem):
    from kto.train.checkpoint import checkpoint_problem

    ckpt = tmp_path / "checkpoint-1"
    shutil.copytree(run3 / "checkpoint-1", ckpt)
    assert checkpoint_problem(ckpt) is None
    damage(ckpt)
    assert problem in checkpoint_problem(ckpt)


def test_save_total_limit_keeps_the_newest(tmp_path):
    from kto.train.checkpoint import prune_checkpoints

    for step in (2, 10, 4, 8):
        (tmp_path / f"checkpoint-{step}").mkdir()
    (tmp_path / "checkpoint-7.corrupt").mkdir()
    removed = prune_checkpoints(tmp_path, 2)
    assert sorted(p.name for p in removed) == ["checkpoint-2", "checkpoint-4"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-10", "checkpoint-7.corrupt", "checkpoint-8"]
    assert prune_checkpoints(tmp_path, 0) == []


def test_a_checkpoint_killed_between_its_two_renames_is_restored(tmp_path):
    """atomic_dir renames the old copy aside, then the new one in: killed in between, the old one
    is the last complete version and comes back; a user's own dot-files are left alone."""
    from kto.train.rundir import clean_stale

    (tmp_path / ".checkpoint-4.old-99").mkdir()
    (tmp_path / ".checkpoint-4.old-99" / "trainer_state.json").write_text("{}")
    (tmp_path / ".checkpoint-4.tmp-99").mkdir()
    (tmp_path / ".final.old-12").mkdir()
    (tmp_path / "final").mkdir()
    (tmp_path / ".checkpoint-6.deleted-3").mkdir()
    (tmp_path / ".notes.tmp-1").write_text("mine")
    done = clean_stale(tmp_path)
    assert len(done) == 4
    assert (tmp_path / "checkpoint-4" / "trainer_state.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == [".notes.tmp-1", "checkpoint-4", "final"]


def test_inspect_score_reads_beta_from_the_run(run3, tiny_cache, tmp_path):
    from kto.inspection.score import score_cache

    result = score_cache(tiny_cache, str(run3 / "checkpoint-2"), tmp_path / "s.parquet", log=lambda m: None)
    assert result["beta"] == 0.2
    given = score_cache(tiny_cache, str(run3 / "final"), tmp_path / "t.parquet", beta=0.05, log=lambda m: None)
    assert given["beta"] == 0.05
    assert torch.isfinite(torch.tensor(result["desirable"]["mean_reward"]))


def test_a_killed_sharded_save_is_cleared_and_its_old_copy_restored(tmp_path):
    """FSDP checkpoints are written by every rank into one temp folder (no per-writer pid in its
    name); its names must still be the ones clean_stale recognises."""
    from kto.train.rundir import clean_stale
    from kto.train.sharding import shared_temp_names

    tmp, old = shared_temp_names(tmp_path / "checkpoint-8")
    tmp.mkdir()
    old.mkdir()
    (old / "trainer_state.json").write_text("{}")
    done = clean_stale(tmp_path)
    assert len(done) == 2 and any(tmp.name in line for line in done) and any(old.name in line for line in done)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-8"]
    assert (tmp_path / "checkpoint-8" / "trainer_state.json").is_file()
