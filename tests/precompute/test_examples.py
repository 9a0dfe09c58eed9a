"""Input readers: every format, every row shape, and one test per class of bad input.

Every bad-input test checks the message names the file and the 1-based row and is one line,
because the CLIs print it verbatim as the only thing the user sees.
"""

from __future__ import annotations

import hashlib
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from kto.formats.errors import InputError
from kto.precompute.inputs.examples import ColumnMap, Example
from kto.precompute.inputs.hub import COLUMNAR_READING
from kto.precompute.inputs.records import file_sha256, read_examples, read_inputs

GOOD = {"prompt": "Hi", "completion": "Hello!", "label": True}
USER = {"role": "user", "content": "Hi"}
ASSISTANT = {"role": "assistant", "content": "Hello!"}


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def error_of(paths, columns=None) -> str:
    with pytest.raises(InputError) as info:
        read_examples(paths, columns or ColumnMap())
    message = str(info.value)
    assert "\n" not in message
    return message


# ---- shapes --------------------------------------------------------------------------------


def test_trl_unpaired_text(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [GOOD, {"prompt": "Q", "completion": "A", "label": False}])
    assert read_examples([path]) == [
        Example("d.jsonl:1", "Hi", "Hello!", True, "d.jsonl: row 1"),
        Example("d.jsonl:2", "Q", "A", False, "d.jsonl: row 2"),
    ]


def test_trl_unpaired_conversational(tmp_path):
    system = {"role": "system", "content": "Be brief."}
    row = {"prompt": [system, USER], "completion": [ASSISTANT], "label": "no"}
    [ex, _] = read_examples([write_jsonl(tmp_path / "d.jsonl", [row, GOOD])])
    assert ex.conversational and ex.prompt == (system, USER) and ex.completion == (ASSISTANT,)
    assert ex.label is False


def test_llama_factory_messages_with_kto_tag(tmp_path):
    turns = [USER, ASSISTANT, {"role": "user", "content": "More"}, {"role": "assistant", "content": "Sure"}]
    rows = [{"messages": turns, "kto_tag": True}, {"messages": [USER, ASSISTANT], "kto_tag": False}]
    first, second = read_examples([write_jsonl(tmp_path / "lf.jsonl", rows)])
    assert first.prompt == tuple(turns[:3]) and first.completion == (turns[3],) and first.label
    assert second.prompt == (USER,) and second.label is False


def test_sharegpt_from_value(tmp_path):
    conv = [
        {"from": "system", "value": "S"},
        {"from": "human", "value": "Q"},
        {"from": "function_call", "value": '{"name": "f", "arguments": {}}'},
        {"from": "observation", "value": "42"},
        {"from": "gpt", "value": "A"},
    ]
    [ex, _] = read_examples([write_jsonl(tmp_path / "sg.jsonl", [{"messages": conv, "label": 1}, GOOD])])
    assert [m["role"] for m in ex.prompt] == ["system", "user", "assistant", "tool"]
    assert ex.prompt[2]["tool_calls"] == [{"type": "function", "function": {"name": "f", "arguments": {}}}]
    assert ex.completion == ({"role": "assistant", "content": "A"},)


def test_paired_gives_two_rows_with_labels(tmp_path):
    rows = [
        {"prompt": "P", "chosen": "good", "rejected": "bad"},
        {"id": 7, "prompt": [USER], "chosen": [ASSISTANT], "rejected": [{"role": "assistant", "content": "No"}]},
    ]
    out = read_examples([write_jsonl(tmp_path / "pairs.jsonl", rows)])
    assert [(e.id, e.completion if isinstance(e.completion, str) else e.completion[0]["content"], e.label) for e in out] == [
        ("pairs.jsonl:1:chosen", "good", True),
        ("pairs.jsonl:1:rejected", "bad", False),
        ("7:chosen", "Hello!", True),
        ("7:rejected", "No", False),
    ]
    assert out[0].prompt == out[1].prompt == "P" and out[2].source == "pairs.jsonl: row 2"


