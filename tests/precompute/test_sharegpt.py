"""LLaMA-Factory's ShareGPT shape, and the system and tools columns of every conversational shape."""

from __future__ import annotations

import json

import pytest

from kto.formats.errors import InputError
from kto.precompute.inputs.examples import ShareGPTMap
from kto.precompute.inputs.records import read_examples
from kto.precompute.inputs.sharegpt import load_sharegpt_info


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def turn(role, value):
    return {"from": role, "value": value}


def error_of(path, sharegpt=ShareGPTMap()) -> str:
    with pytest.raises(InputError) as info:
        read_examples([path], sharegpt=sharegpt)
    assert "\n" not in str(info.value)
    return str(info.value)


def test_unpaired_rows_with_kto_tag_and_label(tmp_path):
    rows = [
        {"conversations": [turn("system", "Be brief."), turn("human", "Hi"), turn("gpt", "Hello")], "kto_tag": True},
        {"conversations": [turn("human", "Hi"), turn("gpt", "Go away")], "label": "no"},
    ]
    first, second = read_examples([write_jsonl(tmp_path / "sg.jsonl", rows)])
    assert first.prompt == ({"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"})
    assert first.completion == ({"role": "assistant", "content": "Hello"},) and first.label is True
    assert second.id == "sg.jsonl:2" and second.label is False


def test_paired_rows_hold_single_turns_and_tools_run_through(tmp_path):
    call = {"name": "weather", "arguments": {"city": "Paris"}}
    tools = [{"type": "function", "function": {"name": "weather", "parameters": {"type": "object"}}}]
    row = {
        "conversations": [turn("human", "Weather in Paris?"), turn("function_call", json.dumps(call)), turn("observation", "sunny")],
        "chosen": turn("gpt", "It is sunny."),
        "rejected": turn("gpt", "It is snowing."),
        "tools": json.dumps(tools),
        "system": "You can call tools.",
    }
    chosen, rejected = read_examples([write_jsonl(tmp_path / "p.jsonl", [row])])
    assert [m["role"] for m in chosen.prompt] == ["system", "user", "assistant", "tool"]
    assert chosen.prompt[2]["tool_calls"] == [{"type": "function", "function": call}]
    assert (chosen.id, chosen.label, rejected.id, rejected.label) == ("p.jsonl:1:chosen", True, "p.jsonl:1:rejected", False)
    assert chosen.completion[0]["content"] == "It is sunny." and chosen.tools == rejected.tools == tuple(tools)


def test_names_come_from_a_dataset_info_entry(tmp_path):
    info = tmp_path / "dataset_info.json"
    info.write_text(
        json.dumps(
            {
                "mine": {
                    "file_name": "x.json",
                    "formatting": "sharegpt",
                    "columns": {"messages": "dialog", "kto_tag": "good"},
                    "tags": {"role_tag": "role", "content_tag": "text", "user_tag": "person", "assistant_tag": "bot"},
                },
                "other": {"columns": {}},
            }
        )
    )
    smap = load_sharegpt_info(f"{info}#mine")
    # An entry reads a system (or tools) column only when it names one, as LLaMA-Factory does.
    assert (smap.messages, smap.kto_tag, smap.user_tag, smap.system, smap.tools) == ("dialog", "good", "person", "", "")
    row = {"dialog": [{"role": "person", "text": "Hi"}, {"role": "bot", "text": "Yo"}], "good": False}
    [ex] = read_examples([write_jsonl(tmp_path / "d.jsonl", [row, row | {"id": 2}])], sharegpt=smap)[:1]
    assert ex.prompt == ({"role": "user", "content": "Hi"},) and ex.label is False
    assert "2 entries; name one as FILE#NAME" in _info_error(info)
    assert "unknown key(s) ranking" in _info_error({"ranking": True, "columns": {"ranking": True}})


def _info_error(spec) -> str:
    with pytest.raises(InputError) as info:
        load_sharegpt_info(spec if isinstance(spec, dict) else str(spec))
    return str(info.value)


def test_system_and_tools_columns_apply_to_other_shapes(tmp_path):
    tools = [{"type": "function", "function": {"name": "f"}}]
    row = {"prompt": [{"role": "user", "content": "Q"}], "completion": [{"role": "assistant", "content": "A"}], "label": True, "system": "S", "tools": tools}
    [ex, _] = read_examples([write_jsonl(tmp_path / "d.jsonl", [row, {**row, "system": None, "tools": None}])])
    assert ex.prompt[0] == {"role": "system", "content": "S"} and ex.tools == tuple(tools)


