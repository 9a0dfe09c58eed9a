"""Rows with tool calls and tool results, through reading and tokenization.

- Llama 3.x renders a tool result with `| tojson`: a long result is cut inside its JSON-escaped
  text (the cut text still a valid JSON string), keeping the system header, the tools, the
  question and the ipython header. Before, the cut marker (a control character) was escaped by
  `tojson`, never found, and the prompt kept only the ids' end.
- A tool call's `arguments` given as JSON text are parsed to an object in both the ShareGPT and
  the OpenAI message shapes (same ids); text that is not JSON is kept as written, and a template
  that joins arguments as text (DeepSeek-R1's) gets the text.
- The note on a completion's dropped text says what was dropped: reasoning, or an assistant's
  text beside its tool calls (Llama 3.x renders the call alone).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from kto.formats.errors import InputError
from kto.precompute.inputs.examples import Example
from kto.precompute.inputs.records import read_examples
from kto.precompute.plan import Truncation
from kto.precompute.staging import stage
from kto.precompute.templates import ChatTemplate
from kto.precompute.tokenize import PromptCut, leading_bos_id, tokenize_example

TEMPLATES = Path(__file__).parent / "templates"
LLAMA_SPECIALS = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>", "<|eom_id|>"]
DATE = ChatTemplate(kwargs={"date_string": "06 Dec 2026"})
SCHEMA = {"name": "get_weather", "description": "Get the weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}
TOOLS = ({"type": "function", "function": SCHEMA},)
CALL = {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}
QUESTION = "Weather in Paris for two months?"
SYSTEM_HEADER = "<|begin_of_text|><|start_header_id|>system<|end_header_id|>"
IPYTHON = "<|start_header_id|>ipython<|end_header_id|>\n\n"
# The generation prompt's "\n\n" merges with the answer's first token here: a prefix split.
ANSWER_PROMPT = "<|eot_id|><|start_header_id|>assistant<|end_header_id|>"


@pytest.fixture(scope="module")
def llama(tokenizer_dir):
    """SmolLM2's tokenizer dressed as Llama 3.2's (as test_family_templates.py does)."""
    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    tok.add_special_tokens({"additional_special_tokens": LLAMA_SPECIALS})
    tok.bos_token, tok.eos_token = "<|begin_of_text|>", "<|eot_id|>"
    tok.chat_template = (TEMPLATES / "llama32.jinja").read_text()
    return tok


def tool_row(result: str, row: int = 1) -> Example:
    prompt = (
        {"role": "user", "content": QUESTION},
        {"role": "assistant", "content": "", "tool_calls": [CALL]},
        {"role": "tool", "content": result},
    )
    completion = ({"role": "assistant", "content": "Mostly sunny, around 23 degrees."},)
    return Example(f"data.jsonl:{row}", prompt, completion, True, f"data.jsonl: row {row}", TOOLS)


def limits(tok, budget: int) -> Truncation:
    """A prompt budget of `budget`, and a max_length that a prompt over it does not fit."""
    return Truncation(max_length=budget + 1, max_prompt_length=budget, bos_id=leading_bos_id(tok))


# ---- 1. a long tool result under Llama 3.x's `| tojson` ---------------------------------------

FORECAST = json.dumps({"forecast": [{"day": d, "temp": 20 + d % 7, "note": "sunny with light wind"} for d in range(120)]})


def kept_result(prompt: str) -> str:
    """The tool result's text in a cut Llama prompt: the JSON string after the ipython header,
    decoded (it must still be valid JSON)."""
    assert IPYTHON in prompt and prompt.endswith(ANSWER_PROMPT), prompt[-200:]
    quoted = prompt[prompt.index(IPYTHON) + len(IPYTHON) : -len(ANSWER_PROMPT)]
    value = json.loads(quoted)
    assert isinstance(value, str)
    return value


def test_a_long_tool_result_is_cut_inside_its_json_text_keeping_every_header(llama):
    """The hunter's row: a 1,500-token forecast at --max-length 1024. The prompt keeps the system
    block, the tool schemas with the question, the call and the ipython header; only the start of
    the result goes (its end kept, as for any cut text). Before: '<|begin_of_text|>103, "temp"…'."""
    row = tokenize_example(tool_row(FORECAST), llama, DATE, limits(llama, 512))
    prompt = llama.decode(row.prompt_ids)
    assert row.prompt_cut == PromptCut.MID_TEXT and len(row.prompt_ids) <= 512
    assert prompt.startswith(SYSTEM_HEADER + "\n\nEnvironment: ipython\n"), prompt[:120]
    assert '"name": "get_weather"' in prompt and QUESTION in prompt and '"parameters": {"city": "Paris"}' in prompt
    kept = kept_result(prompt)
    assert 0 < len(kept) < len(FORECAST) and FORECAST.endswith(kept)
    assert len(row.prompt_ids) >= 512 - 8  # the cut fills its budget, a boundary token or so aside


def test_a_cut_never_splits_an_escape_sequence(llama):
    """A result dense in escapes (quotes, newlines, a control character, a backslash): at every
    budget the kept text is a valid JSON string whose value ends the result."""
    result = "".join(f'line {i}: "q" \\ \x01 tab\there é\n' for i in range(60))
    whole = tokenize_example(tool_row(result), llama, DATE)
    for budget in range(len(whole.prompt_ids) - 40, len(whole.prompt_ids) - 400, -7):
        row = tokenize_example(tool_row(result), llama, DATE, limits(llama, budget))
        assert row.prompt_cut == PromptCut.MID_TEXT and len(row.prompt_ids) <= budget, budget
        prompt = llama.decode(row.prompt_ids)
        assert prompt.startswith(SYSTEM_HEADER) and QUESTION in prompt
        kept = kept_result(prompt)
        assert result.endswith(kept) and len(kept) < len(result), budget


@pytest.mark.parametrize("result", [json.dumps(list(range(400))), "[" + "sunny " * 300 + "]"], ids=["list", "words"])
def test_a_result_with_nothing_to_escape_keeps_its_opening_quote(llama, result):
    """Seen by a reviewer: a text with nothing to escape matched as itself, was cut by tokens,
    and the token `"[` (tojson's opening quote and the text's first character) went with it: the
    kept text was no JSON string. Written in quotes, it is cut by characters as escaped texts are."""
    whole = tokenize_example(tool_row(result), llama, DATE)
    for budget in (len(whole.prompt_ids) - 100, len(whole.prompt_ids) - 200):
        prompt = llama.decode(tokenize_example(tool_row(result), llama, DATE, limits(llama, budget)).prompt_ids)
        kept = kept_result(prompt)
        assert result.endswith(kept) and len(kept) < len(result), budget


# ---- 2. tool-call arguments given as text --------------------------------------------------------


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def sharegpt_call(arguments) -> dict:
    call = json.dumps({"name": "get_weather", "arguments": arguments})
    return {"conversations": [{"from": "human", "value": "Weather?"}, {"from": "function_call", "value": call}], "tools": json.dumps([SCHEMA]), "kto_tag": True}


def openai_call(arguments) -> dict:
    call = {"type": "function", "function": {"name": "get_weather", "arguments": arguments}}
    messages = [{"role": "user", "content": "Weather?"}, {"role": "assistant", "content": None, "tool_calls": [call]}]
    return {"messages": messages, "tools": list(TOOLS), "label": True}


OK = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}], "label": False}


def test_arguments_that_are_not_json_are_kept_as_text_in_both_shapes(tmp_path):
    """A malformed call is what an undesirable label may judge (the model wrote it): its text is
    kept as written, in both shapes, for the template to render."""
    for name, row in (("sg", sharegpt_call("{city: Paris")), ("oa", openai_call("{city: Paris"))):
        ex = read_examples([write_jsonl(tmp_path / f"{name}.jsonl", [OK, row])])[1]
        assert ex.completion[0]["tool_calls"][0]["function"]["arguments"] == "{city: Paris", name


def test_a_template_that_joins_arguments_as_text_gets_the_text(tokenizer_dir, tmp_path):
    """DeepSeek-R1's template writes `'\\n' + arguments`: the parsed object fails there (TypeError),
    so render gives it the JSON text the object came from, as the row was written."""
    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    tok.add_special_tokens({"additional_special_tokens": ["<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", "<｜User｜>", "<｜Assistant｜>"]})
    tok.add_tokens(["<think>", "</think>"])
    tok.bos_token, tok.eos_token = "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>"
    tok.chat_template = (TEMPLATES / "deepseek_r1_qwen.jinja").read_text()
    text = '{"city": "Paris"}'
    row = {k: v for k, v in openai_call(text).items() if k != "tools"}  # this template renders no tool schemas (refused)
    ex = read_examples([write_jsonl(tmp_path / "oa.jsonl", [OK, row])])[1]
    row = tokenize_example(ex, tok)
    assert text in tok.decode(row.completion_ids)


def test_json_text_arguments_read_as_an_object_in_both_shapes(tmp_path):
    """The same call as JSON text gives one message, hence one rendering and one set of ids,
    whichever shape carries it; an object is kept as it is."""
    text = json.dumps({"city": "Paris"})
    rows = [sharegpt_call(text), openai_call(text), sharegpt_call({"city": "Paris"}), openai_call({"city": "Paris"})]
    read = [read_examples([write_jsonl(tmp_path / f"{i}.jsonl", [OK, r])])[1] for i, r in enumerate(rows)]
    calls = [ex.completion[0]["tool_calls"] for ex in read]
    assert all(c[0]["function"]["arguments"] == {"city": "Paris"} for c in calls), calls


def test_the_raw_record_is_not_changed_by_parsing(tmp_path):
    record = openai_call(json.dumps({"city": "Paris"}))
    from kto.precompute.inputs.examples import ColumnMap, shaped_examples

    [ex] = shaped_examples(record, ColumnMap(), "x", "x.jsonl: row 1", set(record))
    assert ex.completion[0]["tool_calls"][0]["function"]["arguments"] == {"city": "Paris"}
    assert record["messages"][1]["tool_calls"][0]["function"]["arguments"] == '{"city": "Paris"}'


# ---- 3. the note says what was dropped ------------------------------------------------------------


def notes(examples: list[Example], tok, tmp_path: Path, capsys) -> list[str]:
    stage(iter(examples), lambda ex: tokenize_example(ex, tok, DATE), tmp_path / ".staging-0123456789abcdef01234567.arrow")
    return [line for line in capsys.readouterr().err.splitlines() if line.startswith("note:")]


def test_text_beside_a_tool_call_is_named_as_such_not_as_reasoning(llama, tmp_path, capsys):
    """Llama 3.x renders an assistant turn with tool_calls as the call alone: its words go. The
    note says so, and does not speak of </think>."""
    said = {"role": "assistant", "content": "Let me check the weather service for you.", "tool_calls": [CALL]}
    user = ({"role": "user", "content": "Weather in Paris?"},)
    rows = [
        Example("data.jsonl:1", user, (said,), True, "data.jsonl: row 1", TOOLS),
        Example("data.jsonl:2", user, ({"role": "assistant", "content": "No idea."},), False, "data.jsonl: row 2", TOOLS),
    ]
    [note] = notes(rows, llama, tmp_path, capsys)
    assert note.startswith("note: 1 of 2 rows: the chat template dropped part of the completion's text (first data.jsonl: row 1 (id 'data.jsonl:1'))")
    assert "beside its tool calls" in note and "</think>" not in note and "reasoning" not in note
    assert "--chat-template" in note
    assert re.search(r"\(1 row\)", note)


@pytest.mark.parametrize("text", ["[1, 2]", "null", '"Paris"', '{"city": "Paris", "city": "Lyon"}'])
def test_json_text_that_is_no_single_object_is_kept_as_written(tmp_path, text):
    """Seen by a reviewer: a list, null or a string parsed to a bare value that a text-joining
    template could not take back as text, and a key named twice kept one value silently (a call
    the model never wrote). Only an object with distinct keys is parsed; the rest stays text."""
    ex = read_examples([write_jsonl(tmp_path / "oa.jsonl", [OK, openai_call(text)])])[1]
    assert ex.completion[0]["tool_calls"][0]["function"]["arguments"] == text


def test_two_spellings_of_one_object_are_two_rows_to_the_keys(tmp_path):
    """The pairing and duplicate keys hash a message's repr: '{"city": "Paris"}' and
    '{"city":"Paris"}' parse to one object, yet a template that takes the text renders them apart."""
    a, b = (read_examples([write_jsonl(tmp_path / f"{i}.jsonl", [OK, openai_call(t)])])[1] for i, t in enumerate(['{"city": "Paris"}', '{"city":"Paris"}']))
    assert a.completion[0]["tool_calls"][0]["function"]["arguments"] == b.completion[0]["tool_calls"][0]["function"]["arguments"]
    assert repr(a.completion) != repr(b.completion)


def test_a_retry_with_the_text_that_fails_too_says_the_first_error(tmp_path, tokenizer_dir):
    """A template that fails with a TypeError of its own (here: it joins a tool's name, an int)
    is retried with the arguments as text; when that fails too, the first error is said, not the
    second, which blamed the arguments."""
    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    tok.chat_template = (
        "{% for m in messages %}{% if m.tool_calls %}{% for c in m.tool_calls %}{{ c.function.name }}{% for k, v in c.function.arguments|items %}{{ k }}{% endfor %}"
        "{% endfor %}{% elif m.role == 'tool' %}{{ '' + m.name }}{% else %}{{ m.content }}{% endif %}{% endfor %}"
    )
    row = openai_call('{"city": "Paris"}')
    row["messages"] = [*row["messages"], {"role": "tool", "content": "sunny", "name": 5}, {"role": "assistant", "content": "Sunny."}]
    row = {k: v for k, v in row.items() if k != "tools"}
    ex = read_examples([write_jsonl(tmp_path / "oa.jsonl", [OK, row])])[1]
    with pytest.raises(InputError, match=r"can only concatenate str \(not \"int\"\)"):
        tokenize_example(ex, tok)