def test_paired_implicit_prompt_is_common_prefix(tmp_path):
    no = {"role": "assistant", "content": "No"}
    row = {"chosen": [USER, ASSISTANT], "rejected": [USER, no]}
    chosen, rejected = read_examples([write_jsonl(tmp_path / "p.jsonl", [row])])
    assert chosen.prompt == rejected.prompt == (USER,)
    assert (chosen.completion, rejected.completion) == ((ASSISTANT,), (no,))


def test_content_parts_are_joined(tmp_path):
    parts = [{"type": "text", "text": "Hel"}, {"type": "text", "text": "lo"}]
    row = {"prompt": [{"role": "user", "content": parts}], "completion": [ASSISTANT], "label": True}
    [ex, _] = read_examples([write_jsonl(tmp_path / "d.jsonl", [row, GOOD])])
    assert ex.prompt == ({"role": "user", "content": "Hello"},)


@pytest.mark.parametrize(
    "value,expected",
    [
        (True, True),
        (0, False),
        (1, True),
        (" YES ", True),
        ("n", False),
        ("T", True),
        ("0", False),
        ("Desirable", True),
        ("undesirable", False),
        ("false", False),
        (1.0, True),  # a float column: pandas makes one of an int column with a null
        (0.0, False),
        ("1.0", True),  # the same column written to CSV
        ("0.0", False),
    ],
)
def test_label_spellings(tmp_path, value, expected):
    [ex, _] = read_examples([write_jsonl(tmp_path / "d.jsonl", [{**GOOD, "label": value}, GOOD])])
    assert ex.label is expected


# ---- formats -------------------------------------------------------------------------------


def test_jsonl_blank_lines_skipped_and_rows_are_line_numbers(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps(GOOD) + "\n\n  \n" + json.dumps(GOOD) + "\n")
    assert [e.id for e in read_examples([path])] == ["d.jsonl:1", "d.jsonl:4"]


def test_json_array(tmp_path):
    path = tmp_path / "d.json"
    path.write_text(json.dumps([GOOD, {**GOOD, "label": "false"}]))
    assert [(e.id, e.label) for e in read_examples([path])] == [("d.json:1", True), ("d.json:2", False)]


def test_json_lines_under_a_json_name(tmp_path):
    """datasets' Dataset.to_json writes JSON Lines to a .json file by default, and LLaMA-Factory
    reads it: so does --data (rows are line numbers, as in a .jsonl); a malformed line is named."""
    datasets = pytest.importorskip("datasets")
    path = tmp_path / "d.json"
    datasets.Dataset.from_list([GOOD, {**GOOD, "label": False}]).to_json(str(path))
    assert [(e.id, e.label) for e in read_examples([path])] == [("d.json:1", True), ("d.json:2", False)]
    path.write_text(json.dumps(GOOD) + "\n{oops\n")
    assert error_of([path]).startswith("d.json: row 2: malformed JSON")
    path.write_text(json.dumps({"train": [GOOD, GOOD]}, indent=2))  # a pretty-printed object: not JSON Lines
    assert error_of([path]) == "d.json: expected a JSON array of objects, got an object"


def test_parquet_with_mixed_shapes_and_nulls(tmp_path):
    # A Parquet file mixing shapes has nulls in the columns a row does not use.
    rows = [GOOD, {"prompt": "P", "chosen": "c", "rejected": "r"}, {"messages": [USER, ASSISTANT], "label": False}]
    keys = {k for r in rows for k in r}  # from_pylist takes its columns from the first row only
    pq.write_table(pa.Table.from_pylist([{k: r.get(k) for k in keys} for r in rows]), tmp_path / "d.parquet")
    out = read_examples([tmp_path / "d.parquet"])
    assert [e.id for e in out] == ["d.parquet:1", "d.parquet:2:chosen", "d.parquet:2:rejected", "d.parquet:3"]
    assert out[3].prompt == (USER,) and out[3].label is False


