"""The run directory: whose it is, one kto-train at a time, RUN/kto_run.json and what a resume
may change, checkpoints (checksums, limit, corrupt fallback, permissions) and what a killed run
leaves behind."""

import json
import os
import shutil
import socket
import stat
import subprocess
import sys
import time

import pytest
import torch
from conftest import crashed_copy, metrics, run_train, train_error_line
from test_loop import ARGS, train_cli

RUN = ("--max-steps", "3", "--save-every", "1", "--beta", "0.2")


def write_record(run_dir) -> None:
    """A run record, as kto-train writes it: what proves a directory a run of ours."""
    from kto.formats.runrecord import write_run_config

    write_run_config(run_dir, {}, {})


@pytest.fixture(scope="module")
def run3(tiny_cache, tiny_model_dir, tmp_path_factory):
    """3 steps, a checkpoint after steps 1, 2 and 3 (the last), β = 0.2."""
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
    assert f"--out {out}: in use by another kto process (pid {first.pid} on this host, {socket.gethostname()}, as its lock file records)" in line


def test_the_run_records_its_resolved_configuration(run3, tiny_cache):
    from kto.formats.manifest import read_manifest

    record = json.loads((run3 / "kto_run.json").read_text())
    assert record["config"]["beta"] == 0.2 and record["config"]["lr"] == 1e-3 and record["config"]["batch_size"] == 2
    assert record["derived"]["total_steps"] == 3 and record["derived"]["world_size"] == 1
    assert record["derived"]["cache_fingerprint"] == read_manifest(tiny_cache).fingerprint
    assert record["derived"]["steps_share_prefixes"] is True


def test_resume_with_other_hyperparameters_is_refused_naming_each(run3, tiny_cache, tiny_model_dir, tmp_path):
    out = tmp_path / "r"
    shutil.copytree(run3, out)
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir() if p.name != ".lock"}
    result = train_cli(
        tiny_cache,
        tiny_model_dir,
        out,
        "--max-steps",
        "3",
        "--save-every",
        "1",
        "--beta",
        "0.3",
        "--lr",
        "2e-3",
        "--kl-scope",
        "microbatch",
        "--no-prefix-sharing",
        "--resume",
    )
    assert result.exit_code == 2
    line = train_error_line(result.output)
    for diff in ("beta (0.2 there, 0.3 now)", "lr (0.001 there, 0.002 now)", "kl_scope (step there, microbatch now)", "prefix_sharing (True there, False now)"):
        assert diff in line, line
    assert "warmup_ratio" not in line  # only the differences
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir() if p.name != ".lock"} == before
    longer = train_cli(tiny_cache, tiny_model_dir, out, "--max-steps", "4", "--save-every", "1", "--beta", "0.2", "--resume")
    assert longer.exit_code == 2 and "total_steps (3 there, 4 now)" in train_error_line(longer.output)


def test_lora_targets_are_compared_as_a_set_of_names():
    """The same targets in another order, with spaces, or the default (null) against the default's
    list written out are no difference; another set is, shown as written. Without the model's
    layers (default_targets None), null against a list stays a difference."""
    from kto.train.resume_record import record_differences

    def rec(targets):
        return {"config": {"lora_target_modules": targets}, "derived": {}}

    every = ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"]
    for now in ("v_proj,q_proj", "q_proj, v_proj", " v_proj ,q_proj,"):
        assert record_differences(rec("q_proj,v_proj"), rec(now)) == []
    assert record_differences(rec("q_proj,v_proj"), rec("q_proj")) == ["lora_target_modules (q_proj,v_proj there, q_proj now)"]
    assert record_differences(rec(None), rec(", ".join(reversed(every))), default_targets=lambda: every) == []
    assert record_differences(rec("q_proj,v_proj,k_proj,o_proj,gate_proj,up_proj,down_proj"), rec(None), default_targets=lambda: every) == []
    assert record_differences(rec(None), rec("q_proj,v_proj"), default_targets=lambda: every) == ["lora_target_modules (None there, q_proj,v_proj now)"]
    assert record_differences(rec(None), rec(",".join(every))) == [f"lora_target_modules (None there, {','.join(every)} now)"]
    assert record_differences(rec("all-linear"), rec(None)) == []  # (normalized on input; a record could still hold it)


