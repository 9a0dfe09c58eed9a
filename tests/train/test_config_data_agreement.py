"""A config file both commands read, edited between them: kto-train compares the data the
file names (`data`, `dataset` + `dataset_dir`, `dataset_name`) and its `max_samples` with what
the cache's manifest records, as it compares `cutoff_len`, and warns when they differ. Before,
`dataset: kto_en_demo` edited to another entry trained on the old rows under the note
"kto-precompute's keys, ignored by kto-train" alone."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import QUESTIONS, precompute_args

import kto.train.api
import kto.train.cli
from kto.formats.config_data import data_disagreements
from kto.formats.manifest import read_manifest
from kto.precompute.cli import main as precompute
from kto.train.cli import main as train

WARNING = "kto-train: warning:"


def alpaca_rows(flip: bool = False) -> list[dict]:
    return [{"instruction": q, "output": answer, "kto_tag": label != flip} for q, good, bad in QUESTIONS for answer, label in ((good, True), (bad, False))]


@pytest.fixture(scope="module")
def made(tmp_path_factory, tiny_model_dir) -> tuple[Path, Path]:
    """(data dir, cache): entries a and b of data/dataset_info.json; the cache made from
    `--dataset a --max-samples 12`."""
    root = tmp_path_factory.mktemp("lf")
    data = root / "data"
    data.mkdir()
    columns = {"prompt": "instruction", "response": "output", "kto_tag": "kto_tag"}
    (data / "dataset_info.json").write_text(json.dumps({n: {"file_name": f"{n}.jsonl", "columns": columns} for n in ("a", "b")}))
    for name, flip in (("a", False), ("b", True)):
        (data / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in alpaca_rows(flip)))
    cache = root / "cache"
    args = precompute_args(data / "a.jsonl", tiny_model_dir, cache, "--max-samples", "12")
    args = [a for a in args[2:]] + ["--dataset", "a", "--dataset-dir", str(data)]
    result = CliRunner().invoke(precompute, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return data, cache


@pytest.fixture
def captured(monkeypatch):
    """The TrainConfig kto-train builds, without training: the check runs while the file is read."""
    seen = []
    monkeypatch.setattr(kto.train.api, "run", seen.append)
    monkeypatch.setattr(kto.train.cli, "check_paths", lambda cfg: None)
    return seen


def train_with(tmp_path: Path, cache: Path, text: str) -> tuple[Path, str]:
    path = tmp_path / "lf.yaml"
    path.write_text(f"stage: kto\nfinetuning_type: full\ncutoff_len: 64\ncache: {cache}\n{text}")
    result = CliRunner().invoke(train, ["--config", str(path), "--model", "m", "--out", str(tmp_path / "o")])
    assert result.exit_code == 0, result.output
    return path, result.output


def warning_of(path: Path, cache: Path, said: str) -> str:
    return (
        f"kto-train: warning: --config {path}: {said}: the cache {cache} was made with other values than the file's; kto-train "
        f"trains on the cache as it is (rerun kto-precompute --config {path} --overwrite if the file is what you meant)"
    )


def test_the_file_the_cache_was_made_from_is_silent(made, tmp_path, captured):
    data, cache = made
    _, output = train_with(tmp_path, cache, f"dataset: a\ndataset_dir: {data}\nmax_samples: 12\n")
    assert WARNING not in output and len(captured) == 1, output
    # The same file named by --data, and a copy of it elsewhere (the same rows): silent too.
    copy = tmp_path / "copy.jsonl"
    shutil.copy(data / "a.jsonl", copy)
    for named in (data / "a.jsonl", copy):
        _, output = train_with(tmp_path, cache, f"data: {named}\nmax_samples: 12\n")
        assert WARNING not in output, output


def test_another_dataset_entry_is_warned_about(made, tmp_path, captured):
    data, cache = made
    path, output = train_with(tmp_path, cache, f"dataset: b\ndataset_dir: {data}\nmax_samples: 12\n")
    assert warning_of(path, cache, "dataset: b (reads b.jsonl; the cache's inputs: a.jsonl)") in output
    path, output = train_with(tmp_path, cache, f"dataset: a,b\ndataset_dir: {data}\nmax_samples: 12\n")
    assert warning_of(path, cache, "dataset: a,b (reads a.jsonl, b.jsonl; the cache's inputs: a.jsonl)") in output
    assert len(captured) == 2  # a warning: kto-train trains on the cache as it is


def test_another_max_samples_is_warned_about(made, tmp_path, captured):
    data, cache = made
    path, output = train_with(tmp_path, cache, f"dataset: a\ndataset_dir: {data}\nmax_samples: 5\n")
    assert warning_of(path, cache, "max_samples: 5 (the cache's max_samples: 12)") in output
    # The key taken out of a file that names the data: every row, not the cache's sample.
    path, output = train_with(tmp_path, cache, f"dataset: a\ndataset_dir: {data}\n")
    assert warning_of(path, cache, "max_samples: not given, every row (the cache's max_samples: 12)") in output
    path, output = train_with(tmp_path, cache, f"dataset: b\ndataset_dir: {data}\nmax_samples: 1000\n")
    said = "dataset: b (reads b.jsonl; the cache's inputs: a.jsonl); max_samples: 1000 (the cache's max_samples: 12)"
    assert warning_of(path, cache, said) in output


def test_an_entry_file_edited_since_is_left_to_the_input_note(made, tmp_path, captured):
    """The entry's file holding other bytes at the same path is what kto-train's note "made from
    FILE (sha256 …), which has changed since" says when it trains (train/eval_cache.py,
    tests/train/test_cache_identity_checks.py): this check does not say it a second time. The
    manifest records the entry's file by its path, so that note covers it."""
    data, cache = made
    assert read_manifest(cache).input_files() == [(data / "a.jsonl", read_manifest(cache).content.inputs[0]["sha256"])]
    original = (data / "a.jsonl").read_text()
    try:
        (data / "a.jsonl").write_text("".join(json.dumps(r) + "\n" for r in alpaca_rows(flip=True)))
        _, output = train_with(tmp_path, cache, f"dataset: a\ndataset_dir: {data}\nmax_samples: 12\n")
        assert WARNING not in output, output
    finally:
        (data / "a.jsonl").write_text(original)


