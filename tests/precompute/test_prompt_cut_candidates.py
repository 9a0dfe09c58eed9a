"""The cut inside a later text of a conversation's prompt (precompute/prompt_cut.py), as a
review found it short of the old one: the later texts ranked by characters (a prose argument
tried in place of a CJK result that held four times its tokens), arguments text escaped as Go
writes JSON (`\\u003c`, `\\/`) never found, Qwen3's raw string argument cut behind a token that
straddles the header, and the note on prompts kept by their ids' end advising what could not
help (the turn headers alone over the budget)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import precompute_args, run_precompute
from transformers import AutoTokenizer

from kto.precompute.inputs.examples import Example, _call_arguments
from kto.precompute.plan import Truncation
from kto.precompute.staging import stage
from kto.precompute.templates import ChatTemplate
from kto.precompute.tokenize import PromptCut, render, tokenize_example

TEMPLATES = Path(__file__).parent / "templates"
TOOLS_JINJA = (Path(__file__).parent / "templates" / "tools_tojson.jinja").read_text()
TEXT_ARGS_JINJA = TOOLS_JINJA.replace("(tc['function'] | tojson)", "tc['function']['name'] + '\\n' + tc['function']['arguments']")
HEAD = "<|im_start|>system\nYou are an agent.<|im_end|>\n<|im_start|>user\nWrite the file<|im_end|>\n<|im_start|>assistant\n<tool_call>"
CODE = "".join(f"line {i} = compute({i})\n" for i in range(60))


@pytest.fixture
def tok(tokenizer_dir):
    return AutoTokenizer.from_pretrained(tokenizer_dir)


def messages(arguments, result: str = "ok") -> list[dict]:
    call = {"id": "call00000", "type": "function", "function": {"name": "write_file", "arguments": arguments}}
    return [
        {"role": "system", "content": "You are an agent."},
        {"role": "user", "content": "Write the file"},
        {"role": "assistant", "content": "", "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call00000", "content": result},
    ]


def example(prompt, answer: str = "Written.") -> Example:
    return Example("r1", tuple(prompt), ({"role": "assistant", "content": answer},), True, "x.jsonl: row 1")


def test_a_cjk_result_is_cut_where_the_longer_prose_argument_cannot_make_room(tok):
    """The reviewer's row: a 1,200-character English argument (~250 tokens) and a 1,000-character
    CJK tool result (~1,000 tokens), budget 400. Ranked by characters the argument was the one
    tried; cut away whole it left no room, and the prompt kept its ids' end, headerless. Ranked
    by tokens the result is tried first, and cut as before the argument cut existed: every turn
    kept, the call whole, the result a JSON string that ends the original."""
    tok.chat_template = TOOLS_JINJA
    prose = ("the quick brown fox jumps over the lazy dog " * 30)[:1200]
    cjk = "".join(chr(0x4E00 + (i * 7919) % 20000) for i in range(1000))
    row = tokenize_example(example(messages({"path": "notes.txt", "text": prose}, result=cjk)), tok, truncation=Truncation(800, 400))
    assert row.prompt_cut == PromptCut.MID_TEXT and not row.prompt_from_end and len(row.prompt_ids) <= 400
    text = tok.decode(row.prompt_ids)
    call = json.dumps({"name": "write_file", "arguments": {"path": "notes.txt", "text": prose}})
    assert text.startswith(HEAD + call + "</tool_call><|im_end|>\n<|im_start|>tool\n")
    kept = json.loads(text.split("<|im_start|>tool\n", 1)[1].removesuffix("<|im_end|>\n<|im_start|>assistant\n"))
    assert 0 < len(kept) < len(cjk) and cjk.endswith(kept)


HTML = "".join(f"<div id={i}>row & {i}</div>\n" for i in range(60))
GO = json.dumps({"path": "a.html", "text": HTML}).replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
SLASHED = json.dumps({"path": "a/b.html", "text": HTML}).replace("/", "\\/")


@pytest.mark.parametrize(("written", "escape"), [(GO, "\\u003c"), (SLASHED, "<\\/div>")], ids=["go-html-escape", "escaped-slash"])
def test_arguments_text_in_its_own_escaping_is_cut_in_it(tok, written, escape):
    """Arguments text a Go or Java encoder wrote (`<` as `\\u003c`, `/` as `\\/`), joined as text
    by the template (DeepSeek-R1's way): the value was looked for as Python's json.dumps writes
    it, never found, and the prompt kept its ids' end. It is found by its place in the text now:
    the cut text is the original with the value's start taken away, its escapes as written."""
    tok.chat_template = TEXT_ARGS_JINJA
    row = tokenize_example(example(messages(_call_arguments(written))), tok, truncation=Truncation(400, 200))
    assert row.prompt_cut == PromptCut.MID_TEXT and not row.prompt_from_end and len(row.prompt_ids) <= 200
    text = tok.decode(row.prompt_ids)
    assert text.startswith(HEAD + "write_file\n")
    arguments = text[len(HEAD + "write_file\n") :].split("</tool_call>", 1)[0]
    before, value = written.split('"text": "', 1)
    assert arguments.startswith(before + '"text": "') and value.endswith(arguments[len(before + '"text": "') :])
    cut = json.loads(arguments)
    assert cut["path"] == json.loads(written)["path"] and 0 < len(cut["text"]) < len(HTML) and HTML.endswith(cut["text"])
    assert escape in arguments


@pytest.fixture
def qwen3(tokenizer_dir):
    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    tok.add_tokens(["<think>", "</think>"])
    tok.bos_token, tok.eos_token = None, "<|im_end|>"
    tok.chat_template = (TEMPLATES / "qwen3.jinja").read_text()
    return tok


@pytest.mark.parametrize("budget", [200, 300, 400])
def test_qwen3s_raw_string_argument_is_cut_to_a_prefix_of_a_rendering(qwen3, budget):
    """Qwen3 writes a string argument raw after `"arguments": `; `Ġpath` is one token across the
    space and the value's first letters, and was kept as the header's while the value's kept
    end followed: `"arguments": pathine 48 = …`, no rendering of any conversation. The cut
    prompt is now the start of the rendering of the row with the value's end alone, its ids that
    rendering's own."""
    value = "path=a.py text=" + CODE
    prompt = messages(value)
    row = tokenize_example(example(prompt, "Written. " + " ".join(f"w{i}" for i in range(80))), qwen3, truncation=Truncation(2 * budget, budget))
    assert row.prompt_cut == PromptCut.MID_TEXT and not row.prompt_from_end and len(row.prompt_ids) <= budget
    text = qwen3.decode(row.prompt_ids)
    kept = text.split('"arguments": ', 1)[1].split("}\n</tool_call>", 1)[0]
    assert 0 < len(kept) < len(value) and value.endswith(kept)
    prompt[2]["tool_calls"][0]["function"]["arguments"] = kept
    rendering = render(qwen3, prompt, example(prompt), ChatTemplate(), add_generation_prompt=True)
    assert rendering.startswith(text)
    assert qwen3(rendering, add_special_tokens=False).input_ids[: len(row.prompt_ids)] == row.prompt_ids.tolist()


def test_headers_over_the_budget_are_said_with_the_length_that_would_fit(tok, tmp_path, capsys):
    """Three rows whose turn headers alone (SmolLM2's own system message's and the question's,
    and the generation prompt) take more than --max-prompt-length 10: no cut inside a text can
    fit, and shortening the rows cannot help. The note says how long the headers are, the least
    budget that leaves a question a token, and names the file once."""
    rows = [
        Example(f"q{i}", ({"role": "user", "content": f"Question {i}?"},), ({"role": "assistant", "content": "ok " * 30},), True, f"d.jsonl: row {i + 1}")
        for i in range(5)
    ]
    cut = Truncation(40, 10)
    got = [tokenize_example(r, tok, truncation=cut) for r in rows]
    empty = ({"role": "system", "content": ""}, {"role": "user", "content": ""})
    headers = len(tok(render(tok, empty, rows[0], ChatTemplate(), add_generation_prompt=True), add_special_tokens=False).input_ids)
    assert headers >= 10 and all(r.prompt_from_end and r.headers_alone == headers for r in got)
    stage(iter(rows), lambda ex: tokenize_example(ex, tok, truncation=cut), tmp_path / ".staging-0123456789abcdef01234567.arrow")
    notes = [line for line in capsys.readouterr().err.splitlines() if "no turn header" in line]
    assert notes == [
        "note: 5 of 5 rows: the prompt could not be cut inside a text with its turn headers kept, so it keeps its last "
        "--max-prompt-length tokens and starts inside a text, with no turn header (d.jsonl: rows 1 (id 'q0'), 2 (id 'q1'), 3 (id 'q2') and 2 more); "
        f"their turn headers alone (every text left out) take {headers} tokens: raise --max-prompt-length to at least {headers + 1}"
    ]


def test_kto_precompute_says_the_headers_of_the_feedback_example(tiny_model_dir, tmp_path):
    """The README's feedback.jsonl at --max-length 40 --max-prompt-length 10: every row noted,
    the advice the headers' length, the file named once."""
    data = Path(__file__).resolve().parents[2] / "examples" / "feedback.jsonl"
    base = precompute_args(data, tiny_model_dir, tmp_path / "cache")[:6]
    result = run_precompute(*base, "--max-length", "40", "--max-prompt-length", "10")
    assert result.exit_code == 0, result.output
    note = next(line for line in result.output.splitlines() if "no turn header" in line)
    assert note.startswith("note: 50 of 50 rows: ") and "(feedback.jsonl: rows 1 (id '" in note and "), 3 (id '" in note and " and 47 more); " in note
    assert "raise --max-prompt-length to at least " in note and "shorten" not in note
