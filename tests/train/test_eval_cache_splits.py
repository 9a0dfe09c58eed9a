"""An --eval-cache made from another split of the same `datasets` input is held out, not
training rows: a local datasets directory is recorded by the sha256 of all its files and its
split, so the train and test splits of one directory share the sha256, and their `id` columns
(0..N each) overlap. The rows are the same only when the whole input identity is (its split,
config and files or hub dataset; not its name, which a renamed copy changes)."""

from __future__ import annotations

import json

import pytest
from conftest import QUESTIONS, one_line_error, precompute_args, run_precompute, run_train

from kto.train.eval_cache import same_input


def _rows(questions):
    """Ids 0..N in every split, as a hub dataset's own index column often is."""
    pairs = [(q, answer, k == 0) for q, good, bad in questions for k, answer in enumerate((good, bad))]
    return [{"id": i, "prompt": q, "completion": answer, "label": label} for i, (q, answer, label) in enumerate(pairs)]


@pytest.fixture
def split_caches(tmp_path, tiny_model_dir):
    pytest.importorskip("datasets")
    data = tmp_path / "ds"
    data.mkdir()
    for split, part in (("train", QUESTIONS[:4]), ("test", QUESTIONS[4:8])):
        (data / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in _rows(part)))
    caches = {}
    for split in ("train", "test"):
        out = tmp_path / f"cache-{split}"
        result = run_precompute(*precompute_args(f"hf:{data}:{split}", tiny_model_dir, out))
        assert result.exit_code == 0, result.output
        caches[split] = out
    return caches


def test_the_test_split_of_the_training_dataset_is_an_eval_cache(split_caches, tiny_model_dir, tmp_path):
    result = run_train(split_caches["train"], tiny_model_dir, tmp_path / "run", "--max-steps", "1", "--eval-cache", str(split_caches["test"]))
    assert result.exit_code == 0, result.output


def test_the_same_split_is_still_the_same_rows(split_caches, tiny_model_dir, tmp_path):
    result = run_train(split_caches["test"], tiny_model_dir, tmp_path / "run", "--max-steps", "1", "--eval-cache", str(split_caches["train"]))
    assert result.exit_code == 0, result.output  # the other way round: held out too
    message = one_line_error(run_train(split_caches["train"], tiny_model_dir, tmp_path / "run2", "--eval-cache", str(split_caches["train"])))
    assert "same fingerprint" in message


def test_same_input_compares_everything_but_the_name():
    local = {"name": "ds:train", "config": None, "split": "train", "sha256": "ab"}
    assert same_input(local, {**local, "name": "copy:train"})  # a renamed copy: the same rows
    assert not same_input(local, {**local, "name": "ds:test", "split": "test"})
    hub = {"name": "hf:org/x:train", "config": None, "split": "train", "dataset": "org/x", "revision": "r1"}
    assert same_input(hub, {**hub, "revision": "r2"})  # a later revision of one split: ids keep naming the same rows
    assert not same_input(hub, {**hub, "split": "test"}) and not same_input(hub, {**hub, "dataset": "org/y"})
    assert same_input({"name": "a.jsonl", "sha256": "cd"}, {"name": "b.jsonl", "sha256": "cd"})
    assert not same_input({"name": "a.jsonl", "sha256": "cd"}, {"name": "a.jsonl", "sha256": "ef"})
