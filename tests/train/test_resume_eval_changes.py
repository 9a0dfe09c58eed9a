"""What a resume may change about evaluation, and what it keeps of the lines it replaces.

Seen: `--resume RUN/checkpoint-K` dropped every metrics.jsonl line past step K and kept no copy,
while the later checkpoints themselves were kept as `.superseded`: their eval numbers were lost.
And an eval cache could not be added, dropped or changed on resume, though evaluation changes no
training number (the run record called it a setting that decides the numbers)."""

from __future__ import annotations

import json
import shutil

import pytest
from conftest import metrics, run_train, train_error_line

ARGS = ("--batch-size", "2", "--lr", "1e-3", "--log-every", "1", "--warmup-ratio", "0.2", "--max-steps", "6", "--save-every", "2")


@pytest.fixture(scope="module")
def evaluated(tiny_cache, tiny_eval_cache, tiny_model_dir, tmp_path_factory):
    """6 steps, a checkpoint every 2, an eval every 2 (at 2, 4, 6)."""
    out = tmp_path_factory.mktemp("evaluated") / "run"
    result = run_train(tiny_cache, tiny_model_dir, out, *ARGS, "--eval-cache", str(tiny_eval_cache), "--eval-every", "2")
    assert result.exit_code == 0, result.output
    return out


