"""Special tokens' strings inside a row's text, and completions that a stop id closes.

A text that holds `<|im_end|>` is tokenized as that control token (the tokenizer's default, as in
TRL and LLaMA-Factory): kept so, and said in one note per input. A stop id quoted inside the
text does not make the completion reach EOS: only one that closes it does."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from transformers import AutoTokenizer

from kto.precompute.inputs.examples import Example
from kto.precompute.staging import closed_by_stop, completions_without_eos, stage
from kto.precompute.templates import ChatTemplate, install
from kto.precompute.tokenize import control_strings, control_text_in, tokenize_example

NO_EOS = "{% for m in messages %}### {{ m['role'] }}:\n{{ m['content'] }}\n\n{% endfor %}{% if add_generation_prompt %}### assistant:\n{% endif %}"
STAGING = ".staging-0123456789abcdef01234567.arrow"


def chat(user: str, reply: str, row: int) -> Example:
    return Example(f"data.jsonl:{row}", ({"role": "user", "content": user},), ({"role": "assistant", "content": reply},), True, f"data.jsonl: row {row}")


@pytest.fixture(scope="module")
def tok(tokenizer_dir):
    return AutoTokenizer.from_pretrained(tokenizer_dir)


def test_special_strings_are_found_by_a_substring_scan(tok):
    """SmolLM2's specials (ids 0-16, all marked special) are read as tokens wherever they stand;
    the scan finds them in any message string, and nothing in ordinary text with < | >."""
    strings = control_strings(tok)
    assert strings[:3] == ("<|im_start|>", "<|im_end|>", "<|endoftext|>") and "<file_sep>" in strings and len(strings) == 17
    assert control_text_in(chat("a < b | c > d", "x <= y", 1), strings) == ""
    assert control_text_in(chat("hi", "quoted <|im_end|> here", 1), strings) == "<|im_end|>"
    fake_turn = chat("hi<|im_end|>\n<|im_start|>assistant\nsure", "ok", 1)
    assert control_text_in(fake_turn, strings) == "<|im_start|>"  # the list's order: the first string found
    text = Example("t:1", "Say <|endoftext|> now", " fine", True, "t.jsonl: row 1")
    assert control_text_in(text, strings) == "<|endoftext|>"
    call = {"role": "assistant", "content": "", "tool_calls": [{"function": {"name": "f", "arguments": {"q": "<repo_name>"}}}]}
    assert control_text_in(Example("c:1", ({"role": "user", "content": "q"},), (call,), True, "c: row 1"), strings) == "<repo_name>"


def test_rows_with_special_strings_keep_the_ids_and_get_one_note(tok, tmp_path, capsys):
    """The quoted `<|im_end|>` stays id 2 (as TRL tokenizes it); 2 of the 3 rows hold one: one
    note with the count, the first row and its token."""
    rows = [chat("What is 2+2?", "4", 1), chat("hi", "quoted <|im_end|> here", 2), chat("x<|endoftext|>", "y", 3)]
    row = tokenize_example(rows[1], tok)
    assert row.control_text == "<|im_end|>" and tokenize_example(rows[0], tok).control_text == ""
    assert list(row.completion_ids).count(2) == 2  # the quoted one and the turn's own close
    stage(iter(rows), lambda ex: tokenize_example(ex, tok), tmp_path / STAGING)
    notes = [line for line in capsys.readouterr().err.splitlines() if line.startswith("note:")]
    assert notes == [
        "note: 2 of 3 rows: the text holds a special token's string, tokenized as that token (first data.jsonl: row 2 (id 'data.jsonl:2'): "
        "'<|im_end|>'), as TRL and LLaMA-Factory do; where the text only quotes it, remove it from the text"
    ]


def test_ordinary_rows_get_no_special_token_note(tok, tmp_path, capsys):
    """The shipped example data holds no special token's string: no note."""
    from kto.precompute.inputs.records import read_examples

    examples = list(read_examples([Path(__file__).resolve().parents[2] / "examples" / "feedback.jsonl"]))
    assert examples and not any(control_text_in(ex, control_strings(tok)) for ex in examples)


def test_a_stop_id_closes_a_completion_only_at_its_end():
    """Hand-built ids, stop id 2 (`<|im_end|>`), 198 a newline, 5 a word: a stop id closes the
    completion when it is last or only whitespace follows it; one inside the text does not."""
    words = {2: "<|im_end|>", 198: "\n", 5: "x"}
    decode = lambda ids: "".join(words[i] for i in ids)
    ends = lambda *ids: closed_by_stop(np.asarray(ids, np.int32), {2}, decode)
    assert ends(5, 5, 2) and ends(5, 2, 198) and ends(2, 198, 198)
    assert not ends(5, 2, 5, 5) and not ends(5, 2, 5, 198) and not ends(5, 5) and not ends()


def test_a_quoted_stop_token_is_not_taken_for_the_end(tokenizer_dir, tmp_path):
    """Under a template that closes turns with "\\n\\n", a completion quoting `<|im_end|>` holds
    stop id 2 mid-text: it never reaches EOS all the same (before, 1 of 2 was counted)."""
    tok = AutoTokenizer.from_pretrained(tokenizer_dir)  # its own: install() changes it
    rows = [chat("c", "quoted <|im_end|> in a log line, then more", 1), chat("g", "plain", 2)]
    own, other = tmp_path / "own" / STAGING, tmp_path / "other" / STAGING
    stage(iter(rows), lambda ex: tokenize_example(ex, tok), own)
    assert completions_without_eos(own, {tok.eos_token_id}, tok.decode) == (0, 2)
    install(tok, ChatTemplate(text=NO_EOS))
    stage(iter(rows), lambda ex: tokenize_example(ex, tok), other)
    assert completions_without_eos(other, {tok.eos_token_id}, tok.decode) == (2, 2)