def test_gradient_checkpointing_may_change_on_resume_unless_dropout_acts():
    """--gradient-checkpointing runs the policy pass plain: the same maths, except that with
    --keep-dropout a shared pass drew one dropout mask per prompt and a plain one draws one per
    row (a resume that toggled it differed from step 7 on by 3e-4 in the loss)."""
    from kto.train.resume_record import record_differences

    def rec(checkpointing, keep_dropout, sharing=True):
        return {"config": {"gradient_checkpointing": checkpointing, "keep_dropout": keep_dropout, "prefix_sharing": sharing}, "derived": {}}

    assert record_differences(rec(False, False), rec(True, False)) == []
    assert record_differences(rec(False, True, sharing=False), rec(True, True, sharing=False)) == []
    assert record_differences(rec(True, True), rec(True, True)) == []
    assert record_differences(rec(False, True), rec(True, True)) == [
        "gradient_checkpointing (False there, True now: with --keep-dropout it changes the dropout masks drawn)"
    ]
    unpacked = {**rec(True, True), "derived": {"steps_share_prefixes": False}}  # --model's layers allow no packing
    assert record_differences(rec(False, True), unpacked) == []


def test_a_run_recorded_before_its_reference_identity_resumes_with_its_checkpoints():
    """derived.reference_identity (the cache's model, for --eval-only and score) is decided by the
    cache's fingerprint, which a resume compares: a record without it (an earlier release) and
    one with it differ in nothing a resume checks, and its checkpoints' settings digest matches."""
    from kto.train.resume_record import record_differences, settings_digest

    before = {"config": {"beta": 0.1}, "derived": {"cache_fingerprint": "a" * 64, "model_identity": {"config": "c", "weights": {}}}}
    now = {**before, "derived": {**before["derived"], "reference_identity": {"config": "r", "weights": {}}}}
    assert record_differences(before, now) == []
    assert settings_digest(before) == settings_digest(now)
    assert settings_digest(before) != settings_digest({**before, "derived": {**before["derived"], "cache_fingerprint": "b" * 64}})


def test_resume_on_a_rebuilt_cache_says_so_in_words(run3, tiny_cache, tiny_model_dir, tmp_path):
    """A cache rebuilt in place (kto-precompute --overwrite) differs by its fingerprint alone:
    the line says the cache is not the one the run began on, not only two hashes."""
    out, cache = tmp_path / "r", tmp_path / "cache"
    shutil.copytree(run3, out)
    shutil.copytree(tiny_cache, cache)
    record = json.loads((out / "kto_run.json").read_text())
    record["derived"]["cache_fingerprint"] = "0" * 64  # as the run began on the cache before its rebuild
    (out / "kto_run.json").write_text(json.dumps(record))
    result = train_cli(cache, tiny_model_dir, out, "--max-steps", "3", "--save-every", "1", "--beta", "0.2", "--resume")
    line = train_error_line(result.output)
    assert result.exit_code == 2 and line.startswith(f"kto-train: error: --resume: {out} was trained with other settings: cache_fingerprint (0000"), line
    assert line.endswith("; the cache is not the one the run began on (rebuilt or replaced since): a run resumes only on its own cache"), line


def test_resume_without_a_run_record_is_refused(run3, tiny_cache, tiny_model_dir, tmp_path):
    out = tmp_path / "r"
    shutil.copytree(run3, out)
    (out / "kto_run.json").unlink()
    result = train_cli(tiny_cache, tiny_model_dir, out, *RUN, "--resume")
    assert result.exit_code == 2 and "holds checkpoint-1/, which kto-train did not write" in train_error_line(result.output)
    # Only the record proves the rest ours: without it, nothing in the directory is touched.
    assert (out / "final").is_dir() and (out / "checkpoint-2").is_dir()


def test_corrupt_latest_checkpoint_falls_back_and_stale_temp_files_are_cleaned(run3, tiny_cache, tiny_model_dir, tmp_path):
    """Killed after step 2, checkpoint-2's optimizer state is truncated: resume from checkpoint-1,
    say so, and still reproduce the uninterrupted run; leftovers of a killed run are removed; the
    limit applies."""
    from kto.train.checkpoint import checkpoint_problem, checkpoints

    out = tmp_path / "r"
    shutil.copytree(run3, out, ignore=shutil.ignore_patterns("final", "checkpoint-3"))
    opt = out / "checkpoint-2" / "optimizer.pt"
    opt.write_bytes(opt.read_bytes()[:1000])
    (out / ".checkpoint-3.tmp-4242-1").mkdir()
    (out / ".checkpoint-3.tmp-4242-1" / "model.safetensors").write_bytes(b"half")
    (out / ".metrics.jsonl.tmp-4242-1").write_text("{")
    (out / "checkpoint-2.corrupt").mkdir()  # set aside by an earlier fallback: kept, not replaced
    (out / "checkpoint-2.corrupt" / "model.safetensors").write_bytes(b"earlier")
    lines = (out / "metrics.jsonl").read_text().splitlines()
    (out / "metrics.jsonl").write_text("\n".join(lines[:2]) + "\n")  # killed after step 2
    result = train_cli(tiny_cache, tiny_model_dir, out, *RUN, "--save-total-limit", "1", "--resume")
    assert result.exit_code == 0, result.output
    assert "checkpoint-2 is corrupt (optimizer.pt: sha256 " in result.output
    assert "fell back to checkpoint-1" in result.output and "resumed from" in result.output
    assert "changed --save-total-limit 0 -> 1" in result.output
    assert not (out / ".checkpoint-3.tmp-4242-1").exists() and not (out / ".metrics.jsonl.tmp-4242-1").exists()
    assert [p.name for _, p in checkpoints(out)] == ["checkpoint-3"]  # rebuilt at steps 2 and 3; all but the last pruned
    assert (out / "checkpoint-2.corrupt" / "model.safetensors").read_bytes() == b"earlier"
    assert (out / "checkpoint-2.corrupt.1" / "optimizer.pt").stat().st_size == 1000 and checkpoint_problem(out / "checkpoint-3") is None
    for a, b in zip(metrics(run3), metrics(out), strict=True):
        assert (a["step"], a["loss"], a["grad_norm"]) == (b["step"], b["loss"], b["grad_norm"])