def test_a_parquet_float_label_column_reads_as_labels(tmp_path):
    """pandas writes an int label column that held a null as float64 (1.0, 0.0); it was refused
    row by row as not boolean-like, though 1 and 0 are taken."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "d.parquet"
    pq.write_table(pa.table({"prompt": ["Q", "R"], "completion": ["A", "B"], "label": pa.array([1.0, 0.0], pa.float64())}), path)
    assert [ex.label for ex in read_examples([path])] == [True, False]


def test_csv_label_arrives_as_text(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text('prompt,completion,label\nHi,"Hello, there",true\nQ,A,0\n')
    out = read_examples([path])
    assert [(e.id, e.completion, e.label) for e in out] == [("d.csv:1", "Hello, there", True), ("d.csv:2", "A", False)]


@pytest.mark.parametrize("writer", ["file", "stream"])
def test_arrow_file_and_stream(tmp_path, writer):
    table = pa.Table.from_pylist([GOOD, {**GOOD, "label": False}])
    path = tmp_path / "d.arrow"
    new = pa.ipc.new_file if writer == "file" else pa.ipc.new_stream
    with pa.OSFile(str(path), "wb") as sink, new(sink, table.schema) as w:
        w.write_table(table)
    assert [e.label for e in read_examples([path])] == [True, False]


def test_id_column_present_or_file_and_row(tmp_path):
    a = write_jsonl(tmp_path / "a.jsonl", [{**GOOD, "id": 10}, GOOD])
    b = write_jsonl(tmp_path / "b.jsonl", [{**GOOD, "id": "x"}])
    out = read_examples([a, str(b)])  # files in the given order, rows in file order
    assert [e.id for e in out] == ["10", "a.jsonl:2", "x"]
    assert [e.source for e in out] == ["a.jsonl: row 1", "a.jsonl: row 2", "b.jsonl: row 1"]


@pytest.mark.parametrize("value, kind", [({"a": 1}, "an object"), ([1, 2], "a list"), (True, "bool")])
def test_an_id_that_is_not_text_or_a_number_is_refused(tmp_path, value, kind):
    """It was stored as Python's text of the value ("{'a': 1}"), silently."""
    path = write_jsonl(tmp_path / "a.jsonl", [{**GOOD, "id": value}, GOOD])
    assert error_of([path]) == f"a.jsonl: row 1: column 'id': expected text or a number as the id, got {kind}"


def test_column_overrides(tmp_path):
    cols = ColumnMap(prompt="q", completion="a", label="ok", id="uid")
    rows = [{"uid": "u1", "q": "Q", "a": "A", "ok": "y"}, {"uid": "u2", "q": "Q", "a": "B", "ok": "n"}]
    out = read_examples([write_jsonl(tmp_path / "d.jsonl", rows)], cols)
    assert [(e.id, e.completion, e.label) for e in out] == [("u1", "A", True), ("u2", "B", False)]
    assert cols.as_dict()["prompt"] == "q" and set(cols.as_dict()) == {"prompt", "completion", "label", "messages", "chosen", "rejected", "id"}


def test_file_sha256_matches_hashlib(tmp_path):
    path = tmp_path / "blob.bin"
    path.write_bytes(b"x" * (3 << 20) + b"tail")  # spans several 1 MiB blocks
    assert file_sha256(path) == hashlib.sha256(path.read_bytes()).hexdigest()


# ---- bad input: one case per class, each naming file and row ------------------------------

