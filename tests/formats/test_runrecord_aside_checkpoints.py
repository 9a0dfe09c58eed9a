"""A checkpoint that kto-train itself renamed aside (`checkpoint-N.superseded` when a resume
continued from an earlier one, `checkpoint-N.corrupt` when a resume fell back past it, each
maybe numbered `.1`, `.2`) is still the run's: kto-inspect score read β 0.1 for it, not the
run's 0.5, and its rewards came out 5× too small."""

from __future__ import annotations

import json

import pytest

from kto.formats.runrecord import run_of_model_dir, run_setting


@pytest.mark.parametrize("name", ["checkpoint-4", "checkpoint-4.superseded", "checkpoint-4.superseded.2", "checkpoint-4.corrupt", "checkpoint-4.corrupt.1"])
def test_a_checkpoint_set_aside_by_kto_train_gives_the_runs_beta(tmp_path, name):
    run = tmp_path / "run"
    (run / name).mkdir(parents=True)
    (run / "kto_run.json").write_text(json.dumps({"kind": "kto-train run", "version": 1, "config": {"beta": 0.5}, "derived": {}}))
    assert run_of_model_dir(run / name) == run.resolve()
    assert run_setting(run / name, "beta") == (0.5, run.resolve() / "kto_run.json")


@pytest.mark.parametrize("name", ["checkpoint-4.old", "checkpoint-4.superseded.x", "my-checkpoint-4", "checkpoint-4.corrupted"])
def test_other_names_are_not_the_runs(tmp_path, name):
    run = tmp_path / "run"
    (run / name).mkdir(parents=True)
    (run / "kto_run.json").write_text(json.dumps({"kind": "kto-train run", "version": 1, "config": {"beta": 0.5}, "derived": {}}))
    assert run_of_model_dir(run / name) is None and run_setting(run / name, "beta") == (None, None)
