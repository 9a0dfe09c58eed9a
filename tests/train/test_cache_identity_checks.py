"""What kto-train says of the cache it is given, before training on it: a data file edited since
the cache was made, an eval split passed as --cache, a --model that is not the cache's
reference (and a --drift-tolerance that then cannot be checked), an eval cache scored by another
model, and a --model whose tokenizer differs from the cache's in its chat template only."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import chat_rows, make_cache, make_tiny_llama, precompute_args, run_train, text_rows, train_error_line, write_rows

from kto.formats.files import sha256_file
from kto.formats.manifest import read_manifest
from kto.precompute.cli import main as precompute

ONE_STEP = ("--max-steps", "1", "--batch-size", "2")


def precompute_in(root: Path, model: Path, *extra: str) -> Path:
    """kto-precompute run from `root` on root/chat.jsonl typed as a relative path, as a user in
    their data directory types it; returns root/c0."""
    write_rows(root / "chat.jsonl", chat_rows())
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        result = CliRunner().invoke(precompute, precompute_args(Path("chat.jsonl"), model, Path("c0"), *extra))
    assert result.exit_code == 0, result.output
    return root / "c0"


@pytest.fixture(scope="module")
def split_cache(tmp_path_factory, tiny_model_dir) -> Path:
    """c0 and c0/eval (--eval-fraction 0.25), made from a relative --data path."""
    return precompute_in(tmp_path_factory.mktemp("split"), tiny_model_dir, "--eval-fraction", "0.25")


@pytest.fixture(scope="module")
def tiny2(tmp_path_factory, tokenizer_dir) -> Path:
    """Another tiny model of the same tokenizer: not the reference of tiny_cache."""
    return make_tiny_llama(tmp_path_factory.mktemp("tiny2"), tokenizer_dir, seed=1)


# ---- 1. a data file edited since the cache was made -----------------------------------------


def test_the_manifest_records_each_input_file_absolute(split_cache):
    """info.data_paths held the path as typed, relative to kto-precompute's working directory,
    which nothing recorded: the file could not be found again."""
    for cache in (split_cache, split_cache / "eval"):
        assert read_manifest(cache).info["data_paths"] == [str(split_cache.parent / "chat.jsonl")]


def test_an_input_edited_since_the_cache_was_made_is_noted(tmp_path, tiny_model_dir, monkeypatch):
    cache = precompute_in(tmp_path, tiny_model_dir)
    data = tmp_path / "chat.jsonl"
    made_from = sha256_file(data)
    monkeypatch.chdir(tmp_path.parent)  # kto-train from elsewhere finds it all the same
    same = run_train(cache, tiny_model_dir, tmp_path / "r0", *ONE_STEP)
    assert same.exit_code == 0 and "has changed since" not in same.output, same.output
    rows = chat_rows()
    rows[0]["label"] = not rows[0]["label"]  # one label flipped: the user fixed a row
    write_rows(data, rows)
    now = sha256_file(data)
    edited = run_train(cache, tiny_model_dir, tmp_path / "r1", *ONE_STEP)
    assert edited.exit_code == 0, edited.output  # a note, not a refusal: the edit may be meant
    note = (
        f"note: --cache {cache} was made from {data} (sha256 {made_from[:12]}…), which has changed since (now {now[:12]}…); "
        "rerun kto-precompute to train on its rows as they are now"
    )
    assert [line for line in edited.output.splitlines() if "has changed since" in line] == [note]
    data.unlink()
    gone = run_train(cache, tiny_model_dir, tmp_path / "r2", *ONE_STEP)
    assert gone.exit_code == 0 and "has changed since" not in gone.output, gone.output


def test_an_eval_data_file_edited_since_is_noted_by_its_own_path(tmp_path, tiny_model_dir, monkeypatch):
    """The eval split of a cache made with --eval-data comes from those files, and the manifest
    now records their paths (info.eval_data_paths, made absolute): an edit of one is noted
    under --eval-cache, naming that file, not the training cache's --data file."""
    write_rows(tmp_path / "held.jsonl", text_rows())
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(tmp_path)
        write_rows(tmp_path / "chat.jsonl", chat_rows())
        made = CliRunner().invoke(precompute, precompute_args(Path("chat.jsonl"), tiny_model_dir, Path("c0"), "--eval-data", "held.jsonl"))
    assert made.exit_code == 0, made.output
    cache, held = tmp_path / "c0", tmp_path / "held.jsonl"
    assert read_manifest(cache / "eval").info["eval_data_paths"] == [str(held)]
    assert read_manifest(cache / "eval").input_files() == [(held, sha256_file(held))]
    assert read_manifest(cache).input_files() == [(tmp_path / "chat.jsonl", sha256_file(tmp_path / "chat.jsonl"))]
    made_from = sha256_file(held)
    rows = text_rows()
    rows[0]["label"] = not rows[0]["label"]
    write_rows(held, rows)
    monkeypatch.chdir(tmp_path.parent)
    result = run_train(cache, tiny_model_dir, tmp_path / "r", *ONE_STEP, "--eval-cache", str(cache / "eval"))
    assert result.exit_code == 0, result.output
    assert [line for line in result.output.splitlines() if "has changed since" in line] == [
        f"note: --eval-cache {cache / 'eval'} was made from {held} (sha256 {made_from[:12]}…), which has changed since "
        f"(now {sha256_file(held)[:12]}…); rerun kto-precompute to evaluate on its rows as they are now"
    ]


