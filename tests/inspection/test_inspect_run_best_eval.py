"""kto-inspect run names the step with the lowest eval loss, its value, and whether the run
still holds that step's weights: its checkpoint-STEP/, or final/ when the run finished there.
A user relying on --save-total-limit could not see that the best checkpoint was rotated away."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from kto.inspection.cli import main
from kto.inspection.runlog import checks, read_run


def _run(tmp_path, losses: dict[int, float], *, kept=(), finished=None, limit=0):
    run = tmp_path / "run"
    run.mkdir()
    lines = [{"step": s, "split": "train", "loss": 0.5} for s in range(1, max(losses) + 1)]
    lines += [{"step": s, "split": "eval", "loss": v} for s, v in losses.items()]
    lines.sort(key=lambda m: (m["step"], m["split"] == "eval"))
    (run / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in lines))
    record = {"kind": "kto-train run", "version": 1, "config": {"save_total_limit": limit, "save_every": 2}, "derived": {}}
    if finished is not None:
        record["finished_step"] = finished
        (run / "final").mkdir()
    (run / "kto_run.json").write_text(json.dumps(record))
    for step in kept:
        (run / f"checkpoint-{step}").mkdir()
    return run


def _best(run) -> list[str]:
    return [c for c in checks(read_run(run)) if c.startswith("best eval loss")]


def test_the_best_checkpoint_rotated_away_is_said(tmp_path):
    """Step 4 is a save step (--save-every 2): it was saved, and --save-total-limit 1 deleted it."""
    run = _run(tmp_path, {2: 0.61, 4: 0.4123456, 6: 0.52}, kept=(6,), finished=6, limit=1)
    assert _best(run) == ["best eval loss: 0.4123 at step 4 (of 3 evals); no checkpoint-4/ is left (deleted by --save-total-limit 1)"]


def test_a_best_step_that_was_no_save_step_was_not_saved(tmp_path):
    """Step 3 is no multiple of --save-every 2 and not the last step: not saved by the settings.
    Without a limit that is certain; with one, a stop by signal (which saves at any step) may
    have saved it and the limit deleted it since (seen in a review: "not saved" was said)."""
    run = _run(tmp_path, {1: 0.61, 3: 0.4, 6: 0.52}, kept=(6,), finished=6, limit=0)
    assert _best(run) == ["best eval loss: 0.4 at step 3 (of 3 evals); no checkpoint-3/ is left (not saved: --save-every 2)"]
    (tmp_path / "limited").mkdir()
    run = _run(tmp_path / "limited", {1: 0.61, 3: 0.4, 6: 0.52}, kept=(6,), finished=6, limit=1)
    assert _best(run) == [
        "best eval loss: 0.4 at step 3 (of 3 evals); no checkpoint-3/ is left "
        "(not a --save-every 2 step: not saved, unless a stop saved it and --save-total-limit 1 deleted it)"
    ]


def test_an_epoch_end_saved_by_save_each_epoch_is_a_save_step(tmp_path):
    """--save-each-epoch: a train line whose epoch is whole ends an epoch, and was saved."""
    run = _run(tmp_path, {3: 0.4, 6: 0.52}, kept=(6,), finished=6, limit=1)
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    for m in lines:
        m["epoch"] = m["step"] / 3 if m["split"] == "train" else None
    (run / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in lines))
    record = json.loads((run / "kto_run.json").read_text())
    record["config"].update(save_every=0, save_each_epoch=True)
    (run / "kto_run.json").write_text(json.dumps(record))
    assert _best(run) == ["best eval loss: 0.4 at step 3 (of 2 evals); no checkpoint-3/ is left (deleted by --save-total-limit 1)"]


def _on_caches(run, caches: dict[int, str | None]) -> None:
    """Give each eval line its eval cache's name (None: a line written before lines named it)."""
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    for m in lines:
        m["eval_cache"] = caches[m["step"]] if m["split"] == "eval" else None
        if m["eval_cache"] is None and m["split"] == "eval":
            del m["eval_cache"]
    (run / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in lines))


