"""LLaMA-Factory-shaped rows read as LLaMA-Factory reads them: function_call turns in any message
column, bare tool schemas, a system column beside a system turn, --max-samples over a folder
entry, and the reading rule in every cache's fingerprint."""

from __future__ import annotations

import json
import shutil

import pytest
from click.testing import CliRunner
from conftest import precompute_args, write_rows

from kto.formats.errors import InputError
from kto.formats.manifest import CacheContent
from kto.precompute.cli import main
from kto.precompute.inputs.dataset_info import load_datasets
from kto.precompute.inputs.examples import READING_RULE
from kto.precompute.inputs.records import RowSample, iter_examples, read_examples

CALL = {"name": "weather", "arguments": {"city": "Paris"}}
WRAPPED = {"type": "function", "function": {"name": "weather", "description": "d", "parameters": {"type": "object"}}}


def sharegpt_turns(call: str = json.dumps(CALL), answer: str = "Sunny.") -> list[dict]:
    return [
        {"from": "human", "value": "Weather?"},
        {"from": "function_call", "value": call},
        {"from": "observation", "value": "sunny"},
        {"from": "gpt", "value": answer},
    ]


def error_of(tmp_path, rows: list[dict]) -> str:
    with pytest.raises(InputError) as caught:
        read_examples([write_rows(tmp_path / "d.jsonl", rows)])
    assert "\n" not in str(caught.value)
    return str(caught.value)


# ---- 1. function_call turns in a `messages` column ----------------------------------------------


def test_a_function_call_turn_in_a_messages_column_is_a_tool_call_as_in_conversations(tmp_path):
    """`messages` + label with ShareGPT turns (no entry) read a function_call turn as plain
    assistant text, its JSON as the words to say; `conversations` read it as tool_calls."""
    messages = read_examples([write_rows(tmp_path / "m.jsonl", [{"messages": sharegpt_turns(), "label": good} for good in (True, False)])])
    conversations = read_examples([write_rows(tmp_path / "c.jsonl", [{"conversations": sharegpt_turns(), "kto_tag": good} for good in (True, False)])])
    assert messages[0].prompt[1] == {"role": "assistant", "content": "", "tool_calls": [{"type": "function", "function": CALL}]}
    assert [(e.prompt, e.completion, e.label) for e in messages] == [(e.prompt, e.completion, e.label) for e in conversations]


def test_a_function_call_turn_that_is_not_a_call_is_refused_in_one_line(tmp_path):
    rows = [{"messages": sharegpt_turns("call weather"), "label": True}]
    assert error_of(tmp_path, rows) == "d.jsonl: row 1: column 'messages', message 2: function call is not JSON (Expecting value at column 1)"
    rows = [{"messages": sharegpt_turns("{}"), "label": True}]
    assert error_of(tmp_path, rows) == 'd.jsonl: row 1: column \'messages\', message 2: a function call must be {"name": ..., "arguments": ...}, got {}'


# ---- 2. tool schemas as chat templates read them -------------------------------------------------


def test_bare_tool_schemas_are_wrapped_and_wrapped_ones_kept(tmp_path):
    bare = {"name": "weather", "description": "d", "parameters": {"type": "object"}}
    rows = [
        {"conversations": sharegpt_turns(), "kto_tag": True, "tools": json.dumps([bare])},  # LLaMA-Factory stores a JSON text
        {"conversations": sharegpt_turns(), "kto_tag": False, "tools": [WRAPPED]},
    ]
    first, second = read_examples([write_rows(tmp_path / "t.jsonl", rows)])
    assert first.tools == second.tools == (WRAPPED,)


@pytest.mark.parametrize(
    "tool",
    [
        {"description": "no name"},
        {"type": "function", "name": "flat"},
        {"type": "function", "function": {"description": "x"}},
        {"name": "f", "parameters": "x"},
    ],
)
def test_a_tool_that_is_neither_shape_is_refused_naming_file_row_and_tool(tmp_path, tool):
    rows = [{"conversations": sharegpt_turns(), "kto_tag": True, "tools": [WRAPPED, tool]}]
    assert error_of(tmp_path, rows).startswith('d.jsonl: row 1: column \'tools\', tool 2: expected a tool schema {"name", "description", "parameters"}')


# ---- 4. a system column beside the conversation's own system turn ---------------------------------


def test_a_system_column_beside_a_system_turn_is_that_turn_when_empty_or_equal(tmp_path):
    """LLaMA-Factory's converter takes the system turn and ignores the column: equal or empty
    columns read as the turn alone (both were refused before)."""
    turns = [{"from": "system", "value": "Be brief."}, *sharegpt_turns()]
    rows = [{"conversations": turns, "kto_tag": True, "system": system} for system in ("Be brief.", "", " Be brief.\n", "  \n")]
    for example in read_examples([write_rows(tmp_path / "s.jsonl", rows)]):
        assert [m["role"] for m in example.prompt] == ["system", "user", "assistant", "tool"] and example.prompt[0]["content"] == "Be brief."


def test_a_system_column_that_differs_from_the_system_turn_is_refused(tmp_path):
    turns = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}]
    rows = [{"messages": turns, "label": True, "system": "Be verbose."}]
    assert error_of(tmp_path, rows) == (
        "d.jsonl: row 1: column 'system': 'Be verbose.' differs from the conversation's own system message 'Be brief.'; keep one (or make them equal)"
    )


