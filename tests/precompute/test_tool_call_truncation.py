"""A prompt whose later turns hold a long tool call (precompute/tokenize.py conversational_ids).

Seen by a hunter: [system, user "Write the file", assistant write_file{path, text: 60 lines of
code}, tool "ok"] at --max-length 256 --max-prompt-length 128. Only the later turns' `content`
was a cut target, and a call's is empty, so the prompt kept its ids' end: it started inside the
call's JSON arguments, the system and user turns gone, no header, and nothing said so. Now the
longest string value inside a call's arguments is a cut target too (cut by whole characters and
rendered again, so the arguments stay JSON), and a prompt that still falls to the ids' end is
named in a note.
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.ipc as ipc
import pytest
from conftest import precompute_args, run_precompute, write_rows
from transformers import AutoTokenizer

from kto.precompute.inputs.examples import Example, _call_arguments
from kto.precompute.plan import Truncation
from kto.precompute.staging import stage
from kto.precompute.tokenize import PromptCut, tokenize_example

# The hunter's tools.jinja: a call written `{{ function | tojson }}`, a tool result `| tojson`.
TOOLS_JINJA = (Path(__file__).parent / "templates" / "tools_tojson.jinja").read_text()
# A template that joins a call's arguments as text, as DeepSeek-R1's does (`'\n' + arguments`
# fails on an object, so tokenize.render hands it the JSON text the object was parsed from).
TEXT_ARGS_JINJA = TOOLS_JINJA.replace("(tc['function'] | tojson)", "tc['function']['name'] + '\\n' + tc['function']['arguments']")
# A template that rewrites every text: no text can be found in its rendering, so no cut can be
# made inside one and the ids' end, the last resort, is kept.
UPPER_JINJA = "{%- for m in messages %}{{- '<|im_start|>' + m.role + '\\n' + (m.content | upper) + '<|im_end|>\\n' }}{%- endfor %}{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"

CODE = "".join(f"line {i} = compute({i})\n" for i in range(60))
HEAD = "<|im_start|>system\nYou are an agent.<|im_end|>\n<|im_start|>user\nWrite the file<|im_end|>\n<|im_start|>assistant\n<tool_call>"
TAIL = '</tool_call><|im_end|>\n<|im_start|>tool\n"ok"<|im_end|>\n<|im_start|>assistant\n'
ANSWER = "Written. " + " ".join(f"w{i}" for i in range(150))


@pytest.fixture
def tok(tokenizer_dir):
    return AutoTokenizer.from_pretrained(tokenizer_dir)


def big_call_messages(arguments) -> list[dict]:
    call = {"type": "function", "function": {"name": "write_file", "arguments": arguments}}
    return [
        {"role": "system", "content": "You are an agent."},
        {"role": "user", "content": "Write the file"},
        {"role": "assistant", "content": "", "tool_calls": [call]},
        {"role": "tool", "content": "ok"},
    ]


def example(prompt, answer: str = ANSWER, row_id: str = "k_bigcall") -> Example:
    return Example(row_id, tuple(prompt), ({"role": "assistant", "content": answer},), True, "tools2.jsonl: row 1")


def the_call(prompt: str) -> str:
    """The text between the cut prompt's <tool_call> tags, which must be all that changed."""
    assert prompt.startswith(HEAD) and prompt.endswith(TAIL), prompt
    return prompt[len(HEAD) : -len(TAIL)]


def test_a_long_tool_call_is_cut_inside_its_longest_argument_keeping_every_turn(tok):
    """The hunter's row: the call's `text` (60 lines of code) is the longest text after the last
    user turn; it loses its start, the rest of the prompt stays whole: the system and user turns,
    the call's name and `path`, the tool result and the generation prompt. The call is still
    JSON, and the kept text ends the original. Before: ' 50 = compute(50)\\\\nline 51…'."""
    tok.chat_template = TOOLS_JINJA
    row = tokenize_example(example(big_call_messages({"path": "a.py", "text": CODE})), tok, truncation=Truncation(256, 128))
    assert row.prompt_cut == PromptCut.MID_TEXT and 128 - 4 <= len(row.prompt_ids) <= 128
    assert not row.prompt_from_end
    call = json.loads(the_call(tok.decode(row.prompt_ids)))
    assert call["name"] == "write_file" and call["arguments"]["path"] == "a.py"
    kept = call["arguments"]["text"]
    assert 0 < len(kept) < len(CODE) and CODE.endswith(kept)


@pytest.mark.parametrize("ascii_only", [False, True], ids=["unescaped", "json.dumps-default"])
def test_arguments_a_template_joins_as_text_are_cut_in_that_text_too(tok, ascii_only):
    """Arguments given as JSON text are parsed to an object that keeps its text
    (examples.ParsedArguments); a template that joins them as text renders the text. The cut
    changes both views: the rendered text is the cut arguments, still JSON, `path` kept. Text
    written by Python's json.dumps escapes "é" as "\\u00e9", and so the cut marker too, which was
    then never found: the marker stays itself, the kept text keeps the text's own escapes."""
    tok.chat_template = TEXT_ARGS_JINJA
    code = "".join(f"ligne {i} = calculé({i})\n" for i in range(60))
    arguments = _call_arguments(json.dumps({"path": "a.py", "text": code}, ensure_ascii=ascii_only))
    row = tokenize_example(example(big_call_messages(arguments)), tok, truncation=Truncation(256, 128))
    assert row.prompt_cut == PromptCut.MID_TEXT and 128 - 4 <= len(row.prompt_ids) <= 128 and not row.prompt_from_end
    name, text = the_call(tok.decode(row.prompt_ids)).split("\n", 1)
    cut = json.loads(text)
    assert name == "write_file" and cut["path"] == "a.py" and 0 < len(cut["text"]) < len(code) and code.endswith(cut["text"])
    assert ("\\u00e9" in text) == ascii_only


