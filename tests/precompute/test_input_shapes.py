"""Inputs whose rows, keys or files say one thing twice: each is refused in one line naming the
file, the row and the column, where the last one (or the first) used to win without a word.
Also --id-column '' (no id column) and a null label cell."""

from __future__ import annotations

import json
import os
import shutil

import pyarrow as pa
import pytest

from kto.formats.errors import InputError
from kto.precompute.inputs.alpaca import AlpacaMap
from kto.precompute.inputs.examples import ColumnMap, ShareGPTMap
from kto.precompute.inputs.records import read_examples, read_inputs

GOOD = {"prompt": "Hi", "completion": "Hello!", "label": True}
OTHER = {"prompt": "Bye", "completion": "See you.", "label": False}
SFT = [{"role": "user", "content": "SFT Hi"}, {"role": "assistant", "content": "SFT answer"}]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def error_of(paths, columns=None, sharegpt=None) -> str:
    with pytest.raises(InputError) as info:
        read_examples(paths, columns or ColumnMap(), sharegpt or ShareGPTMap())
    message = str(info.value)
    assert "\n" not in message
    return message


# ---- two row shapes in one row -------------------------------------------------------------------


def test_trl_columns_beside_a_messages_column_are_refused(tmp_path):
    """TRL's prompt/completion/label plus an SFT `messages` column: the messages used to win."""
    path = write_jsonl(tmp_path / "both.jsonl", [{**GOOD, "messages": SFT}, {**OTHER, "messages": SFT}])
    assert error_of([path]) == (
        "both.jsonl: row 1: the row holds two shapes, 'prompt'+'completion' (TRL unpaired) and 'messages' (LLaMA-Factory), "
        "and either could be the one meant; drop one from the file (or point --messages-column at a column the file does not have)"
    )
    # The way out the message names: --messages-column pointed elsewhere reads the TRL columns.
    examples = read_examples([path], ColumnMap(messages="no_such_column"))
    assert [(e.prompt, e.completion, e.label) for e in examples] == [("Hi", "Hello!", True), ("Bye", "See you.", False)]


def test_trl_columns_beside_a_sharegpt_conversation_are_refused(tmp_path):
    turns = [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]
    path = write_jsonl(tmp_path / "both.jsonl", [{**GOOD, "conversations": turns}, OTHER])
    message = error_of([path])
    assert message.startswith("both.jsonl: row 1: the row holds two shapes, 'prompt'+'completion' (TRL unpaired) and 'conversations' (ShareGPT)")


def test_one_shape_per_row_is_still_read(tmp_path):
    """A file mixing shapes row by row (nulls in the columns a row does not use) and ShareGPT's
    own paired shape (conversations + chosen + rejected) are one shape per row."""
    turns = [{"from": "human", "value": "q"}]
    rows = [
        {**GOOD, "messages": None},
        {"prompt": None, "completion": None, "label": False, "messages": SFT},
        {"conversations": turns, "chosen": {"from": "gpt", "value": "yes"}, "rejected": {"from": "gpt", "value": "no"}},
    ]
    examples = read_examples([write_jsonl(tmp_path / "mixed.jsonl", rows)])
    assert [e.id for e in examples] == ["mixed.jsonl:1", "mixed.jsonl:2", "mixed.jsonl:3:chosen", "mixed.jsonl:3:rejected"]
    assert examples[1].completion == ({"role": "assistant", "content": "SFT answer"},)


# ---- a key or column named twice ---------------------------------------------------------------


def test_a_key_twice_in_a_jsonl_object_is_refused(tmp_path):
    path = tmp_path / "dup.jsonl"
    path.write_text(json.dumps(GOOD) + "\n" + json.dumps(OTHER) + '\n{"prompt": "Hi", "completion": "Yo", "label": true, "label": false}\n')
    assert error_of([path]) == "dup.jsonl: row 3: key 'label' appears twice in one object (JSON keeps the last one silently); keep one"


def test_a_key_twice_in_a_nested_message_is_refused(tmp_path):
    path = tmp_path / "dup.jsonl"
    row = '{"prompt": [{"role": "user", "content": "a", "content": "b"}], "completion": [{"role": "assistant", "content": "c"}], "label": true}'
    path.write_text(json.dumps(GOOD) + "\n" + row + "\n")
    assert error_of([path]).startswith("dup.jsonl: row 2: key 'content' appears twice in one object")