BAD_ROWS = {
    "missing_prompt": ({"completion": "A", "label": True}, "missing column 'prompt'"),
    "missing_completion": ({"prompt": "Q", "label": True}, "missing column 'completion'"),
    "missing_label": ({"prompt": "Q", "completion": "A"}, "missing column 'label'"),
    "missing_rejected": ({"prompt": "Q", "chosen": "A"}, "missing column 'rejected'"),
    # A Parquet file has every column; its row's empty cell is null, not a missing column.
    "null_completion": ({"prompt": "Q", "completion": None, "label": True}, "'completion' is null in this row"),
    "null_rejected": ({"prompt": "Q", "chosen": "A", "rejected": None}, "'rejected' is null in this row"),
    "no_known_columns": ({"text": "hello"}, "no known columns"),
    "label_not_boolean": ({**GOOD, "label": "maybe"}, "label 'maybe' is not boolean-like"),
    "label_null": ({**GOOD, "label": None}, "'label' is null in this row"),
    "label_two": ({**GOOD, "label": 2}, "label 2 is not boolean-like"),
    "label_half": ({**GOOD, "label": 0.5}, "label 0.5 is not boolean-like"),
    # An empty or blank completion text trains (test_empty_turns.py); no assistant message does not.
    "empty_completion": ({"prompt": [USER], "completion": [], "label": 1}, "column 'completion': empty completion (no assistant message)"),
    "empty_prompt": ({**GOOD, "prompt": ""}, "empty prompt"),
    "blank_prompt": ({**GOOD, "prompt": "  \n"}, "column 'prompt': empty prompt"),
    "content_number": ({"prompt": [{"role": "user", "content": 5}], "completion": [ASSISTANT], "label": 1}, "content is not text (got int)"),
    "prompt_dict": ({**GOOD, "prompt": {"text": "Q"}}, "column 'prompt': content is not text"),
    "non_text_part": (
        {"prompt": [{"role": "user", "content": [{"type": "image_url", "image_url": "u"}]}], "completion": [ASSISTANT], "label": 1},
        "content part 1 is 'image_url', not text",
    ),
    "unknown_role": ({"messages": [{"role": "bot", "content": "x"}, ASSISTANT], "label": 1}, "unknown role 'bot'"),
    "mixed_text_and_messages": ({"prompt": "Q", "completion": [ASSISTANT], "label": 1}, "both must be text or both lists of messages"),
    "completion_not_assistant": ({"prompt": [USER], "completion": [USER], "label": 1}, "expected 'assistant'"),
    "no_assistant_turn": ({"messages": [USER], "label": 1}, "conversation has no assistant turn"),
    "last_not_assistant": ({"messages": [USER, ASSISTANT, USER], "label": 1}, "last message is 'user'"),
    "paired_text_without_prompt": ({"chosen": "A", "rejected": "B"}, "missing column 'prompt'"),
    # JSON's "\ud83d" without its low half parses to a lone surrogate, which no tokenizer encodes.
    "lone_surrogate_text": ({**GOOD, "completion": "Hi \ud83d!"}, "lone surrogate '\\ud83d' at character 4"),
    "lone_surrogate_message": (
        {"prompt": [{"role": "user", "content": "\udc00"}], "completion": [ASSISTANT], "label": 1},
        "column 'prompt', message 1: a lone surrogate",
    ),
    "lone_surrogate_id": ({**GOOD, "id": "a\ud800"}, "column 'id': a lone surrogate"),
}


@pytest.mark.parametrize("name", list(BAD_ROWS))
def test_bad_row_names_file_and_row(tmp_path, name):
    row, fragment = BAD_ROWS[name]
    message = error_of([write_jsonl(tmp_path / "bad.jsonl", [GOOD, GOOD, row])])
    assert message.startswith("bad.jsonl: row 3") and fragment in message, message


def test_malformed_jsonl_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(GOOD) + '\n\n{"prompt": \n')
    assert error_of([path]).startswith("bad.jsonl: row 3: malformed JSON")