# ---- 3. --max-samples over a folder entry as a whole ------------------------------------------------


def folder_entry(tmp_path, files: int = 3, rows: int = 4):
    folder = tmp_path / "parts"
    folder.mkdir()
    for f in range(files):
        chats = [{"conversations": [{"from": "human", "value": f"q{f}.{r}"}, {"from": "gpt", "value": "a"}], "kto_tag": r % 2 == 0} for r in range(rows)]
        write_rows(folder / f"part-{f}.jsonl", chats)
    (tmp_path / "dataset_info.json").write_text(
        json.dumps({"kto": {"file_name": "parts", "formatting": "sharegpt", "columns": {"messages": "conversations", "kto_tag": "kto_tag"}}})
    )
    (tmp_path / "one.jsonl").write_text("")
    return load_datasets("kto", tmp_path)


def test_a_folder_entry_is_one_dataset_for_max_samples(tmp_path):
    """LLaMA-Factory loads a folder's files as one dataset and applies max_samples to it; ours
    kept N rows of each file (3 files, N 5: 12 rows of 12, not 5)."""
    entry = folder_entry(tmp_path)
    assert entry.spans == (3,) and [p.rsplit("/", 1)[-1] for p in entry.data] == ["part-0.jsonl", "part-1.jsonl", "part-2.jsonl"]
    sample = RowSample(5, seed=0, spans=entry.spans)
    kept = [e.id for e in iter_examples(entry.data, sharegpt=entry.sharegpt, sample=sample)]
    assert len(kept) == 5
    order = [(int(i.split("part-")[1][0]), int(i.rsplit(":", 1)[1])) for i in kept]
    assert order == sorted(order)  # files in name order, rows in file order: the concatenation
    assert kept == [e.id for e in iter_examples(entry.data, sharegpt=entry.sharegpt, sample=sample)]
    everything = [e.id for e in iter_examples(entry.data, sharegpt=entry.sharegpt, sample=RowSample(100, seed=0, spans=entry.spans))]
    assert everything == [f"part-{f}.jsonl:{r}" for f in range(3) for r in range(1, 5)]


def test_inputs_outside_the_spans_keep_their_own_draw(tmp_path):
    rows = [(i, {"row": i}) for i in range(50)]
    sample = RowSample(5, seed=3, spans=(2,))
    assert [list(g) for g in sample.groups(4)] == [[0, 1], [2], [3]]
    assert sample.rows(iter(rows), 2) == RowSample(5, seed=3).rows(iter(rows), 2)
    with pytest.raises(ValueError):
        sample.groups(1)


def test_multiple_entries_record_one_span_each(tmp_path):
    folder_entry(tmp_path)
    info = json.loads((tmp_path / "dataset_info.json").read_text())
    write_rows(tmp_path / "single.jsonl", [{"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}], "kto_tag": True}])
    info["single"] = {**info["kto"], "file_name": "single.jsonl"}
    (tmp_path / "dataset_info.json").write_text(json.dumps(info))
    assert load_datasets("kto,single", tmp_path).spans == (3, 1)


# ---- the reading rule in the fingerprint ------------------------------------------------------------


def test_a_cache_made_by_the_earlier_reading_is_not_reused(tmp_path, tiny_model_dir):
    """Every cache records READING_RULE: one made before it (no `reading`) has another
    fingerprint, so kto-precompute refuses to take it for this configuration's cache."""
    data = write_rows(tmp_path / "chat.jsonl", [{"messages": sharegpt_turns(answer=f"Sunny {i}."), "label": i % 2 == 0} for i in range(4)])
    args = precompute_args(data, tiny_model_dir, tmp_path / "cache", "--chat-template", str(_tool_template(tmp_path)))
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    manifest = json.loads((tmp_path / "cache" / "manifest.json").read_text())
    assert manifest["content"]["reading"] == READING_RULE
    old = {k: v for k, v in manifest["content"].items() if k != "reading"}
    assert CacheContent.from_json(old).fingerprint != manifest["fingerprint"] == CacheContent.from_json(manifest["content"]).fingerprint
    shutil.copytree(tmp_path / "cache", tmp_path / "old")
    (tmp_path / "old" / "manifest.json").write_text(json.dumps({**manifest, "content": old, "fingerprint": CacheContent.from_json(old).fingerprint}))
    again = CliRunner().invoke(main, precompute_args(data, tiny_model_dir, tmp_path / "old", "--chat-template", str(_tool_template(tmp_path))))
    assert again.exit_code == 2 and (
        "holds the cache of a different configuration (differs in reading: an earlier kto made it, before its rows were read the current way (README, Input data); "
        "kto-train still reads it, and a run begun on it resumes only on it, so rebuild into another --out to keep such runs resumable)"
        in again.output.strip().splitlines()[-1]
    )


def _tool_template(tmp_path):
    path = tmp_path / "tools.jinja"
    path.write_text(
        "{% for t in tools or [] %}tool {{ t.function.name }}\n{% endfor %}{% for m in messages %}<|im_start|>{{ m.role }}\n"
        "{% for c in m.tool_calls or [] %}<tool_call>{{ c.function.name }}</tool_call>{% endfor %}{{ m.content }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    return path