def test_an_empty_system_column_name_reads_none(tmp_path, tiny_model_dir):
    """--system-column '' (and --tools-column ''): TRL's plain-text rows often carry a system
    column TRL never reads; without a chat template it cannot apply, so it is refused unless
    the user says to read none."""
    from click.testing import CliRunner
    from conftest import precompute_args

    from kto.precompute.cli import main

    row = {"prompt": "Name a colour:", "completion": " Blue.", "label": True, "system": "S", "tools": "[]"}
    [ex, _] = read_examples([write_jsonl(tmp_path / "d.jsonl", [row, row])], sharegpt=ShareGPTMap(system="", tools=""))
    assert ex.prompt == "Name a colour:" and ex.tools == ()
    assert "--system-column '' reads no system column" in error_of(tmp_path / "d.jsonl")
    args = precompute_args(write_jsonl(tmp_path / "e.jsonl", [row, {**row, "completion": " Red.", "label": False}]), tiny_model_dir, tmp_path / "c")
    result = CliRunner().invoke(main, [*args, "--system-column", "", "--tools-column", ""])
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize(
    "row, expect",
    [
        (
            {"conversations": [turn("human", "Q"), turn("gpt", "A")], "kto_tag": True, "tools": {"name": "f"}},
            "d.jsonl: row 1: column 'tools': expected a list of tool schemas, got an object",
        ),
        ({"conversations": [turn("human", "Q"), turn("gpt", "A")], "kto_tag": True, "tools": "[{"}, "d.jsonl: row 1: column 'tools': text that is not JSON"),
        ({"conversations": [turn("gpt", "A"), turn("human", "Q")], "kto_tag": True}, "d.jsonl: row 1: column 'conversations', turn 1: role 'gpt' out of place"),
        ({"conversations": [turn("human", "Q"), turn("robot", "A")], "kto_tag": True}, "d.jsonl: row 1: column 'conversations', turn 2: unknown role 'robot'"),
        ({"conversations": [turn("human", "Q"), turn("gpt", "A")]}, "d.jsonl: row 1: missing column 'kto_tag'"),
        (
            {"conversations": [turn("human", "Q"), turn("function_call", "not json")], "kto_tag": True},
            "d.jsonl: row 1: column 'conversations', turn 2: function call is not JSON",
        ),
        (
            {"conversations": [turn("human", "Q")], "chosen": turn("human", "A"), "rejected": turn("gpt", "B")},
            "d.jsonl: row 1: column 'chosen': role 'human', expected 'gpt' or 'function_call'",
        ),
        ({"prompt": "Q", "completion": "A", "label": True, "system": "S"}, "d.jsonl: row 1: column 'system': a system prompt needs a conversational prompt"),
    ],
    ids=["tools-object", "tools-bad-json", "out-of-place", "unknown-role", "no-label", "bad-call", "chosen-role", "text-system"],
)
def test_bad_rows_get_one_line(tmp_path, row, expect):
    assert error_of(write_jsonl(tmp_path / "d.jsonl", [row])).startswith(expect)


def test_two_label_columns_that_disagree_are_refused(tmp_path):
    """A merged TRL + LLaMA-Factory export can carry `label` and `kto_tag`; either could be
    the one meant, so a row where they disagree is refused in one line, in every shape that
    reads both. Where they agree, or one is null, the row reads as before."""
    from kto.precompute.inputs.alpaca import AlpacaMap

    shapes = {
        "messages": ({"messages": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}]}, None),
        "sharegpt": ({"conversations": [turn("human", "Q"), turn("gpt", "A")]}, None),
        "alpaca": ({"instruction": "Q", "output": "A"}, AlpacaMap()),
    }
    for name, (row, alpaca) in shapes.items():
        path = write_jsonl(tmp_path / f"{name}.jsonl", [{**row, "kto_tag": False, "label": True}, {**row, "kto_tag": True, "label": True}])
        with pytest.raises(InputError) as info:
            read_examples([path], alpaca=alpaca)
        message = str(info.value)
        assert "row 1" in message and "'kto_tag' says False" in message and "'label' says True" in message, name
        assert message.endswith("keep one label column (--label-column names the one to read)"), name
        agree = write_jsonl(tmp_path / f"{name}-ok.jsonl", [{**row, "kto_tag": "yes", "label": True}, {**row, "kto_tag": None, "label": False}])
        assert [e.label for e in read_examples([agree], alpaca=alpaca)] == [True, False], name
    # A `label` that holds no label (topics, say) beside LLaMA-Factory's kto_tag is not read, as
    # before: LLaMA-Factory never reads it either.
    row, alpaca = shapes["alpaca"]
    topics = write_jsonl(tmp_path / "topics.jsonl", [{**row, "kto_tag": True, "label": "math"}, {**row, "kto_tag": False, "label": "art"}])
    assert [e.label for e in read_examples([topics], alpaca=alpaca)] == [True, False]