def test_every_file_of_a_checkpoint_has_the_same_permissions(run3):
    mask = os.umask(0o022)
    os.umask(mask)
    for folder in (run3 / "checkpoint-1", run3 / "final"):
        modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in folder.iterdir()}
        assert set(modes.values()) == {0o666 & ~mask}, modes


@pytest.mark.parametrize(
    "damage, file, problem",
    [
        (lambda c: (c / "trainer_state.json").write_text("{"), "trainer_state.json", "trainer_state.json unreadable"),
        (lambda c: (c / "model.safetensors").write_bytes((c / "model.safetensors").read_bytes()[:-1]), "model.safetensors", "model.safetensors: "),
        (lambda c: (c / "model.safetensors").unlink(), "model.safetensors", "no .safetensors weights"),
        (lambda c: (c / "rng.pt").unlink(), "rng.pt", "rng.pt: cannot be loaded"),
        (lambda c: (c / "scheduler.pt").write_bytes(b"not a zip"), "scheduler.pt", "scheduler.pt: cannot be loaded"),
    ],
)
def test_what_makes_a_checkpoint_corrupt(run3, tmp_path, damage, file, problem):
    """Each damage is caught by its checksum first; with the record rewritten to match (a forged
    record), the file's own check still catches it."""
    from kto.train.checkpoint import checkpoint_problem, record_checksums

    ckpt = tmp_path / "checkpoint-1"
    shutil.copytree(run3 / "checkpoint-1", ckpt)
    assert checkpoint_problem(ckpt) is None
    damage(ckpt)
    assert checkpoint_problem(ckpt).startswith(f"{file}: "), checkpoint_problem(ckpt)
    record_checksums(ckpt)
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

    write_record(tmp_path)
    (tmp_path / ".checkpoint-4.old-99").mkdir()
    (tmp_path / ".checkpoint-4.old-99" / "trainer_state.json").write_text("{}")
    (tmp_path / ".checkpoint-4.tmp-99-1").mkdir()
    (tmp_path / ".final.old-12").mkdir()
    (tmp_path / "final").mkdir()
    (tmp_path / ".checkpoint-6.deleted-3").mkdir()
    (tmp_path / ".notes.tmp-1").write_text("mine")
    (tmp_path / ".final.deleted-1").mkdir()  # final/ is never renamed aside to be deleted: not ours
    done = clean_stale(tmp_path)
    assert len(done) == 4
    assert (tmp_path / "checkpoint-4" / "trainer_state.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == [".final.deleted-1", ".notes.tmp-1", "checkpoint-4", "final", "kto_run.json"]


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

    write_record(tmp_path)
    tmp, old = shared_temp_names(tmp_path / "checkpoint-8")
    tmp.mkdir()
    old.mkdir()
    (old / "trainer_state.json").write_text("{}")
    done = clean_stale(tmp_path)
    assert len(done) == 2 and any(tmp.name in line for line in done) and any(old.name in line for line in done)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-8", "kto_run.json"]
    assert (tmp_path / "checkpoint-8" / "trainer_state.json").is_file()


# ---- issue 19: never write over what is not ours -------------------------------------------------


def _listing(folder):
    return {str(p.relative_to(folder)): (p.read_bytes() if p.is_file() else None) for p in sorted(folder.rglob("*"))}


@pytest.mark.parametrize("what", ["the model", "a users config", "the cache"])
def test_out_that_holds_what_kto_train_did_not_write_is_refused_untouched(tiny_cache, tiny_model_dir, tmp_path, what):
    """Issue 19 items 2-4: --out = --model overwrote the model's config.json with the run record
    (the model no longer loaded); a folder with a user's own config.json lost it; --out = --cache
    wrote run files into the cache. All exit 0. Now one line names the first foreign entry, and
    not a byte changes (no lock file either)."""
    if what == "the model":
        out = shutil.copytree(tiny_model_dir, tmp_path / "model")
        model = out
    elif what == "a users config":
        out = tmp_path / "mine"
        out.mkdir()
        (out / "config.json").write_text('{"my": "settings"}')
        model = tiny_model_dir
    else:
        out = shutil.copytree(tiny_cache, tmp_path / "cache")
        (out / ".tokenizer-checked.json").unlink(missing_ok=True)  # as before any run on it: the check writes one
        model = tiny_model_dir
    first = sorted(p.name for p in out.iterdir())[0]  # the one named
    before = _listing(out)
    result = run_train(tiny_cache if what != "the cache" else out, model, out, *ARGS, "--max-steps", "1")
    line = train_error_line(result.output)
    assert result.exit_code == 2 and f"--out {out}: holds {first}" in line and "which kto-train did not write" in line, line
    assert _listing(out) == before


@pytest.mark.parametrize("sub", ["run", "eval/run", ".journal/run", "tokenizer/run"])
def test_out_inside_a_cache_is_refused(tiny_cache, tiny_model_dir, tmp_path, sub):
    """Seen in an attack: --out CACHE/eval/run (or .journal/, tokenizer/, a new folder) trained and
    saved weights into the cache, which kto-precompute then refused as another's data."""
    cache = shutil.copytree(tiny_cache, tmp_path / "cache")
    (cache / ".journal").mkdir(exist_ok=True)
    # As before any run on it (in the whole suite an earlier test may have left the tokenizer
    # check's memo; alone, the refused run wrote it, found once in 7 runs of CI's order).
    (cache / ".tokenizer-checked.json").unlink(missing_ok=True)
    before = _listing(cache)
    result = run_train(cache, tiny_model_dir, cache / sub, *ARGS, "--max-steps", "1")
    line = train_error_line(result.output)
    assert result.exit_code == 2 and f"--out {cache / sub}: inside the kto-precompute cache {cache}" in line, line
    assert _listing(cache) == before


@pytest.mark.parametrize("sub", ["sub", "final/sub", "checkpoint-2/sub"])
def test_out_inside_a_run_is_refused(run3, tiny_cache, tiny_model_dir, tmp_path, sub):
    """Seen in an attack: --out RUN/checkpoint-2 (or RUN/sub, RUN/final/sub) trained a run inside
    another run, whose next --resume deleted it with the checkpoint or final/ it sat in."""
    run = shutil.copytree(run3, tmp_path / "r")
    before = _listing(run)
    result = train_cli(tiny_cache, tiny_model_dir, run / sub, *RUN)
    line = train_error_line(result.output)
    assert result.exit_code == 2 and f"--out {run / sub}: inside the kto-train run {run}" in line, line
    assert _listing(run) == before


@pytest.mark.parametrize("name", ["final", "checkpoint-9"])
def test_a_final_or_checkpoint_folder_kto_train_did_not_save_is_refused_untouched(run3, tiny_cache, tiny_model_dir, tmp_path, name):
    """Seen in an attack: a user's RUN/final/notes.txt (or RUN/checkpoint-9/) passed as ours by
    its name alone, and --resume replaced final/ (or set checkpoint-9 aside as corrupt): the
    notes were gone. Ours are told by what kto-train saves in them: the model card, the state."""
    run = shutil.copytree(run3, tmp_path / "r")
    record = json.loads((run / "kto_run.json").read_text())
    record.pop("finished_step")  # as if stopped before its end: --resume would write final/
    (run / "kto_run.json").write_text(json.dumps(record))
    shutil.rmtree(run / "final")
    (run / name).mkdir()
    (run / name / "notes.txt").write_text("mine\n")
    before = _listing(run)
    result = train_cli(tiny_cache, tiny_model_dir, run, *RUN, "--resume")
    line = train_error_line(result.output)
    assert result.exit_code == 2 and f"holds {name}/, which kto-train did not write" in line, line
    assert _listing(run) == before


def test_a_final_whose_model_card_was_edited_is_still_the_runs(run3, tiny_cache, tiny_model_dir, tmp_path):
    """Editing final/README.md before a push is usual; --resume then refused the run as not its own."""
    run = shutil.copytree(run3, tmp_path / "r")
    (run / "final" / "README.md").write_text("# My model\n")
    again = train_cli(tiny_cache, tiny_model_dir, run, *RUN, "--resume")
    assert again.exit_code == 0 and "nothing to do" in again.output, again.output


def test_a_lock_that_is_a_symlink_is_refused_and_its_target_untouched(run3, tiny_cache, tiny_model_dir, tmp_path):
    """Issue 19 item 5: kto-train followed a `.lock` symlink and wrote its pid into the target."""
    out = shutil.copytree(run3, tmp_path / "r")
    precious = tmp_path / "precious.txt"
    precious.write_text("my thesis\n")
    (out / ".lock").unlink()
    (out / ".lock").symlink_to(precious)
    result = train_cli(tiny_cache, tiny_model_dir, out, *RUN, "--resume")
    assert result.exit_code == 2 and ".lock" in train_error_line(result.output)
    assert precious.read_text() == "my thesis\n"


def test_resume_with_nothing_to_resume_from_is_refused(run3, tiny_cache, tiny_model_dir, tmp_path):
    """Issue 19 item 6: `--resume --beta 0.5` on a finished run that saved no checkpoint retrained
    from scratch and replaced final/ and the record, exit 0. The record is compared whatever
    exists; with nothing to resume from, nothing is changed."""
    out = shutil.copytree(run3, tmp_path / "r", ignore=shutil.ignore_patterns("checkpoint-*"))
    before = _listing(out)
    other = train_cli(tiny_cache, tiny_model_dir, out, "--max-steps", "3", "--beta", "0.5", "--resume")
    assert other.exit_code == 2 and "beta (0.2 there, 0.5 now)" in train_error_line(other.output)
    # The run finished, so there is nothing to resume (next test); as if killed before its end:
    record = json.loads((out / "kto_run.json").read_text())
    assert record.pop("finished_step") == 3
    (out / "kto_run.json").write_text(json.dumps(record))
    before = _listing(out)
    same = train_cli(tiny_cache, tiny_model_dir, out, *RUN, "--resume")
    assert same.exit_code == 2 and "holds no checkpoint to resume from" in train_error_line(same.output)
    assert _listing(out) == before
    empty = train_cli(tiny_cache, tiny_model_dir, tmp_path / "new", *RUN, "--resume")
    assert empty.exit_code == 2 and "holds no run to resume" in train_error_line(empty.output)
    assert not (tmp_path / "new").exists()


def test_a_run_killed_while_writing_its_first_record_starts_when_run_again(tiny_cache, tiny_model_dir, tmp_path):
    """Killed inside write_json_atomic of its first kto_run.json: the lock file and the record's
    temp file were all there was, and every later start was refused ("holds .kto_run.json.tmp-…,
    which kto-train did not write") until the user deleted it by hand. A user's own file beside
    them is still refused."""
    out = tmp_path / "r"
    out.mkdir()
    (out / ".lock").write_text("")
    (out / ".kto_run.json.tmp-999999-1").write_text('{"half": ')
    result = train_cli(tiny_cache, tiny_model_dir, out, "--max-steps", "1")
    assert result.exit_code == 0, result.output
    assert not (out / ".kto_run.json.tmp-999999-1").exists() and (out / "kto_run.json").is_file()
    other = tmp_path / "o"
    other.mkdir()
    (other / ".kto_run.json.tmp-999999-1").write_text("{}")
    (other / "notes.txt").write_text("mine\n")
    refused = train_cli(tiny_cache, tiny_model_dir, other, "--max-steps", "1")
    assert refused.exit_code == 2 and "holds notes.txt, which kto-train did not write" in train_error_line(refused.output)


def test_a_run_killed_before_its_first_checkpoint_starts_over_when_run_again(run3, tiny_cache, tiny_model_dir, tmp_path):
    """Seen in a review: a run killed (or out of disk at final/) before any checkpoint could be
    neither resumed ("holds no checkpoint") nor run again ("holds an earlier run") without
    deleting it by hand; transformers' Trainer simply starts again. Its metrics are kept aside.
    A run holding a checkpoint or a final model is still refused."""
    out = shutil.copytree(run3, tmp_path / "r", ignore=shutil.ignore_patterns("checkpoint-*", "final"))
    killed = (out / "metrics.jsonl").read_bytes()
    resumed = train_cli(tiny_cache, tiny_model_dir, out, *RUN, "--resume")
    assert resumed.exit_code == 2 and "run the command without --resume to start it over" in train_error_line(resumed.output)
    again = train_cli(tiny_cache, tiny_model_dir, out, "--max-steps", "2", "--beta", "0.3")
    assert again.exit_code == 0, again.output
    assert "its earlier run saved no checkpoint and no final model; starting over (its metrics moved to metrics.jsonl.superseded)" in again.output
    assert (out / "metrics.jsonl.superseded").read_bytes() == killed
    assert [m["step"] for m in metrics(out)] == [1, 2] and (out / "final").is_dir()
    assert "holds an earlier run" in train_error_line(train_cli(tiny_cache, tiny_model_dir, out, *RUN).output)  # final/ now


def test_resume_of_a_finished_run_has_nothing_to_do(run3, tiny_cache, tiny_model_dir, tmp_path):
    """HF's Trainer saves a checkpoint at the last step, so resuming a finished run trains 0
    steps. kto-train writes final/ there instead; a plain --resume of a finished run used to
    start again from its last checkpoint, redo the steps after it and replace final/. It now
    says there is nothing to do, exit 0, and changes no file. --resume PATH still continues from
    that checkpoint, as asked."""
    out = shutil.copytree(run3, tmp_path / "r")
    before = _listing(out)
    weights = (out / "final" / "model.safetensors").read_bytes()
    again = train_cli(tiny_cache, tiny_model_dir, out, *RUN, "--resume")
    assert again.exit_code == 0, again.output
    assert "finished all 3 steps (final/ holds step 3); nothing to do" in again.output
    assert _listing(out) == before and (out / "final" / "model.safetensors").read_bytes() == weights
    other = train_cli(tiny_cache, tiny_model_dir, out, "--max-steps", "3", "--save-every", "1", "--beta", "0.5", "--resume")
    assert other.exit_code == 2 and "beta (0.2 there, 0.5 now)" in train_error_line(other.output)
    # Another --save-every changes no step of a finished run: still nothing to do (only
    # --merge-adapters and --push-to-hub ask it for work, train/resume_record.py AFTER_FINAL).
    changed = train_cli(tiny_cache, tiny_model_dir, out, "--max-steps", "3", "--save-every", "3", "--beta", "0.2", "--resume")
    assert changed.exit_code == 0 and "nothing to do" in changed.output and _listing(out) == before, changed.output
    explicit = train_cli(tiny_cache, tiny_model_dir, out, *RUN, "--resume", str(out / "checkpoint-2"))
    assert explicit.exit_code == 0 and "resumed from" in explicit.output, explicit.output
    assert json.loads((out / "kto_run.json").read_text())["finished_step"] == 3


def test_a_run_recorded_as_config_json_still_resumes_and_moves_its_record(run3, tiny_cache, tiny_model_dir, tmp_path):
    """Runs made before the record's rename: a config.json that is provably our record is read
    (and moved to kto_run.json); one that is not (a model's) proves nothing."""
    from kto.formats.runrecord import read_run_config

    out = crashed_copy(run3, tmp_path / "r", 2, metrics_lines=2)
    (out / "kto_run.json").rename(out / "config.json")
    assert read_run_config(out)["config"]["beta"] == 0.2
    result = train_cli(tiny_cache, tiny_model_dir, out, *RUN, "--resume")
    assert result.exit_code == 0, result.output
    assert (out / "kto_run.json").is_file() and not (out / "config.json").exists()
    for a, b in zip(metrics(run3), metrics(out), strict=True):
        assert (a["step"], a["loss"]) == (b["step"], b["loss"])


def _flip_finite_weight(ckpt, to_inf: bool) -> None:
    """Change one float of model.safetensors in place: its lowest mantissa bit (still finite, the
    silent kind), or the whole value to +inf."""
    import struct

    path = ckpt / "model.safetensors"
    data = bytearray(path.read_bytes())
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    key = next(k for k, t in header.items() if k != "__metadata__" and t["dtype"] == "F32")
    start = 8 + n + header[key]["data_offsets"][0]
    if to_inf:
        data[start : start + 4] = struct.pack("<f", float("inf"))
    else:
        data[start] ^= 0x01
        assert torch.isfinite(torch.tensor(struct.unpack("<f", data[start : start + 4])[0]))
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", ["finite bit flip", "+inf with its checksum forged"])
def test_a_damaged_checkpoint_weight_falls_back_to_the_previous_checkpoint(run3, tiny_cache, tiny_model_dir, tmp_path, damage):
    """Issue 19 item 7: a finite bit flip in checkpoint-2's weights resumed silently into final/;
    a weight at +inf was not caught at resume and the run later named checkpoint-2 its "last good"
    checkpoint. Checksums catch the flip, the finite check on load the forged +inf; both fall back
    to checkpoint-1, say which file failed, and the run reproduces the uninterrupted one."""
    from kto.train.checkpoint import record_checksums

    out = crashed_copy(run3, tmp_path / "r", 2, metrics_lines=2)
    shutil.copytree(run3 / "checkpoint-1", out / "checkpoint-1")
    _flip_finite_weight(out / "checkpoint-2", to_inf=damage.startswith("+inf"))
    if damage.startswith("+inf"):
        record_checksums(out / "checkpoint-2")
    result = train_cli(tiny_cache, tiny_model_dir, out, *RUN, "--resume")
    assert result.exit_code == 0, result.output
    why = "model.safetensors: sha256 " if damage == "finite bit flip" else "holds non-finite values"
    assert "checkpoint-2 is corrupt (" in result.output and why in result.output and "fell back to checkpoint-1" in result.output, result.output
    for a, b in zip(metrics(run3), metrics(out), strict=True):
        assert (a["step"], a["loss"], a["grad_norm"]) == (b["step"], b["loss"], b["grad_norm"])


def test_every_checkpoint_records_the_sha256_of_each_of_its_files(run3):
    from kto.formats.shards import sha256_file

    record = json.loads((run3 / "checkpoint-2" / "checksums.json").read_text())
    names = {str(p.relative_to(run3 / "checkpoint-2")) for p in (run3 / "checkpoint-2").rglob("*") if p.is_file()} - {"checksums.json"}
    assert set(record["files"]) == names and {"model.safetensors", "optimizer.pt", "scheduler.pt", "rng.pt", "trainer_state.json"} <= names
    assert all(record["files"][n] == sha256_file(run3 / "checkpoint-2" / n) for n in names)


def _dev_full_is_a_device() -> bool:
    try:
        return stat.S_ISCHR(os.stat("/dev/full").st_mode)
    except OSError:
        return False


def _dev_full_torch_save(monkeypatch, from_step: int = 1):
    """Every .pt file a checkpoint writes (from checkpoint-`from_step` on) goes to /dev/full,
    where each write fails with ENOSPC: torch.save given a path (torch's own C++ file writer)
    writes there instead, and a .pt file that kto.train.checkpoint opens is /dev/full. /dev/full
    is opened without O_CREAT, checked to be the device each time: never a file of that name."""
    import builtins
    import re

    from kto.train import checkpoint

    real = torch.save

    def full(path) -> bool:
        step = re.search(r"checkpoint-(\d+)", str(path))
        return step is not None and int(step.group(1)) >= from_step

    def save(obj, f, *args, **kwargs):
        if isinstance(f, (str, os.PathLike)) and full(f):
            assert _dev_full_is_a_device()
            f = "/dev/full"
        return real(obj, f, *args, **kwargs)

    def open_full(path, mode="r", *args, **kwargs):
        if str(path).endswith(".pt") and "w" in mode and full(path):
            assert _dev_full_is_a_device()
            return os.fdopen(os.open("/dev/full", os.O_WRONLY), mode)
        return builtins.open(path, mode, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)
    monkeypatch.setattr(checkpoint, "open", open_full, raising=False)


@pytest.mark.skipif(not _dev_full_is_a_device(), reason="needs the /dev/full device")
def test_disk_full_at_a_checkpoint_is_one_line(tiny_cache, tiny_model_dir, tmp_path, monkeypatch):
    """Issue 19 item 12: torch.save to a path on a full disk raised `RuntimeError [enforce fail
    at inline_container.cc:672] unexpected pos`, a traceback."""
    _dev_full_torch_save(monkeypatch)
    out = tmp_path / "r"
    result = train_cli(tiny_cache, tiny_model_dir, out, "--max-steps", "2", "--save-every", "1")
    line = train_error_line(result.output)
    assert result.exit_code == 2 and line.endswith(f"{out / 'checkpoint-1'}: no space left on device; free some space and run the command again"), line
    assert not [p.name for p in out.iterdir() if p.name.startswith(".checkpoint")]


@pytest.mark.skipif(not _dev_full_is_a_device(), reason="needs the /dev/full device")
def test_disk_full_after_a_checkpoint_says_to_resume(tiny_cache, tiny_model_dir, tmp_path, monkeypatch):
    """Seen in a review: "free some space and run the command again", run again as it was, was
    refused as an earlier run. A run holding a checkpoint goes on with --resume, and does."""
    _dev_full_torch_save(monkeypatch, from_step=2)
    out = tmp_path / "r"
    result = train_cli(tiny_cache, tiny_model_dir, out, "--max-steps", "3", "--save-every", "1")
    line = train_error_line(result.output)
    assert result.exit_code == 2, result.output
    assert line.endswith(
        f"{out / 'checkpoint-2'}: no space left on device; free some space and continue with --resume (from checkpoint-1 or an earlier checkpoint)"
    ), line
    monkeypatch.undo()
    resumed = train_cli(tiny_cache, tiny_model_dir, out, "--max-steps", "3", "--save-every", "1", "--resume")
    assert resumed.exit_code == 0 and "resumed from" in resumed.output, resumed.output


def test_a_file_size_limit_after_a_checkpoint_says_to_resume(tiny_cache, tiny_model_dir, tmp_path, monkeypatch):
    """As a full disk: EFBIG (`ulimit -f`, which batch systems pass to their jobs) at
    checkpoint-2 of a run that saved checkpoint-1 says to go on with --resume, not to run the
    command again (which would be refused as an earlier run)."""
    import builtins
    import errno
    import re

    from kto.train import checkpoint

    def open_limited(path, mode="r", *args, **kwargs):
        step = re.search(r"checkpoint-(\d+)", str(path))
        if "w" in mode and step is not None and int(step.group(1)) >= 2:
            raise OSError(errno.EFBIG, "File too large", str(path))
        return builtins.open(path, mode, *args, **kwargs)

    monkeypatch.setattr(checkpoint, "open", open_limited, raising=False)
    out = tmp_path / "r"
    result = train_cli(tiny_cache, tiny_model_dir, out, "--max-steps", "3", "--save-every", "1")
    line = train_error_line(result.output)
    assert result.exit_code == 2, result.output
    assert "file too large" in line and line.endswith("continue with --resume (from checkpoint-1 or an earlier checkpoint)"), line


def test_resume_from_an_earlier_checkpoint_sets_the_later_ones_aside_only_once_it_resumes(run3, tiny_cache, tiny_model_dir, tmp_path, monkeypatch):
    """--resume RUN/checkpoint-1 renames checkpoint-2 and -3 `.superseded` (a later plain --resume
    must not pick the abandoned continuation). That happened before the checkpoint was loaded, so
    a resume refused afterwards (an FSDP checkpoint without --fsdp, say) had already moved them."""
    from kto.formats.errors import InputError
    from kto.train import policy

    out = tmp_path / "r"
    shutil.copytree(run3, out)
    names = lambda: sorted(p.name for p in out.iterdir() if p.name.startswith("checkpoint-"))

    def refused(*args, **kwargs):
        raise InputError("--resume: refused after the run directory was opened")

    with monkeypatch.context() as patched:
        patched.setattr(policy.Policy, "build", refused)
        result = train_cli(tiny_cache, tiny_model_dir, out, *RUN, "--resume", str(out / "checkpoint-1"))
        assert result.exit_code == 2 and "refused after the run directory was opened" in train_error_line(result.output)
    assert names() == ["checkpoint-1", "checkpoint-2", "checkpoint-3"]  # nothing moved
    result = train_cli(tiny_cache, tiny_model_dir, out, *RUN, "--resume", str(out / "checkpoint-1"))
    assert result.exit_code == 0, result.output
    # steps 2 and 3 saved again by the continuation
    assert names() == ["checkpoint-1", "checkpoint-2", "checkpoint-2.superseded", "checkpoint-3", "checkpoint-3.superseded"]


def test_a_run_recorded_before_the_identity_gained_a_key_resumes(tiny_cache, tiny_model_dir, tmp_path, monkeypatch):
    """A run started before the model identity held each weight file's sha256: its record and
    its checkpoints' settings digest hash the identity without it. The resume finds the same
    model (same_model) and keeps the recorded identity, so the digest is the checkpoints' own.
    Before, every such run was refused ("written by a run of other settings")."""
    import kto.train.setup as setup_module

    real = setup_module.model_identity

    def as_before(source):
        identity = real(source)
        return {**identity, "weights": {n: {k: v for k, v in w.items() if k != "sha256"} for n, w in identity["weights"].items()}}

    args = ("--batch-size", "4", "--max-steps", "3", "--save-every", "1", "--lr", "1e-3")
    with monkeypatch.context() as m:
        m.setattr(setup_module, "model_identity", as_before)
        assert run_train(tiny_cache, tiny_model_dir, tmp_path / "r", *args).exit_code == 0
        assert run_train(tiny_cache, tiny_model_dir, tmp_path / "straight", *args).exit_code == 0
    shutil.rmtree(tmp_path / "r" / "checkpoint-3")
    shutil.rmtree(tmp_path / "r" / "final")
    result = run_train(tiny_cache, tiny_model_dir, tmp_path / "r", *args, "--resume")
    assert result.exit_code == 0, result.output
    key = lambda lines: [(m["step"], m["loss"], m["grad_norm"]) for m in lines]
    assert key(metrics(tmp_path / "r")) == key(metrics(tmp_path / "straight"))
    recorded = json.loads((tmp_path / "r" / "kto_run.json").read_text())["derived"]["model_identity"]
    assert all("sha256" not in w for w in recorded["weights"].values())  # as the run wrote it