def test_a_key_twice_in_a_json_array_names_its_row(tmp_path):
    """The row is found even when an earlier row holds an object equal to the repeated one
    as JSON keeps it ({"role": "user", "content": "b"})."""
    path = tmp_path / "dup.json"
    first = '{"prompt": [{"role": "user", "content": "b"}], "completion": [{"role": "assistant", "content": "c"}], "label": true}'
    third = '{"prompt": [{"role": "user", "content": "a", "content": "b"}], "completion": [{"role": "assistant", "content": "c"}], "label": true}'
    path.write_text("[\n" + ",\n".join([first, json.dumps(OTHER), third]) + "\n]")
    assert error_of([path]).startswith("dup.json: row 3: key 'content' appears twice in one object")


def test_a_csv_column_named_twice_is_refused(tmp_path):
    path = tmp_path / "dup.csv"
    path.write_text("prompt,completion,label,label\nHi,Hello!,true,false\nBye,See you.,false,true\n")
    assert error_of([path]) == "dup.csv: header: column 'label' appears twice (columns 3 and 4); rename or drop one"


def test_unnamed_trailing_csv_columns_are_not_a_column_named_twice(tmp_path):
    """Spreadsheet exports end each line with `,,`: two unnamed columns, which no column map can
    read, were refused as one column named twice."""
    path = tmp_path / "trail.csv"
    path.write_text("prompt,completion,label,,\nHi,Hello!,true,,\nBye,See you.,false,,\n")
    examples = read_examples([path])
    assert [(e.prompt, e.completion, e.label) for e in examples] == [("Hi", "Hello!", True), ("Bye", "See you.", False)]


def test_an_arrow_column_named_twice_is_refused(tmp_path):
    """Arrow IPC allows two fields of one name (Parquet's reader refuses them itself)."""
    columns = [pa.array(["Hi", "Bye"]), pa.array(["Hello!", "See you."]), pa.array([True, False]), pa.array([False, True])]
    table = pa.Table.from_arrays(columns, names=["prompt", "completion", "label", "label"])
    with pa.ipc.new_file(tmp_path / "dup.arrow", table.schema) as writer:
        writer.write_table(table)
    assert error_of([tmp_path / "dup.arrow"]) == "dup.arrow: schema: column 'label' appears twice (columns 3 and 4); rename or drop one"


# ---- one input given twice ------------------------------------------------------------------------


def test_one_file_through_a_link_is_refused(tmp_path):
    path = write_jsonl(tmp_path / "data.jsonl", [GOOD, OTHER])
    os.symlink(path, tmp_path / "link.jsonl")
    message = error_of([path, tmp_path / "link.jsonl"])
    assert message == (
        f"--data {tmp_path / 'link.jsonl'}: the same file as --data {path} ({path}); one file given twice would read every row twice; give it once"
    )


def test_a_byte_identical_copy_is_refused_with_the_recorded_sha256(tmp_path):
    path = write_jsonl(tmp_path / "data.jsonl", [GOOD, OTHER])
    shutil.copy(path, tmp_path / "copy.jsonl")
    with pytest.raises(InputError) as info:
        read_inputs([path, tmp_path / "copy.jsonl"])
    sha = read_inputs([path])[1][0]["sha256"]  # what the manifest records of the input
    assert str(info.value) == (
        f"--data {tmp_path / 'copy.jsonl'}: the same bytes (sha256 {sha[:16]}…) as --data {path}; one input given twice would read every row twice; give it once"
    )


def test_the_same_path_twice_is_still_refused(tmp_path):
    path = write_jsonl(tmp_path / "data.jsonl", [GOOD, OTHER])
    assert error_of([path, path]).startswith(f"--data {path}: the same file as --data {path} ({path})")


# ---- a null label, --id-column '' ---------------------------------------------------------------


def test_a_null_kto_tag_is_named_null_not_missing(tmp_path):
    turns = [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]
    rows = [{"conversations": turns, "kto_tag": True}, {"conversations": turns, "kto_tag": None}]
    assert error_of([write_jsonl(tmp_path / "null.jsonl", rows)]) == "null.jsonl: row 2: 'kto_tag' is null in this row; expected a label (true or false)"
    alpaca_rows = [{"instruction": "q", "output": "a", "kto_tag": True}, {"instruction": "q", "output": "b", "kto_tag": None}]
    with pytest.raises(InputError, match=r"^alp.jsonl: row 2: 'kto_tag' is null in this row; expected a label \(true or false\)$"):
        read_examples([write_jsonl(tmp_path / "alp.jsonl", alpaca_rows)], alpaca=AlpacaMap())