def test_the_longest_later_text_is_cut_whether_a_result_or_an_argument(tok):
    """A short call and a long result (the hunter's tools.jsonl row): the result is cut, inside its
    JSON string, the call whole. A long call beside a short result: the call's argument is cut."""
    tok.chat_template = TOOLS_JINJA
    result = 'Result: "quoted" \\ back\nslash é ' + " ".join(f"r{i}" for i in range(300))
    prompt = big_call_messages({"path": "a.py", "text": "x = 1\n"})
    prompt[-1] = {"role": "tool", "content": result}
    row = tokenize_example(example(prompt), tok, truncation=Truncation(256, 128))
    text = tok.decode(row.prompt_ids)
    assert row.prompt_cut == PromptCut.MID_TEXT and len(row.prompt_ids) <= 128 and not row.prompt_from_end
    assert text.startswith(HEAD + '{"name": "write_file", "arguments": {"path": "a.py", "text": "x = 1\\n"}}</tool_call><|im_end|>\n<|im_start|>tool\n')
    kept = json.loads(text.split("<|im_start|>tool\n", 1)[1].removesuffix("<|im_end|>\n<|im_start|>assistant\n"))
    assert 0 < len(kept) < len(result) and result.endswith(kept)


def test_a_prompt_only_its_ids_end_can_cut_is_named_in_a_note(tok, tmp_path, capsys):
    """A template that upper-cases every text: the question is not found in the rendering, so no
    cut inside it can be made and the prompt keeps its ids' end, starting inside the text with no
    header. That used to pass in silence; the row is flagged and a note names it."""
    tok.chat_template = UPPER_JINJA
    long, short = ({"role": "user", "content": "word " * 300}, {"role": "user", "content": "hi"})
    rows = [example([long], "OK " * 60, "long"), example([short], "OK " * 60, "short")]  # upper case: no text dropped
    cut = Truncation(256, 64)
    first, second = (tokenize_example(r, tok, truncation=cut) for r in rows)
    assert first.prompt_cut == PromptCut.MID_TEXT and first.prompt_from_end and len(first.prompt_ids) == 64
    assert not tok.decode(first.prompt_ids).startswith("<|im_start|>") and not second.prompt_from_end
    stage(iter(rows), lambda ex: tokenize_example(ex, tok, truncation=cut), tmp_path / ".staging-0123456789abcdef01234567.arrow")
    notes = [line for line in capsys.readouterr().err.splitlines() if line.startswith("note:")]
    assert notes == [
        "note: 1 of 2 rows: the prompt could not be cut inside a text with its turn headers kept, so it keeps its last "
        "--max-prompt-length tokens and starts inside a text, with no turn header (tools2.jsonl: row 1 (id 'long')); raise --max-prompt-length, or shorten that row"
    ]


def test_kto_precompute_cuts_the_hunters_row_inside_its_call(tiny_model_dir, tmp_path):
    """End to end: the stored prompt starts with the system header, holds the user's words and a
    call that is still JSON, fits --max-prompt-length; no note on the ids' end."""
    template = tmp_path / "tools.jinja"
    template.write_text(TOOLS_JINJA)
    row = {
        "id": "k_bigcall",
        "prompt": big_call_messages({"path": "a.py", "text": CODE}),
        "completion": [{"role": "assistant", "content": ANSWER}],
        "label": True,
    }
    short = {"id": "k_n", "prompt": [{"role": "user", "content": "Hi"}], "completion": [{"role": "assistant", "content": "Hey"}], "label": False}
    data = write_rows(tmp_path / "tools2.jsonl", [row, short])
    out = tmp_path / "cache"
    base = precompute_args(data, tiny_model_dir, out)[:6]  # --data, --model, --out
    result = run_precompute(*base, "--max-length", "256", "--max-prompt-length", "128", "--chat-template", str(template))
    assert result.exit_code == 0, result.output
    assert "1 mid-text" in result.output and "no turn header" not in result.output
    tok = AutoTokenizer.from_pretrained(out / "tokenizer")
    stored = {r["id"]: r for p in sorted(Path(out).glob("shard-*.arrow")) for r in ipc.open_file(p).read_all().to_pylist()}
    prompt_ids = stored["k_bigcall"]["prompt_ids"]
    call = json.loads(the_call(tok.decode(prompt_ids)))
    assert len(prompt_ids) <= 128 and CODE.endswith(call["arguments"]["text"]) and call["arguments"]["path"] == "a.py"