# ---- 2. the eval split as --cache -----------------------------------------------------------


@pytest.mark.parametrize("swapped", [False, True], ids=["eval-as-cache", "swapped"])
def test_training_on_the_eval_split_is_refused(split_cache, tiny_model_dir, tmp_path, swapped):
    held = split_cache / "eval"
    extra = ("--eval-cache", str(split_cache)) if swapped else ()
    result = run_train(held, tiny_model_dir, tmp_path / "r", *ONE_STEP, *extra)
    assert result.exit_code == 2 and not (tmp_path / "r").exists(), result.output
    assert train_error_line(result.output) == (
        f"kto-train: error: --cache {held}: the eval split of the cache {split_cache} (kto-precompute --eval-fraction), "
        f"its rows held out from training; pass --cache {split_cache} --eval-cache {held}"
    )


def test_the_split_the_right_way_round_trains(split_cache, tiny_model_dir, tmp_path):
    result = run_train(split_cache, tiny_model_dir, tmp_path / "r", *ONE_STEP, "--eval-cache", str(split_cache / "eval"))
    assert result.exit_code == 0, result.output
    assert "has changed since" not in result.output


# ---- 3. the step-0 check with a --model that is not the reference -----------------------------


def test_the_skipped_step0_check_names_the_reference(tiny_cache, tiny_model_dir, tiny2, tmp_path):
    result = run_train(tiny_cache, tiny2, tmp_path / "r", *ONE_STEP)
    assert result.exit_code == 0, result.output
    assert (
        f"step-0 check skipped: --model {tiny2} is not {tiny_model_dir}, the model --cache {tiny_cache} was scored with "
        "(its identity differs from the manifest's); the rewards r = log πθ − log πref are measured against that reference"
    ) in result.output


def test_a_drift_tolerance_that_cannot_be_checked_is_refused(tiny_cache, tiny_model_dir, tiny2, tmp_path):
    result = run_train(tiny_cache, tiny2, tmp_path / "r", *ONE_STEP, "--drift-tolerance", "0.001")
    assert result.exit_code == 2 and not (tmp_path / "r").exists(), result.output
    assert train_error_line(result.output) == (
        f"kto-train: error: --drift-tolerance 0.001: the step-0 check compares --model with the cache's reference, and --model {tiny2} "
        f"is not {tiny_model_dir}, the model --cache {tiny_cache} was scored with; leave the tolerance out, or train {tiny_model_dir}"
    )


def test_a_drift_tolerance_is_refused_on_a_cache_without_token_logps(tmp_path, tiny_model_dir):
    root = tmp_path / "c"
    root.mkdir()
    cache = precompute_in(root, tiny_model_dir, "--no-token-logps")
    result = run_train(cache, tiny_model_dir, tmp_path / "r", *ONE_STEP, "--drift-tolerance", "0.001")
    assert result.exit_code == 2 and not (tmp_path / "r").exists(), result.output
    assert train_error_line(result.output) == (
        f"kto-train: error: --drift-tolerance 0.001: the step-0 check compares per-token log-probs, and --cache {cache} "
        "was made with --no-token-logps; leave the tolerance out, or rerun kto-precompute without --no-token-logps"
    )


# ---- 4. an eval cache of another model ----------------------------------------------------------