def test_malformed_json_file(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text('[\n{"prompt": "Q",}\n]')
    assert "bad.json: malformed JSON" in error_of([path]) and "line 2" in error_of([path])


def test_duplicate_ids_name_both_rows(tmp_path):
    a = write_jsonl(tmp_path / "a.jsonl", [{**GOOD, "id": "same"}, GOOD])
    b = write_jsonl(tmp_path / "b.jsonl", [GOOD, {**GOOD, "id": "same"}])
    message = error_of([a, b])
    assert "duplicate id 'same'" in message and "a.jsonl: row 1" in message and "b.jsonl: row 2" in message


def test_fewer_than_two_examples(tmp_path):
    path = write_jsonl(tmp_path / "one.jsonl", [GOOD])
    message = error_of([path])
    assert "need at least 2 examples, got 1" in message and "one.jsonl" in message


def test_missing_file_and_unknown_extension(tmp_path):
    assert "nope.jsonl: no such file" in error_of([tmp_path / "nope.jsonl"])
    (tmp_path / "d.txt").write_text("x")
    assert "d.txt: unknown file type '.txt'" in error_of([tmp_path / "d.txt"])


def test_deeply_nested_json_is_one_line_not_a_recursion_error(tmp_path):
    deep = "[" * 100_000 + "]" * 100_000
    jsonl = tmp_path / "deep.jsonl"
    jsonl.write_text(json.dumps(GOOD) + "\n" + deep + "\n")
    assert error_of([jsonl]) == "deep.jsonl: row 2: JSON nested too deeply to read"
    array = tmp_path / "deep.json"
    array.write_text(f"[{json.dumps(GOOD)}, {deep}]")
    assert error_of([array]) == "deep.json: JSON nested too deeply to read"


@pytest.mark.parametrize("line, found", [("Q,A,true,extra", 4), ("Q,A", 2)], ids=["too-many", "too-few"])
def test_csv_row_with_the_wrong_number_of_fields(tmp_path, line, found):
    """DictReader would put a surplus field under None or fill a missing one with None."""
    path = tmp_path / "d.csv"
    path.write_text(f"prompt,completion,label\nHi,Hello,true\n{line}\n")
    assert error_of([path]) == f"d.csv: row 2: {found} fields, but the header has 3"


@pytest.mark.parametrize("suffix", [".jsonl", ".json", ".csv", ".parquet", ".arrow"])
def test_inputs_hash_the_bytes_that_were_parsed(tmp_path, suffix, monkeypatch):
    """The file is rewritten while its rows are being checked: the hash is still of what was read."""
    import kto.precompute.inputs.records as examples

    rows = [GOOD, {"prompt": "Q", "completion": "A", "label": False}]
    path = tmp_path / f"d{suffix}"
    if suffix == ".jsonl":
        write_jsonl(path, rows)
    elif suffix == ".json":
        path.write_text(json.dumps(rows))
    elif suffix == ".csv":
        path.write_text("prompt,completion,label\nHi,Hello!,true\nQ,A,false\n")
    elif suffix == ".parquet":
        pq.write_table(pa.Table.from_pylist(rows), path)
    else:
        with pa.ipc.new_file(path, pa.Table.from_pylist(rows).schema) as w:
            w.write_table(pa.Table.from_pylist(rows))
    read = hashlib.sha256(path.read_bytes()).hexdigest()
    real = examples._row_examples

    def rewrite_then_check(*a):
        path.write_bytes(b"changed")
        return real(*a)

    monkeypatch.setattr(examples, "_row_examples", rewrite_then_check)
    parsed, inputs = read_inputs([path])
    assert [e.completion for e in parsed] == ["Hello!", "A"]
    columnar = {"reading": COLUMNAR_READING} if path.suffix in (".parquet", ".arrow") else {}
    assert inputs == [{"name": path.name, "sha256": read, **columnar}]


def test_a_file_name_that_is_not_utf8_is_one_line(tmp_path):
    """Row ids default to `file:row`: a name decoded with surrogateescape would reach Arrow."""
    import os

    name = os.fsdecode(b"d\xff.jsonl")
    path = write_jsonl(tmp_path / name, [GOOD, GOOD])
    message = error_of([path])
    assert "the file name is not valid UTF-8" in message and message.isascii()