def test_a_file_of_the_same_name_with_other_bytes_is_named_by_its_sha256(made, tmp_path, captured):
    data, cache = made
    other = tmp_path / "elsewhere"
    other.mkdir()
    (other / "a.jsonl").write_text((data / "b.jsonl").read_text())
    recorded = read_manifest(cache).content.inputs[0]["sha256"]
    from kto.formats.files import sha256_file

    now = sha256_file(other / "a.jsonl")
    path, output = train_with(tmp_path, cache, f"data: {other / 'a.jsonl'}\nmax_samples: 12\n")
    said = f"data: {other / 'a.jsonl'} (reads a.jsonl, sha256 {now[:12]}…; the cache's inputs: a.jsonl, sha256 {recorded[:12]}…)"
    assert warning_of(path, cache, said) in output


HUB = {"name": "hf:org/kto:train", "config": None, "split": "train", "dataset": "org/kto", "revision": "0" * 40}


@pytest.mark.parametrize(
    "values, said",
    [
        ({"dataset_name": "org/kto"}, None),
        ({"dataset_name": "org/kto", "dataset_train_split": "train"}, None),
        ({"dataset_name": "org/other"}, "dataset_name: org/other (reads hf:org/other:train; the cache's inputs: hf:org/kto:train)"),
        ({"dataset_name": "org/kto", "dataset_train_split": "test"}, "dataset_name: org/kto (reads hf:org/kto:test; the cache's inputs: hf:org/kto:train)"),
        ({"data": "hf:org/kto:train"}, None),
        ({"data": ["hf:org/kto:en:train"]}, "data: hf:org/kto:en:train (reads hf:org/kto:en:train; the cache's inputs: hf:org/kto:train)"),
    ],
)
def test_hub_datasets_compare_by_id_config_and_split(values, said):
    """A hub input is compared by dataset, config and split (its revision may move: the same rows)."""
    found = data_disagreements(values, {"inputs": [HUB]}, [None])
    assert found == ([said] if said else [])


def test_a_dataset_info_hub_entry_compares_its_subset(tmp_path):
    (tmp_path / "dataset_info.json").write_text(json.dumps({"h": {"hf_hub_url": "org/kto", "subset": "en"}, "g": {"hf_hub_url": "org/kto"}}))
    values = {"dataset": "h", "dataset_dir": str(tmp_path)}
    said = "dataset: h (reads hf:org/kto:en:train; the cache's inputs: hf:org/kto:train)"
    assert data_disagreements(values, {"inputs": [HUB]}, [None]) == [said]
    assert data_disagreements({**values, "dataset": "g"}, {"inputs": [HUB]}, [None]) == []


def test_what_cannot_be_resolved_is_not_claimed(tmp_path):
    """No dataset_info.json, an unknown entry, a file not there: kto-precompute refuses those in
    its own words, and kto-train cannot tell what they would read: no warning."""
    inputs = {"inputs": [{"name": "a.jsonl", "sha256": "0" * 64}]}
    for values in ({"dataset": "a", "dataset_dir": str(tmp_path)}, {"data": str(tmp_path / "gone.jsonl")}, {"max_length": 64}):
        assert data_disagreements(values, inputs, [None]) == []


def test_resume_of_a_run_made_while_flash_attn_was_ignored_keeps_sdpa(tmp_path, captured, monkeypatch):
    """`flash_attn: fa2` was ignored (the run trained with sdpa); read now as attn_implementation
    flash_attention_2, a resume of such a run keeps sdpa, said in a line (the resume refuses a
    changed attention kernel). A new run of the file takes flash_attention_2 (flash-attn taken
    as installed: without it the file is refused, tests/formats/test_config_flash_attn_overwrite_cache.py)."""
    from kto.formats.runrecord import write_run_config

    monkeypatch.setattr("kto.formats.config_names.installed", lambda module: True)

    path = tmp_path / "run.yaml"
    path.write_text("flash_attn: fa2\nlearning_rate: 1.0e-6\nfinetuning_type: full\n")
    args = ["--config", str(path), "--cache", "c", "--model", "m", "--out", str(tmp_path / "o")]
    assert CliRunner().invoke(train, args).exit_code == 0 and captured.pop().attn_implementation == "flash_attention_2"
    (tmp_path / "o").mkdir()
    write_run_config(tmp_path / "o", {"attn_implementation": "sdpa"}, {})
    result = CliRunner().invoke(train, [*args, "--resume"])
    assert result.exit_code == 0, result.output
    assert captured.pop().attn_implementation == "sdpa"
    assert "attn_implementation: the run was recorded with 'sdpa', before flash_attn was read: resumed so, not 'flash_attention_2'" in result.output
