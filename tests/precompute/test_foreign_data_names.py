"""OpenRLHF's and TRL's ways to name data, where kto-precompute reads it otherwise: the refusal
names the flag that reads it (`--data`, `--prompt-column`), docs/migrating.md "From axolotl or
OpenRLHF"."""

from __future__ import annotations

import pytest

from kto.formats.errors import InputError


def test_dataset_given_a_file_or_hub_id_without_dataset_info_names_data(tmp_path):
    """`--dataset data.jsonl` / `--dataset ORG/NAME` (LLaMA-Factory's entry NAME) with no
    dataset_info.json said only "no such file"; it names --data now."""
    from kto.precompute.inputs.dataset_info import load_datasets

    rows = tmp_path / "rows.jsonl"
    rows.write_text("{}\n")
    for name, says in ((str(rows), f"give --data {rows}"), ("Anthropic/hh-rlhf", "give --data hf:Anthropic/hh-rlhf:SPLIT")):
        with pytest.raises(InputError) as e:
            load_datasets(name, tmp_path / "data")
        assert str(e.value).startswith(f"--dataset-dir {tmp_path / 'data'}: dataset_info.json: no such file; ") and says in str(e.value)
    with pytest.raises(InputError) as e:
        load_datasets("kto_en_demo", tmp_path / "data")
    assert str(e.value) == f"--dataset-dir {tmp_path / 'data'}: dataset_info.json: no such file"


def test_column_errors_name_the_column_flags(tmp_path):
    """OpenRLHF's input/output/label and argilla's instruction/completion/label: the refusal
    names --prompt-column and --completion-column, which read them."""
    from kto.precompute.inputs.examples import ColumnMap, shaped_examples

    for record in ({"input": "a", "output": "b", "label": True}, {"instruction": "a", "completion": "b", "label": True}):
        with pytest.raises(InputError) as e:
            shaped_examples(record, ColumnMap(), "r1", "f.jsonl:1", set(record))
        assert "other names: --prompt-column NAME --completion-column NAME --label-column NAME" in str(e.value)
