"""Edges of the input readers and the prompt cut: a label of -1, an implicit prompt that
leaves one side no completion, a prompt exactly at max_prompt_length."""

import json

import pytest

from kto.formats.errors import InputError
from kto.precompute.inputs.examples import parse_label
from kto.precompute.inputs.records import read_examples

USER = {"role": "user", "content": "u"}
A1 = {"role": "assistant", "content": "a1"}
A2 = {"role": "assistant", "content": "a2"}


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def error_of(path) -> str:
    with pytest.raises(InputError) as info:
        read_examples([path])
    message = str(info.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize("value", [-1, -1.0, 2, 0.5])
def test_parse_label_refuses_numbers_other_than_0_and_1(value):
    with pytest.raises(InputError, match="is not boolean-like"):
        parse_label(value, "x")
    assert parse_label(1, "x") is True and parse_label(0.0, "x") is False


def test_a_row_labelled_minus_1_is_refused_naming_the_row(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "Hi", "completion": "Hello", "label": True}, {"prompt": "Q", "completion": "A", "label": -1}])
    assert error_of(path) == "d.jsonl: row 2: label -1 is not boolean-like (expected true/false, 1/0, yes/no)"


def test_an_implicit_prompt_that_is_all_of_chosen_keeps_its_last_message_as_chosen(tmp_path):
    """chosen = [u, a1], rejected = [u, a1, a2]: the shared messages are all of chosen, and TRL
    1.16's extract_prompt (run on this row) then splits before chosen's last message: prompt [u],
    chosen [a1], rejected [a1, a2]; not a prompt [u, a1] that leaves chosen no completion."""
    path = write_jsonl(tmp_path / "d.jsonl", [{"chosen": [USER, A1], "rejected": [USER, A1, A2]}])
    good, bad = read_examples([path])
    assert good.prompt == bad.prompt == (USER,)
    assert (good.completion, good.label, bad.completion, bad.label) == ((A1,), True, (A1, A2), False)


def test_an_implicit_prompt_takes_every_shared_message(tmp_path):
    u2 = {"role": "user", "content": "more"}
    path = write_jsonl(tmp_path / "d.jsonl", [{"chosen": [USER, A1, u2, A2], "rejected": [USER, A1, u2, A1]}])
    good, bad = read_examples([path])
    assert good.prompt == bad.prompt == (USER, A1, u2)
    assert (good.completion, good.label, bad.completion, bad.label) == ((A2,), True, (A1,), False)


def test_prompt_must_be_cut_only_past_the_prompt_budget():
    from kto.precompute.plan import Truncation
    from kto.precompute.tokenize import prompt_must_be_cut

    rule = Truncation(10, 4)
    assert not prompt_must_be_cut(rule, 4, 7)  # 11 > 10, but the prompt is exactly its budget
    assert prompt_must_be_cut(rule, 5, 6)  # 11 > 10 and 5 > 4
    assert not prompt_must_be_cut(rule, 5, 5)  # 10 fits


@pytest.fixture(scope="module")
def tok(tokenizer_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tokenizer_dir)


def test_a_text_prompt_exactly_at_its_budget_is_not_cut(tok):
    from kto.precompute.inputs.examples import Example
    from kto.precompute.plan import Truncation
    from kto.precompute.tokenize import PromptCut, tokenize_example

    ex = Example("t", "word " * 20 + "Question?", " yes" * 10, True, "t.jsonl: row 1")
    whole = tokenize_example(ex, tok)
    p = len(whole.prompt_ids)
    assert len(whole.completion_ids) >= 2  # so that p + completion > p + 1 = max_length
    row = tokenize_example(ex, tok, truncation=Truncation(p + 1, p))
    assert row.prompt_cut == PromptCut.NONE
    assert row.prompt_ids.tolist() == whole.prompt_ids.tolist() and row.completion_ids.tolist() == whole.completion_ids.tolist()
    # One token less of budget: cut, to its last p - 1 ids.
    row = tokenize_example(ex, tok, truncation=Truncation(p + 1, p - 1))
    assert row.prompt_cut == PromptCut.MID_TEXT and row.prompt_ids.tolist() == whole.prompt_ids[1:].tolist()


def test_a_conversation_exactly_at_its_budget_keeps_every_turn(tok):
    from kto.precompute.inputs.examples import Example
    from kto.precompute.plan import Truncation
    from kto.precompute.tokenize import PromptCut, tokenize_example

    msgs = []
    for i in range(3):
        msgs += [{"role": "user", "content": f"question {i} " + "word " * 10}, {"role": "assistant", "content": f"answer {i} " + "blah " * 10}]
    msgs.append({"role": "user", "content": "last question"})
    ex = Example("c", tuple(msgs), ({"role": "assistant", "content": "ok " * 30},), True, "c.jsonl: row 1")
    whole = tokenize_example(ex, tok)
    p = len(whole.prompt_ids)
    row = tokenize_example(ex, tok, truncation=Truncation(p + 1, p))
    assert row.prompt_cut == PromptCut.NONE and row.prompt_ids.tolist() == whole.prompt_ids.tolist()
    assert "question 0" in tok.decode(row.prompt_ids)
    row = tokenize_example(ex, tok, truncation=Truncation(p + 1, p - 1))  # one under: turns go
    assert row.prompt_cut == PromptCut.TURNS and "question 0" not in tok.decode(row.prompt_ids)