def test_an_eval_cache_of_another_model_names_both(tiny_cache, tiny_model_dir, tiny2, tmp_path):
    held = make_cache(tmp_path, text_rows(), tiny2, "text.jsonl")
    result = run_train(tiny_cache, tiny_model_dir, tmp_path / "r", *ONE_STEP, "--eval-cache", str(held))
    assert result.exit_code == 2 and not (tmp_path / "r").exists(), result.output
    assert train_error_line(result.output) == (
        f"kto-train: error: --eval-cache {held}: made with another model ({tiny2}) than --cache {tiny_cache} ({tiny_model_dir}); "
        "its rewards would be measured against another reference"
    )


# ---- 5. a tokenizer that differs in its chat template only --------------------------------------


def other_template(model: Path, dest: Path) -> Path:
    """A copy of `model` whose chat template differs (same weights, vocabulary, special tokens)."""
    shutil.copytree(model, dest)
    template = dest / "chat_template.jinja"
    template.write_text(template.read_text().replace("<|im_start|>", "<|im_start|> "))
    return dest


def test_a_template_only_difference_trains_and_saves_the_cache_template(tiny_cache, tiny_model_dir, tmp_path):
    """The cached token ids do not depend on the template; the template saved with final/ must be
    the one the rows were rendered with, not --model's."""
    from transformers import AutoTokenizer

    other = other_template(tiny_model_dir, tmp_path / "other")
    result = run_train(tiny_cache, other, tmp_path / "r", *ONE_STEP)
    assert result.exit_code == 0, result.output
    assert (
        f"note: --model {other}'s chat template is not the one --cache {tiny_cache}'s prompts were rendered with; the cached token ids "
        "do not depend on it (vocabulary, special tokens and pipeline are the cache's), and checkpoints and final/ are saved with "
        "the cache's template, the format trained on. To train on --model's template, rerun kto-precompute with this --model"
    ) in result.output
    saved = AutoTokenizer.from_pretrained(tmp_path / "r" / "final").chat_template
    assert saved == AutoTokenizer.from_pretrained(tiny_model_dir).chat_template != AutoTokenizer.from_pretrained(other).chat_template


def test_a_template_only_difference_without_the_cache_template_is_refused(tiny_cache, tiny_model_dir, tmp_path):
    cache = tmp_path / "cache"
    shutil.copytree(tiny_cache, cache)
    (cache / "tokenizer" / "chat_template.jinja").unlink()
    (cache / ".tokenizer-checked.json").unlink(missing_ok=True)
    other = other_template(tiny_model_dir, tmp_path / "other")
    result = run_train(cache, other, tmp_path / "r", *ONE_STEP)
    assert result.exit_code == 2 and not (tmp_path / "r").exists(), result.output
    assert train_error_line(result.output) == (
        f"kto-train: error: --model {other}: its chat template is not the one --cache {cache}'s prompts were rendered with, and "
        f"{cache / 'tokenizer' / 'chat_template.jinja'}, that template, is missing: final/ would be saved with a template the policy "
        "was not trained in (the token ids are unaffected). Restore the cache's tokenizer/, or give a --model with the cache's template"
    )


def test_a_pipeline_difference_is_still_refused(tiny_cache, tiny_model_dir, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(tiny_model_dir, other)
    tokenizer = json.loads((other / "tokenizer.json").read_text())
    tokenizer["normalizer"] = {"type": "Lowercase"}
    (other / "tokenizer.json").write_text(json.dumps(tokenizer))
    result = run_train(tiny_cache, other, tmp_path / "r", *ONE_STEP)
    assert result.exit_code == 2 and not (tmp_path / "r").exists(), result.output
    assert "tokenizer differs from the cache's (pipeline); the cached token ids would mean other words" in train_error_line(result.output)


def test_an_eval_split_fetched_from_the_hub_is_named_as_typed(split_cache, tmp_path):
    from kto.formats import hub
    from kto.formats.errors import InputError
    from kto.train.config import TrainConfig
    from kto.train.eval_cache import refuse_eval_split

    held = split_cache / "eval"
    hub._FETCHED[held] = "hf:me/c0/eval"  # as fetch_cache records it
    try:
        with pytest.raises(InputError) as refused:
            refuse_eval_split(TrainConfig(cache=held, model="m", out=tmp_path / "o"), read_manifest(held))
    finally:
        hub._FETCHED.pop(held)
    assert str(refused.value) == (
        "--cache hf:me/c0/eval: the eval split of the cache hf:me/c0 (kto-precompute --eval-fraction), its rows held out from training; "
        "pass --cache hf:me/c0 --eval-cache hf:me/c0/eval"
    )