# Renders tool schemas and tool calls (SmolLM2's own template reads neither).
TOOL_TEMPLATE = (
    "{% if tools %}<|im_start|>system\nTools: {{ tools | map(attribute='function') | map(attribute='name') | join(',') }}<|im_end|>\n{% endif %}"
    "{% for m in messages %}<|im_start|>{{ m.role }}\n{% for c in m.tool_calls or [] %}<tool_call>{{ c.function.name }} "
    "{{ c.function.arguments | tojson }}</tool_call>{% endfor %}{{ m.content }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def test_a_template_that_drops_tool_calls_is_refused_naming_the_row(tmp_path, tiny_model_dir):
    """Seen by a LLaMA-Factory user: SmolLM2's template reads neither `tool_calls` nor `tools`,
    so a function_call turn rendered as an empty assistant turn, the schemas vanished, and a row
    ending in a call trained on `<|im_end|>` alone, with no message. Refused now; a template
    that renders them takes the same rows, and the call is in the completion's text."""
    from click.testing import CliRunner
    from conftest import precompute_args
    from transformers import AutoTokenizer

    from kto.formats.manifest import read_manifest
    from kto.precompute.cli import main

    tools = json.dumps([{"type": "function", "function": {"name": "weather", "parameters": {"type": "object"}}}])
    rows = [
        {
            "conversations": [turn("human", f"Weather in city {i}?"), turn("function_call", json.dumps({"name": "weather", "arguments": {"city": f"c{i}"}}))],
            "kto_tag": i % 2 == 0,
            "tools": tools,
        }
        for i in range(4)
    ]
    data = write_jsonl(tmp_path / "calls.jsonl", rows)
    refused = CliRunner().invoke(main, precompute_args(data, tiny_model_dir, tmp_path / "a"))
    assert refused.exit_code == 2 and not (tmp_path / "a").exists()
    assert refused.output.strip().splitlines()[-1] == (
        "kto-precompute: error: calls.jsonl: row 1 (id 'calls.jsonl:1'): the tokenizer's chat template does not render tool_calls and tools, "
        "so a function call renders as an empty assistant turn; pass a --chat-template that renders tool_calls and tools"
    )
    template = tmp_path / "tools.jinja"
    template.write_text(TOOL_TEMPLATE)
    ok = CliRunner().invoke(main, [*precompute_args(data, tiny_model_dir, tmp_path / "b"), "--chat-template", str(template)])
    assert ok.exit_code == 0, ok.output
    import pyarrow as pa
    import pyarrow.ipc as ipc

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    shards = [ipc.open_file(pa.memory_map(str(p))).read_all() for p in sorted((tmp_path / "b").glob("shard-*.arrow"))]
    texts = {tokenizer.decode(ids) for shard in shards for ids in shard.column("completion_ids").to_pylist()}
    assert '<tool_call>weather {"city": "c0"}</tool_call><|im_end|>\n' in texts and read_manifest(tmp_path / "b").counts.rows == 4


def test_messages_keep_their_tool_calls_and_reasoning_for_the_template(tmp_path, tiny_model_dir):
    """Seen in a review: `messages` and TRL prompt/completion rows were rebuilt as role and
    content alone, so an assistant turn's `tool_calls` rendered as an empty turn (under a
    template that renders calls too) and `reasoning_content` vanished from the completion, with
    no message; SmolLM2's template, which renders no call, took the row. Now the row's messages
    reach the template with their keys, as TRL passes them, and the refusal sees the call."""
    from click.testing import CliRunner
    from conftest import precompute_args
    from transformers import AutoTokenizer

    from kto.precompute.cli import main

    call = {"type": "function", "function": {"name": "weather", "arguments": {"city": "c1"}}}
    template = tmp_path / "tools.jinja"
    template.write_text(
        TOOL_TEMPLATE.replace("{{ m.content }}", "{% if m.reasoning_content %}<think>{{ m.reasoning_content }}</think>{% endif %}{{ m.content }}")
    )
    rows = [
        {
            "messages": [
                {"role": "user", "content": f"Weather in city {i}?"},
                {"role": "assistant", "content": None, "tool_calls": [call]},
                {"role": "tool", "content": "sunny"},
                {"role": "assistant", "content": f"Sunny in {i}.", "reasoning_content": "The tool said so."},
            ],
            "label": i % 2 == 0,
        }
        for i in range(4)
    ]
    data = write_jsonl(tmp_path / "calls.jsonl", rows)
    refused = CliRunner().invoke(main, precompute_args(data, tiny_model_dir, tmp_path / "a"))
    assert refused.exit_code == 2 and "does not render tool_calls" in refused.output.strip().splitlines()[-1]
    ok = CliRunner().invoke(main, [*precompute_args(data, tiny_model_dir, tmp_path / "b"), "--chat-template", str(template), "--max-length", "256"])
    assert ok.exit_code == 0, ok.output
    import polars as pl

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    row = pl.read_ipc(f"{tmp_path / 'b'}/shard-*.arrow").filter(pl.col("id") == "calls.jsonl:1").row(0, named=True)
    assert '<|im_start|>assistant\n<tool_call>weather {"city": "c1"}</tool_call><|im_end|>' in tokenizer.decode(row["prompt_ids"])
    assert tokenizer.decode(row["completion_ids"]) == "<think>The tool said so.</think>Sunny in 0.<|im_end|>\n"


def test_an_info_file_that_is_not_utf8_is_one_line(tmp_path):
    """A Latin-1 dataset_info.json (an accented name) ended in a UnicodeDecodeError traceback."""
    path = tmp_path / "info.json"
    path.write_bytes(b'{"d": {"formatting": "sharegpt", "columns": {"messages": "conversations"}, "x": "caf\xe9"}}')
    with pytest.raises(InputError) as err:
        load_sharegpt_info(f"{path}#d")
    assert str(err.value) == f"--sharegpt-info {path}#d: not valid UTF-8 at byte 84"
