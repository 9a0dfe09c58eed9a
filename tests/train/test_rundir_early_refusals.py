"""What kto-train refuses, or leaves alone, at the start of a run, before any step: a user's file in
final/ that a resumed run would delete when it writes final/ again, a checkpoint holding a file
its save did not write, a run directory the user made (kept when the start fails), and the empty
metrics.jsonl of a start that failed at its first line (replaced, not set aside as a run's)."""

from __future__ import annotations

import errno
import os
import shutil

import pytest
from conftest import crashed_copy, metrics, run_train, train_error_line

from kto.formats.atomic import disk_full_names
from kto.formats.lock import LOCK_NAME
from kto.train.metrics import MetricsWriter

ARGS = ["--batch-size", "2", "--lr", "1e-3", "--log-every", "1", "--max-steps", "2", "--save-every", "1"]


@pytest.fixture(scope="module")
def finished(tmp_path_factory, tiny_cache, tiny_model_dir):
    """A finished run of two steps: checkpoint-1, checkpoint-2, final/ (tests work on copies)."""
    out = tmp_path_factory.mktemp("early-refusals") / "run"
    result = run_train(tiny_cache, tiny_model_dir, out, *ARGS)
    assert result.exit_code == 0, result.output
    return out


def test_a_users_file_in_final_is_refused_before_the_resumed_run_trains_a_step(finished, tiny_cache, tiny_model_dir, tmp_path):
    """`--resume checkpoint-1` of a finished run writes final/ again, whole: a user's file there
    (an evaluation's output) is refused at the start, not after the resumed training, which by
    then has retrained step 2 and set checkpoint-2 aside."""
    out = shutil.copytree(finished, tmp_path / "run")
    (out / "final" / "eval.json").write_text('{"accuracy": 0.5}\n')
    lines = (out / "metrics.jsonl").read_bytes()
    result = run_train(tiny_cache, tiny_model_dir, out, *ARGS, "--resume", "checkpoint-1")
    assert result.exit_code == 2, result.output
    line = train_error_line(result.output)
    assert line.startswith(f"kto-train: error: --resume: {out / 'final'}/eval.json: not recorded in its checksums.json"), line
    assert "move it out of final/ first" in line
    assert (out / "metrics.jsonl").read_bytes() == lines  # no step ran
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-1", "checkpoint-2"]  # nothing set aside
    assert (out / "final" / "eval.json").read_text() == '{"accuracy": 0.5}\n'


def test_a_checkpoint_holding_a_file_its_save_did_not_write_is_not_resumed_from(finished, tiny_cache, tiny_model_dir, tmp_path):
    """A checkpoint is usable only with exactly the files its checksums.json records: one added
    since (copied in from elsewhere, a partial rsync of another run) is named, and nothing runs."""
    out = crashed_copy(finished, tmp_path / "run", step=1, metrics_lines=1)
    (out / "checkpoint-1" / "notes.txt").write_text("mine\n")
    result = run_train(tiny_cache, tiny_model_dir, out, *ARGS, "--resume")
    line = train_error_line(result.output)
    assert result.exit_code == 2, result.output
    assert line == (
        f"kto-train: error: --resume: no usable checkpoint in {out}: checkpoint-1: notes.txt: not recorded in checksums.json (added since the save)"
    )
    assert len(metrics(out)) == 1 and not (out / "final").exists()


def test_a_run_directory_the_user_made_is_kept_when_the_start_fails(tiny_cache, tiny_model_dir, tmp_path):
    """An empty --out the user made (mkdir, permissions set for a group) stays after a refused
    start; only a directory kto-train itself created is removed again."""
    out = tmp_path / "run"
    out.mkdir()
    result = run_train(tiny_cache, tiny_model_dir, out, *ARGS, "--resume")
    assert result.exit_code == 2 and "holds no run to resume" in train_error_line(result.output)
    assert out.is_dir() and {p.name for p in out.iterdir()} <= {LOCK_NAME}  # its lock file, which a rerun takes
    created = tmp_path / "new"
    result = run_train(tiny_cache, tiny_model_dir, created, *ARGS, "--resume")
    assert result.exit_code == 2 and not created.exists()


def test_the_empty_metrics_of_a_start_that_failed_at_its_first_line_is_simply_replaced(tiny_cache, tiny_model_dir, tmp_path, monkeypatch):
    """A full disk at the first metrics line leaves kto_run.json and an empty metrics.jsonl, no
    checkpoint. The same command, run again, is no "earlier run" to set aside: no
    metrics.jsonl.superseded, no `starting over` line."""
    out = tmp_path / "run"

    def disk_full(self, *args, **kwargs):
        with disk_full_names(self.path):
            self.file = open(self.path, "a")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self.path))

    with monkeypatch.context() as m:
        m.setattr(MetricsWriter, "write", disk_full)
        failed = run_train(tiny_cache, tiny_model_dir, out, *ARGS)
    assert failed.exit_code == 2 and "no space left on device" in train_error_line(failed.output), failed.output
    assert (out / "metrics.jsonl").stat().st_size == 0 and not list(out.glob("checkpoint-*"))
    result = run_train(tiny_cache, tiny_model_dir, out, *ARGS)
    assert result.exit_code == 0, result.output
    assert "starting over" not in result.output
    assert [p.name for p in out.iterdir() if "superseded" in p.name] == []
    assert [m["step"] for m in metrics(out)] == [1, 2]
