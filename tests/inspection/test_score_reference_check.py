"""kto-inspect score --model RUN/final on a cache scored by another reference model than the
run's scored every row against that other reference with no word (rewards +0.06 for a run
whose own cache gave others), while kto-train --eval-only refuses the same pair. A policy that
lies in a kto-train run (its final/, final-merged/, checkpoint-STEP/) is now checked as
--eval-only checks it: against the run's --cache where its record's path still holds it, else
the run's own caches pass and another only if the run's reference scored it (its record names
it; a record from before that, the model the run started from). A policy with no run record is
scored as before."""

import json
import shutil

import pytest
from click.testing import CliRunner
from conftest import make_cache, make_tiny_llama, run_train, text_rows

from kto.inspection.cli import main


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_cache, tiny_model_dir, tiny_eval_cache, tokenizer_dir):
    """(run, tiny2, other): a 2-step full run on tiny_cache from its reference (with
    tiny_eval_cache as its eval cache), another tiny model, and a cache scored by it."""
    root = tmp_path_factory.mktemp("score-ref")
    result = run_train(
        tiny_cache, tiny_model_dir, root / "run", "--batch-size", "4", "--max-steps", "2", "--save-every", "2", "--eval-cache", str(tiny_eval_cache)
    )
    assert result.exit_code == 0, result.output
    tiny2 = make_tiny_llama(root / "tiny2", tokenizer_dir, seed=1)
    (root / "other").mkdir()
    other = make_cache(root / "other", text_rows(), tiny2, "text.jsonl")
    return root / "run", tiny2, other


def score(*args):
    return CliRunner().invoke(main, ["score", *map(str, args), "--batch-tokens", "64"])


def error_line(result) -> str:
    """The refusal: the last line (the run's β, read before it, is said first), exit 2."""
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    return result.output.strip().splitlines()[-1]


def moved_cache(run, tmp_path, recorded_before_the_reference=False):
    """A copy of `run` whose record names a --cache that is no longer there; with
    `recorded_before_the_reference`, a record as runs made before derived.reference_identity."""
    moved = shutil.copytree(run, tmp_path / "run")
    record = json.loads((moved / "kto_run.json").read_text())
    record["config"]["cache"] = str(tmp_path / "moved-away")
    if recorded_before_the_reference:
        del record["derived"]["reference_identity"]
    (moved / "kto_run.json").write_text(json.dumps(record))
    return moved


@pytest.mark.parametrize("folder", ["final", "checkpoint-2"])
def test_a_cache_of_another_reference_is_refused_as_eval_only_refuses_it(setup, tiny_cache, tiny_model_dir, tmp_path, folder):
    run, tiny2, other = setup
    out = tmp_path / "s.parquet"
    line = error_line(score(other, "--model", run / folder, "--out", out))
    assert line == (
        f"kto-inspect: error: CACHE {other}: made with another model ({tiny2}) than the run {run}'s --cache {tiny_cache} "
        f"({tiny_model_dir}); its rewards would be measured against another reference"
    )
    assert not out.exists()


def test_without_the_runs_cache_its_recorded_reference_decides(setup, tmp_path):
    run, tiny2, other = setup
    moved = moved_cache(run, tmp_path)
    line = error_line(score(other, "--model", moved / "final", "--out", tmp_path / "s.parquet"))
    assert line == (
        f"kto-inspect: error: CACHE {other}: scored by another model than the reference of the run {moved} (the model its --cache "
        f"{tmp_path / 'moved-away'} was made with): its rewards would be measured against another reference; score a cache of its reference"
    )
    assert not (tmp_path / "s.parquet").exists()


def test_a_run_recorded_before_its_reference_falls_back_to_the_model_it_started_from(setup, tmp_path):
    run, tiny2, other = setup
    moved = moved_cache(run, tmp_path, recorded_before_the_reference=True)
    line = error_line(score(other, "--model", moved / "final", "--out", tmp_path / "s.parquet"))
    assert line == (
        f"kto-inspect: error: CACHE {other}: scored by another model than the run {moved} started from "
        f"({json.loads((moved / 'kto_run.json').read_text())['config']['model']}), and the run's --cache ({tmp_path / 'moved-away'}) "
        "is not at hand to check it against: its rewards would be measured against another reference; score a cache of its reference"
    )
    assert not (tmp_path / "s.parquet").exists()


def test_the_runs_own_caches_and_those_of_its_reference_score(setup, tiny_cache, tiny_eval_cache, tmp_path):
    run, tiny2, other = setup
    moved = moved_cache(run, tmp_path)
    for k, (cache, model) in enumerate(
        [(tiny_cache, run / "final"), (tiny_eval_cache, run / "final"), (tiny_cache, moved / "final"), (tiny_eval_cache, moved / "final")]
    ):
        result = score(cache, "--model", model, "--out", tmp_path / f"s{k}.parquet")
        assert result.exit_code == 0, result.output
        assert (tmp_path / f"s{k}.parquet").is_file()


def test_a_run_that_trained_another_model_than_its_reference_is_checked_against_the_reference(
    tiny_cache, tiny_eval_cache, tiny_model_dir, tmp_path, tokenizer_dir
):
    """A run may train another model (tiny2) than its cache's reference (tiny): its own --cache
    passes by its recorded fingerprint, with the cache's path gone too. Another cache is checked
    against the reference its record names, not the model it started from: a cache of the
    reference scores (it was refused), one of tiny2 is refused (it scored, against the wrong
    reference)."""
    tiny2 = make_tiny_llama(tmp_path / "tiny2", tokenizer_dir, seed=1)
    result = run_train(tiny_cache, tiny2, tmp_path / "run", "--batch-size", "4", "--max-steps", "1")
    assert result.exit_code == 0, result.output
    moved = moved_cache(tmp_path / "run", tmp_path / "m")
    for k, model in enumerate((tmp_path / "run" / "final", moved / "final")):
        result = score(tiny_cache, "--model", model, "--out", tmp_path / f"s{k}.parquet")
        assert result.exit_code == 0, result.output
    result = score(tiny_eval_cache, "--model", moved / "final", "--out", tmp_path / "reference.parquet")
    assert result.exit_code == 0, result.output
    (tmp_path / "of-tiny2").mkdir()
    of_tiny2 = make_cache(tmp_path / "of-tiny2", text_rows(), tiny2, "text.jsonl")
    line = error_line(score(of_tiny2, "--model", moved / "final", "--out", tmp_path / "s.parquet"))
    assert line.startswith(f"kto-inspect: error: CACHE {of_tiny2}: scored by another model than the reference of the run {moved} ")
    assert not (tmp_path / "s.parquet").exists()


def test_a_model_of_no_run_scores_any_cache(setup, tmp_path):
    """No record: nothing says which reference it was trained against (the README says so)."""
    run, tiny2, other = setup
    loose = shutil.copytree(run / "final", tmp_path / "loose")
    result = score(other, "--model", loose, "--out", tmp_path / "s.parquet")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "s.parquet").is_file()