def test_an_empty_id_column_names_rows_file_and_row(tmp_path):
    """Ids shared by several rows (a prompt id over sampled answers) are refused with the way
    out; --id-column '' then reads no id column."""
    path = write_jsonl(tmp_path / "ids.jsonl", [{**GOOD, "id": 0}, {**OTHER, "id": 0}])
    assert error_of([path]) == (
        "duplicate id '0': ids.jsonl: row 1 and ids.jsonl: row 2; ids come from the id column: --id-column '' reads none and names each row FILE:ROW"
    )
    assert [e.id for e in read_examples([path], ColumnMap(id=""))] == ["ids.jsonl:1", "ids.jsonl:2"]
    assert ColumnMap(id="").as_dict()["id"] == ""  # another fingerprint: the ids differ
    with pytest.raises(InputError, match="prompt must be a non-empty column name"):
        ColumnMap(prompt="")


def test_an_empty_id_column_reads_no_column_named_empty(tmp_path):
    """A CSV header with an empty name is a column "" (e.g. pandas' unnamed index): not the ids."""
    path = tmp_path / "ids.csv"
    path.write_text(",prompt,completion,label\n0,Hi,Hello!,true\n0,Bye,See you.,false\n")
    assert [e.id for e in read_examples([path], ColumnMap(id=""))] == ["ids.csv:1", "ids.csv:2"]


def test_a_pair_beside_an_unlabelled_messages_column_is_read_as_the_pair(tmp_path):
    """ultrafeedback_binarized-style rows carry the SFT conversation in `messages` beside the
    pair: without a label it is no KTO row, so the pair is the one shape (refused as two before,
    with advice that led to "missing column 'label'")."""
    user = [{"role": "user", "content": "Hi"}]
    row = {
        "prompt": user,
        "chosen": [{"role": "assistant", "content": "Hello!"}],
        "rejected": [{"role": "assistant", "content": "Go."}],
        "messages": user + [{"role": "assistant", "content": "Hello!"}],
    }
    path = tmp_path / "uf.jsonl"
    path.write_text(json.dumps(row) + "\n" + json.dumps({**row, "prompt": [{"role": "user", "content": "Bye"}]}) + "\n")
    examples = read_examples([path])
    assert [(e.id, e.label, e.completion[0]["content"]) for e in examples] == [
        ("uf.jsonl:1:chosen", True, "Hello!"),
        ("uf.jsonl:1:rejected", False, "Go."),
        ("uf.jsonl:2:chosen", True, "Hello!"),
        ("uf.jsonl:2:rejected", False, "Go."),
    ]
    labelled = tmp_path / "both.jsonl"
    labelled.write_text(json.dumps({**row, "label": True}) + "\n")
    with pytest.raises(InputError, match="the row holds two shapes"):
        read_examples([labelled])


def test_files_of_one_name_in_two_folders_get_ids_told_apart_by_the_folder(tmp_path):
    """train/data.jsonl and more/data.jsonl: ids data.jsonl:1 for both were refused as one id
    twice, so two folders' data could not be read together without an id column."""
    (tmp_path / "train").mkdir(), (tmp_path / "more").mkdir()
    a = write_jsonl(tmp_path / "train" / "data.jsonl", [GOOD, OTHER])
    b = write_jsonl(tmp_path / "more" / "data.jsonl", [OTHER, GOOD])
    examples = read_examples([a, b])
    assert [e.id for e in examples] == ["train/data.jsonl:1", "train/data.jsonl:2", "more/data.jsonl:1", "more/data.jsonl:2"]
    assert examples[2].source == "more/data.jsonl: row 1"


def test_input_names_take_the_shortest_end_that_tells_files_apart(tmp_path):
    from kto.precompute.inputs.records import input_names

    paths = [tmp_path / "x" / "a" / "d.json", tmp_path / "y" / "a" / "d.json", tmp_path / "e.json", "hf:org/name:train"]
    assert input_names(paths) == ["x/a/d.json", "y/a/d.json", "e.json", None]
    # One path twice (refused before any row is read, check_distinct_files) looped forever here.
    assert input_names([tmp_path / "d.json", tmp_path / "d.json"]) == [str(tmp_path / "d.json")] * 2