def _lines(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_resume_from_an_earlier_checkpoint_keeps_the_lines_it_replaces(evaluated, tiny_cache, tiny_eval_cache, tiny_model_dir, tmp_path):
    """--resume checkpoint-2 with another --eval-every: metrics.jsonl reads as the continued run
    (evals at 2, then 3, 4, 5, 6), and the dropped lines (steps 3-6 of the first continuation,
    its evals at 4 and 6) are in metrics.after-step-2.superseded.jsonl, byte for byte as they
    were (not metrics.jsonl.superseded: a start-over's copy of a whole earlier run). A second
    such resume numbers its file (.1) and leaves the first as it was; the run directory is
    still kto-train's own, and kto-inspect run reads the file given."""
    run = shutil.copytree(evaluated, tmp_path / "run")
    before = (run / "metrics.jsonl").read_text().splitlines()
    past = [line for line in before if json.loads(line)["step"] > 2]
    assert [json.loads(line)["step"] for line in past if '"eval"' in line] == [4, 6]
    again = ("--eval-cache", str(tiny_eval_cache), "--eval-every", "1", "--resume", "checkpoint-2")
    result = run_train(tiny_cache, tiny_model_dir, run, *ARGS, *again)
    assert result.exit_code == 0, result.output
    assert "--resume: moved the 6 metrics lines past step 2 to metrics.after-step-2.superseded.jsonl" in result.output
    aside = run / "metrics.after-step-2.superseded.jsonl"
    assert aside.read_text() == "".join(line + "\n" for line in past) and not (run / "metrics.jsonl.superseded").exists()
    assert [m["step"] for m in metrics(run) if m["split"] == "eval"] == [2, 3, 4, 5, 6]
    # Evaluating more often changes no training number.
    train = lambda lines: [(m["step"], m["loss"]) for m in lines if m["split"] == "train"]
    assert train(metrics(run)) == train(_lines(evaluated / "metrics.jsonl"))
    third = run_train(tiny_cache, tiny_model_dir, run, *ARGS, *again)
    assert third.exit_code == 0, third.output
    assert "to metrics.after-step-2.superseded.1.jsonl" in third.output
    assert aside.read_text() == "".join(line + "\n" for line in past)
    assert [m["step"] for m in _lines(run / "metrics.after-step-2.superseded.1.jsonl") if m["split"] == "eval"] == [3, 4, 5, 6]
    from kto.inspection.runlog import read_run
    from kto.train.rundir import is_ours

    assert is_ours(aside) and [r["step"] for r in read_run(aside).eval] == [4, 6]


def test_an_eval_cache_may_be_added_on_resume(tiny_cache, tiny_eval_cache, tiny_model_dir, tmp_path):
    """Added on resume: evaluated from the resumed step on, recorded in kto_run.json, said in
    the resume's line of changes; the training numbers are the run's own."""
    from kto.formats.manifest import read_manifest

    run = tmp_path / "run"
    first = run_train(tiny_cache, tiny_model_dir, run, *ARGS)
    assert first.exit_code == 0, first.output
    trained = metrics(run)
    result = run_train(tiny_cache, tiny_model_dir, run, *ARGS, "--resume", "checkpoint-4", "--eval-cache", str(tiny_eval_cache), "--eval-every", "1")
    assert result.exit_code == 0, result.output
    assert f"--resume: changed --eval-every 0 -> 1, --eval-cache None -> {tiny_eval_cache}" in result.output
    assert [m["step"] for m in metrics(run) if m["split"] == "eval"] == [5, 6]
    assert [m["loss"] for m in metrics(run) if m["split"] == "train"] == [m["loss"] for m in trained]
    record = json.loads((run / "kto_run.json").read_text())
    assert record["config"]["eval_cache"] == str(tiny_eval_cache) and record["config"]["eval_every"] == 1
    assert record["derived"]["eval_cache_fingerprint"] == read_manifest(tiny_eval_cache).fingerprint
    # Each eval line names its eval cache (a fingerprint's first 12 hex digits); train lines null.
    assert {m["eval_cache"] for m in metrics(run) if m["split"] == "eval"} == {read_manifest(tiny_eval_cache).fingerprint[:12]}
    assert {m["eval_cache"] for m in metrics(run) if m["split"] == "train"} == {None}
    # ... and dropped again on a later resume; the checkpoints written with it resume too.
    dropped = run_train(tiny_cache, tiny_model_dir, run, *ARGS, "--resume", "checkpoint-4")
    assert dropped.exit_code == 0, dropped.output
    assert [m["step"] for m in metrics(run) if m["split"] == "eval"] == []


def test_an_eval_cache_added_on_resume_is_still_checked_against_the_training_rows(tiny_cache, tiny_model_dir, tmp_path):
    run = tmp_path / "run"
    assert run_train(tiny_cache, tiny_model_dir, run, *ARGS).exit_code == 0
    result = run_train(tiny_cache, tiny_model_dir, run, *ARGS, "--resume", "checkpoint-4", "--eval-cache", str(tiny_cache))
    assert result.exit_code == 2 and "evaluate on a held-out split such as CACHE/eval" in train_error_line(result.output)


def test_a_record_whose_eval_cache_changed_keeps_the_digest_its_checkpoints_carry():
    """Checkpoints carry a digest of the settings a resume may not change; those written before
    the eval cache became one a resume may change hashed its fingerprint in. The digest goes on
    hashing the fingerprint the run began with, so they and the later ones still resume."""
    from kto.train.resume_record import keep_recorded, record_differences, settings_digest

    saved = {"config": {"beta": 0.1, "eval_cache": None}, "derived": {"total_steps": 3, "eval_cache_fingerprint": None}}
    now = {"config": {"beta": 0.1, "eval_cache": "e"}, "derived": {"total_steps": 3, "eval_cache_fingerprint": "f" * 64}}
    assert record_differences(saved, now) == []
    keep_recorded(now, saved)
    # The fingerprint the run began with (none) is kept beside the new one, and hashed instead.
    assert now["derived"]["eval_cache_fingerprint_at_start"] is None and "eval_cache_fingerprint_at_start" not in saved["derived"]
    assert now["derived"]["eval_cache_fingerprint"] == "f" * 64 and settings_digest(now) == settings_digest(saved)
    later = {"config": {"beta": 0.1, "eval_cache": "g"}, "derived": {"total_steps": 3, "eval_cache_fingerprint": "g" * 64}}
    keep_recorded(later, now)
    assert settings_digest(later) == settings_digest(saved)
    assert settings_digest({**saved, "config": {"beta": 0.2}}) != settings_digest(saved)


def test_a_killed_write_of_the_set_aside_lines_is_cleaned_as_ours():
    """The lines are written to a temp name first; one a killed resume left is kto-train's own
    (cleaned under the lock), not a foreign entry that refuses the run directory."""
    from kto.train.rundir import written_here

    assert written_here("metrics.after-step-2.superseded.jsonl", "tmp") and written_here("metrics.after-step-20.superseded.3.jsonl", "tmp")
    assert written_here("metrics.jsonl.superseded", "tmp")  # start_over's
    assert not written_here("metrics.after-step-2.superseded.jsonl", "old") and not written_here("metrics.after-step-x.superseded.jsonl", "tmp")
