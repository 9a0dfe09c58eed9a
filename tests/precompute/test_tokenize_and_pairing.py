import pytest
from transformers import AutoTokenizer

from kto.formats.errors import InputError
from kto.formats.examples import Example
from kto.precompute.pairing import kl_partners
from kto.precompute.tokenize import leading_bos_id, tokenize_example, truncate


@pytest.fixture(scope="module")
def tok(tokenizer_dir):
    return AutoTokenizer.from_pretrained(tokenizer_dir)


def text_example(prompt, completion):
    return Example("x", prompt, completion, True, "t.jsonl: row 1")


def test_plain_text_splits_at_the_prompt_boundary_and_appends_eos(tok):
    row = tokenize_example(text_example("Question: 2+2?\nAnswer:", " 4"), tok, max_length=64, max_prompt_length=32, bos_id=None)
    assert tok.decode(row.prompt_ids) == "Question: 2+2?\nAnswer:"
    assert row.completion_ids[-1] == tok.eos_token_id
    assert tok.decode(row.completion_ids[:-1]) == " 4"
    assert not row.truncated


def test_conversational_prompt_ends_with_generation_prompt(tok):
    ex = Example("c", ({"role": "user", "content": "hi"},), ({"role": "assistant", "content": "hello there"},), True, "c.jsonl: row 1")
    row = tokenize_example(ex, tok, max_length=128, max_prompt_length=64, bos_id=None)
    assert tok.decode(row.prompt_ids).endswith("<|im_start|>assistant\n")
    assert tok.decode(row.completion_ids) == "hello there<|im_end|>\n"
    assert not row.prefix_split


def test_truncation_keeps_prompt_end_and_completion_start():
    p, c, t = truncate(list(range(10)), list(range(100, 110)), max_length=8, max_prompt_length=4, bos_id=None)
    assert p == [6, 7, 8, 9] and c == [100, 101, 102, 103] and t


def test_truncation_reattaches_bos():
    p, _, _ = truncate([1, 5, 6, 7, 8, 9], [100], max_length=8, max_prompt_length=4, bos_id=1)
    assert p == [1, 7, 8, 9]


def test_smollm2_does_not_add_bos(tok):
    assert leading_bos_id(tok) is None


def test_long_prompt_marks_row_truncated(tok):
    row = tokenize_example(text_example("word " * 200, " yes"), tok, max_length=64, max_prompt_length=32, bos_id=None)
    assert len(row.prompt_ids) == 32 and row.truncated


def test_partners_never_self_and_never_same_completion():
    prompts = [f"p{i}" for i in range(9)]
    completions = ["same", "same"] + [f"c{i}" for i in range(7)]
    pairing = kl_partners(prompts, completions, [str(i) for i in range(9)], seed=3)
    for i, j in enumerate(pairing.partner):
        assert i != j and completions[i] != completions[j] and prompts[i] != prompts[j]
    assert pairing.same_prompt == 0


def test_partners_are_a_derangement_when_unconstrained_and_seeded():
    ids = [str(i) for i in range(11)]
    a = kl_partners(ids, ids, ids, seed=7).partner
    assert sorted(a) == list(range(11))  # a permutation: each completion used once
    assert a == kl_partners(ids, ids, ids, seed=7).partner
    assert a != kl_partners(ids, ids, ids, seed=8).partner


def test_same_prompt_fallback_is_counted():
    prompts = ["p", "p", "p", "q"]
    pairing = kl_partners(prompts, ["a", "b", "c", "d"], list("0123"), seed=0)
    # Only row 3 has a different prompt; at most one p-row can use it... every p-row may pick q's
    # completion, so count the rows that did not.
    same = sum(prompts[i] == prompts[j] for i, j in enumerate(pairing.partner))
    assert pairing.same_prompt == same


def test_two_rows_pair_with_each_other():
    assert kl_partners(["a", "b"], ["x", "y"], ["0", "1"], seed=0).partner == [1, 0]


def test_no_valid_partner_is_an_error():
    with pytest.raises(InputError, match="row 0: no valid KL partner"):
        kl_partners(["a", "b"], ["same", "same"], ["0", "1"], seed=0)


def test_template_that_renders_the_prompt_differently_is_split_at_the_common_prefix(tokenizer_dir):
    """A 'reasoning' template that inserts an empty think block only when a reply follows."""
    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    tok.chat_template = (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
        "{% if m['role'] == 'assistant' %}<think></think>{% endif %}{{ m['content'] }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\nReady: {% endif %}"
    )
    ex = Example("c", ({"role": "user", "content": "hi"},), ({"role": "assistant", "content": "hello"},), True, "c.jsonl: row 1")
    row = tokenize_example(ex, tok, max_length=128, max_prompt_length=64, bos_id=None)
    assert row.prefix_split
    full = tok.apply_chat_template([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}], tokenize=False)
    assert tok.decode([*row.prompt_ids, *row.completion_ids]) == full
    assert tok.decode(row.prompt_ids).endswith("<|im_start|>assistant\n")
    assert "hello" in tok.decode(row.completion_ids)