def test_evals_on_another_eval_cache_are_not_compared(tmp_path):
    """A resume changed --eval-cache after step 4: the best eval loss, and the eval trends, are
    of the last eval's cache alone (steps 6 and 8), and the line says how many were left out."""
    run = _run(tmp_path, {2: 0.3, 4: 0.2, 6: 0.61, 8: 0.55}, kept=(8,), finished=8)
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    margins = {2: 0.1, 4: 0.9, 6: 0.3, 8: 0.2}
    for m in lines:
        m["rewards/margins"] = margins[m["step"]] if m["split"] == "eval" else 0.0
    (run / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in lines))
    _on_caches(run, {2: "aaaaaaaaaaaa", 4: "aaaaaaaaaaaa", 6: "bbbbbbbbbbbb", 8: "bbbbbbbbbbbb"})
    said = checks(read_run(run))
    assert [c for c in said if c.startswith("best eval loss")] == [
        "best eval loss: 0.55 at step 8 (of 2 evals on eval cache bbbbbbbbbbbb; 2 earlier evals used another eval cache); checkpoint-8/ and final/ hold that step"
    ]
    assert "eval reward margin fell: 0.3 (step 6) -> 0.2 (step 8) (2 earlier evals on another eval cache left out)" in said


def test_eval_lines_without_a_cache_name_are_the_runs_first_eval_cache(tmp_path):
    """Lines written before eval lines named their cache: the run record's first eval cache
    (a resume could not change it then), so they compare with later lines on that cache only."""
    run = _run(tmp_path, {2: 0.3, 4: 0.2, 6: 0.61}, kept=(6,))
    _on_caches(run, {2: None, 4: None, 6: "bbbbbbbbbbbb"})
    record = json.loads((run / "kto_run.json").read_text())
    record["derived"] = {"eval_cache_fingerprint": "b" * 64, "eval_cache_fingerprint_at_start": "a" * 64}
    (run / "kto_run.json").write_text(json.dumps(record))
    assert _best(run) == [
        "best eval loss: 0.61 at step 6 (of 1 eval on eval cache bbbbbbbbbbbb; 2 earlier evals used another eval cache); checkpoint-6/ holds that step"
    ]
    record["derived"] = {"eval_cache_fingerprint": "b" * 64}
    (run / "kto_run.json").write_text(json.dumps(record))
    assert _best(run) == ["best eval loss: 0.2 at step 4 (of 3 evals); no checkpoint-4/ is left"]


@pytest.mark.parametrize(
    ("kept", "finished", "said"),
    [
        ((4, 6), None, "checkpoint-4/ holds that step"),
        ((6,), 4, "final/ holds that step"),
        ((4,), 4, "checkpoint-4/ and final/ hold that step"),
        ((), None, "no checkpoint-4/ is left"),
    ],
)
def test_where_the_best_step_is(tmp_path, kept, finished, said):
    run = _run(tmp_path, {2: 0.61, 4: 0.4, 6: 0.52}, kept=kept, finished=finished)
    assert _best(run) == [f"best eval loss: 0.4 at step 4 (of 3 evals); {said}"]


def test_ties_name_the_first_and_a_run_without_evals_says_nothing(tmp_path):
    run = _run(tmp_path, {2: 0.4, 4: 0.4}, kept=(2, 4))
    assert _best(run) == ["best eval loss: 0.4 at step 2 (of 2 evals); checkpoint-2/ holds that step"]
    (run / "metrics.jsonl").write_text(json.dumps({"step": 1, "split": "train", "loss": 0.5}) + "\n")
    assert _best(run) == []


def test_another_metrics_file_names_the_step_only(tmp_path):
    """The lines a resume set aside are another continuation's: the run's checkpoints are not its."""
    run = _run(tmp_path, {2: 0.61, 4: 0.4}, kept=(4,))
    (run / "metrics.jsonl").rename(run / "metrics.after-step-1.superseded.jsonl")
    assert _best(run / "metrics.after-step-1.superseded.jsonl") == ["best eval loss: 0.4 at step 4 (of 2 evals)"]


def test_the_text_output_shows_it(tmp_path):
    pytest.importorskip("matplotlib")
    run = _run(tmp_path, {2: 0.61, 4: 0.4}, kept=(2,))
    result = CliRunner().invoke(main, ["run", str(run)])
    assert result.exit_code == 0, result.output
    assert "  best eval loss: 0.4 at step 4 (of 2 evals); no checkpoint-4/ is left\n" in result.output
