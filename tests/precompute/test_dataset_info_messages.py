"""dataset_info.json refusals name the entry as the file or flag wrote it: an entry given twice
(LLaMA-Factory's upsampling, `dataset: a,a`) is refused naming `dataset`, not two `--data` the user
never wrote; num_samples says what to give instead; a --config file's message is not garbled."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import write_rows

from kto.formats.errors import InputError
from kto.precompute.inputs.dataset_info import load_datasets

ROW = {"prompt": "Q?", "completion": " A.", "label": True}


def data_dir(tmp_path: Path, **extra) -> Path:
    d = tmp_path / "data"
    d.mkdir()
    write_rows(d / "a.jsonl", [ROW])
    entries = {"a": {"file_name": "a.jsonl"}, "b": {"file_name": "a.jsonl"}, "ns": {"file_name": "a.jsonl", "num_samples": 10}}
    (d / "dataset_info.json").write_text(json.dumps({**entries, **extra}))
    return d


def test_an_entry_named_twice_is_refused_naming_the_dataset_list(tmp_path):
    d = data_dir(tmp_path)
    with pytest.raises(InputError) as caught:
        load_datasets("a,a", d)
    assert str(caught.value) == (
        "--dataset a,a: a is named twice; LLaMA-Factory reads a repeated entry twice (upsampling it), kto-precompute reads each file once: name it once"
    )


def test_two_entries_of_one_file_are_refused_naming_both(tmp_path):
    d = data_dir(tmp_path)
    with pytest.raises(InputError) as caught:
        load_datasets("a,b", d)
    assert str(caught.value) == (f"--dataset a,b: a and b read the same file {d / 'a.jsonl'}, which would read every row twice: name one of them")


def test_num_samples_says_what_to_give(tmp_path):
    d = data_dir(tmp_path)
    with pytest.raises(InputError) as caught:
        load_datasets("ns", d)
    assert str(caught.value) == (
        f"--dataset ns: entry ns of {d / 'dataset_info.json'}: num_samples (LLaMA-Factory's sample of that many rows of the entry) "
        "is not supported here: leave it out and give max_samples: 10 (--max-samples 10), a seeded sample of at most that many rows of each input"
    )


def test_a_config_files_message_names_the_entry_once(tmp_path, tiny_model_dir):
    from kto.precompute.cli import main

    d = data_dir(tmp_path)
    config = tmp_path / "lf.yaml"
    config.write_text(f"model_name_or_path: {tiny_model_dir}\nstage: kto\ndataset: ns\ndataset_dir: {d}\ncache: {tmp_path / 'c'}\n")
    result = CliRunner().invoke(main, ["--config", str(config)])
    assert result.exit_code == 2, result.output
    assert f"--config {config}: dataset ns: entry ns of {d / 'dataset_info.json'}: num_samples" in result.output, result.output
    assert "ns ns" not in result.output
