"""The truncation rule (precompute/tokenize.py): a row is cut only by its own length; its prompt
is cut at tokenization (conversations by whole turns first), its completion and KL completion
behind that prompt."""

import contextlib

import numpy as np
import pytest
from transformers import AutoTokenizer

from kto.precompute.inputs.examples import Example
from kto.precompute.plan import Truncation
from kto.precompute.tokenize import PromptCut, keep_end, prompt_must_be_cut, tokenize_example


@pytest.fixture(scope="module")
def tok(tokenizer_dir):
    return AutoTokenizer.from_pretrained(tokenizer_dir)


def lengths(p, c, k, max_length, max_prompt_length=None):
    rule = Truncation(max_length, max_prompt_length or max_length // 2)
    cut = prompt_must_be_cut(rule, p, c)
    kept = rule.kept_lengths(p, c, k)
    return cut, int(kept[0]), int(kept[1])


def test_a_row_that_fits_keeps_its_prompt_whatever_its_partner():
    """The issue's row: P = 545, own C = 6, partner's C = 499, max_length 1024. 545 + 6 = 551 ≤
    1024: nothing of the row is cut (the old rule cut its prompt to 1024 − 499 = 525, because
    545 + 499 = 1044 > 1024). Its KL completion keeps 1024 − 545 = 479 of the partner's 499."""
    assert lengths(545, 6, 499, 1024) == (False, 6, 479)


def test_a_prompt_within_its_budget_stays_whole_and_the_completion_is_cut():
    """P = 300 ≤ max_prompt_length 512, C = 900: 1200 > 1024, yet the prompt stays whole; the
    completion keeps 1024 − 300 = 724, the KL completion (200) is whole."""
    assert lengths(300, 900, 200, 1024) == (False, 724, 200)


def test_a_prompt_over_its_budget_in_a_row_that_does_not_fit_is_cut():
    """P = 600 > 512 and 600 + 500 = 1100 > 1024: the prompt is cut (to at most 512)."""
    assert lengths(600, 500, 30, 1024)[0]
    # behind a prompt cut to 512: room 512, completion 500 whole, KL completion 700 → 512
    assert Truncation(1024, 512).kept_lengths(512, 500, 700) == (500, 512)


def test_kept_lengths_for_many_rows_equal_what_apply_cuts():
    """The manifest's counts use the vectorized lengths; the shards use apply: they must agree,
    and both sequences fit max_length behind the one prompt."""
    rng = np.random.default_rng(0)
    rule = Truncation(max_length=64, max_prompt_length=20)
    p, c, k = rng.integers(1, 21, size=500), rng.integers(1, 90, size=500), rng.integers(1, 90, size=500)
    kept = rule.kept_lengths(p, c, k)
    for i in range(500):
        got = rule.apply(np.arange(p[i], dtype=np.int32), np.arange(c[i], dtype=np.int32), np.arange(k[i], dtype=np.int32))
        assert (len(got.completion_ids), len(got.kl_completion_ids)) == (kept[0][i], kept[1][i])
        assert len(got.prompt_ids) == p[i] and len(got.prompt_ids) + max(len(got.completion_ids), len(got.kl_completion_ids)) <= 64
        assert got.completion_cut == (c[i] > 64 - p[i]) and got.kl_completion_cut == (k[i] > 64 - p[i])


def test_a_shards_rows_are_cut_as_apply_cuts_each_row(tmp_path):
    """plan.shard_values cuts a shard's rows all at once, from the staging file, with the
    arithmetic of Truncation.kept_lengths: row for row it must equal `apply` on the row's
    staged prompt, its whole completion and its partner's, and `truncated` must say whether
    the prompt (at tokenization) or the completion (here) was cut."""
    import pyarrow as pa
    import pyarrow.ipc as ipc

    from kto.formats import schema as S
    from kto.formats.cache import ArrowFile
    from kto.precompute.plan import shard_values

    rng = np.random.default_rng(1)
    n, rule = 60, Truncation(max_length=64, max_prompt_length=20)
    prompts = [rng.integers(0, 1000, rng.integers(1, 21)).astype(np.int32) for _ in range(n)]
    completions = [rng.integers(0, 1000, rng.integers(1, 90)).astype(np.int32) for _ in range(n)]
    staged = {
        S.ID: [f"r{i}" for i in range(n)],
        S.LABEL: [bool(i % 2) for i in range(n)],
        S.PROMPT_IDS: pa.array([p.tolist() for p in prompts], pa.list_(pa.int32())),
        "prompt_cut": pa.array(rng.integers(0, 3, n), pa.int8()),
        "completion_ids": pa.array([c.tolist() for c in completions], pa.list_(pa.int32())),
    }
    path = tmp_path / "staged.arrow"
    table = pa.table(staged)
    with ipc.new_file(str(path), table.schema) as writer:
        for start in range(0, n, 25):  # record batches, as staging writes them
            writer.write_table(table.slice(start, 25))
    rows, partners = rng.permutation(n)[:40], rng.permutation(n)[:40]
    with ArrowFile(path) as reader:
        values = shard_values(reader, rows, partners, rule)
    got_completions, got_kl = values[S.COMPLETION_IDS].to_list(), values[S.KL_COMPLETION_IDS].to_list()
    for k, (i, j) in enumerate(zip(rows.tolist(), partners.tolist())):
        cut = rule.apply(prompts[i], completions[i], completions[j])
        assert values[S.ID][k] == f"r{i}" and values[S.KL_SOURCE_ID][k] == f"r{j}"
        assert values[S.PROMPT_IDS].to_list()[k].tolist() == cut.prompt_ids.tolist()
        assert got_completions[k].tolist() == cut.completion_ids.tolist()
        assert got_kl[k].tolist() == cut.kl_completion_ids.tolist()
        assert values[S.TRUNCATED][k] == (staged["prompt_cut"][i].as_py() != 0 or cut.completion_cut)
    assert values[S.TRUNCATED].any() and not values[S.TRUNCATED].all()


def test_keep_end_reattaches_bos():
    """BOS 1 + 14 tokens, budget 7: BOS + the last 6."""
    assert keep_end(Truncation(10, 7, bos_id=1), [1, *range(20, 34)]).tolist() == [1, 28, 29, 30, 31, 32, 33]
    assert keep_end(Truncation(10, 7), list(range(20, 34))).tolist() == list(range(27, 34))


def conversation(turns: int, words: int = 20, system: str | None = None, last: str = "final question " + "x y " * 10):
    msgs = [{"role": "system", "content": system}] if system else []
    for i in range(turns):
        msgs += [{"role": "user", "content": f"question {i} " + "word " * words}, {"role": "assistant", "content": f"answer {i} " + "blah " * words}]
    msgs.append({"role": "user", "content": last})
    return tuple(msgs)


def chat_example(prompt, answer="ok " * 30, row_id="r"):
    return Example(row_id, prompt, ({"role": "assistant", "content": answer},), True, "c.jsonl: row 1")


def test_a_long_conversation_loses_whole_earliest_turns_and_starts_with_a_turn_header(tok):
    """4 earlier turns + a last question: 369 prompt tokens, over max_prompt_length 100 in a row of
    max_length 300 that does not fit. The earliest turns go, whole, until the re-rendered prompt
    fits 100; SmolLM2's template then injects its default system message again, so the prompt
    is exactly the rendering of the kept messages, turn header first."""
    ex = chat_example(conversation(4))
    row = tokenize_example(ex, tok, truncation=Truncation(300, 100))
    assert row.prompt_cut == PromptCut.TURNS and len(row.prompt_ids) <= 100
    kept = tok.apply_chat_template([dict(m) for m in ex.prompt[-1:]], tokenize=False, add_generation_prompt=True)
    assert tok.decode(row.prompt_ids) == kept and kept.startswith("<|im_start|>system\nYou are a helpful AI")
    assert tok.decode(row.completion_ids) == "ok " * 30 + "<|im_end|>\n"  # the whole completion
    # A budget of 200 keeps the last earlier turn too (the latest turns that fit).
    row = tokenize_example(ex, tok, truncation=Truncation(300, 200))
    text = tok.decode(row.prompt_ids)
    assert row.prompt_cut == PromptCut.TURNS and "question 3" in text and "question 2" not in text


def test_a_system_message_is_kept_when_turns_are_dropped(tok):
    ex = chat_example(conversation(4, system="be nice"))
    row = tokenize_example(ex, tok, truncation=Truncation(200, 60))
    assert row.prompt_cut == PromptCut.TURNS
    assert tok.decode(row.prompt_ids) == tok.apply_chat_template([dict(ex.prompt[0]), dict(ex.prompt[-1])], tokenize=False, add_generation_prompt=True)


def test_a_last_turn_too_long_alone_keeps_its_header_its_end_and_the_generation_prompt(tok):
    """[default system] + the last user turn are 53 tokens; budget 40: the turn's text loses its
    start, and the prompt is exactly 40 ids: the headers, the text's last ids, `<|im_end|>` and
    the generation prompt."""
    ex = chat_example(conversation(4))
    row = tokenize_example(ex, tok, truncation=Truncation(200, 40))
    text = tok.decode(row.prompt_ids)
    assert row.prompt_cut == PromptCut.MID_TEXT and len(row.prompt_ids) == 40
    assert text.startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n<|im_start|>user\n")
    assert text.endswith(" x y x y <|im_end|>\n<|im_start|>assistant\n") and "final question" not in text


@pytest.mark.parametrize("lead", ["  ", " ", "\n"], ids=["two-spaces", "space", "newline"])
@pytest.mark.parametrize("system", ["Be brief.", "lorem ipsum dolor sit amet " * 40], ids=["short-system", "long-system"])
def test_a_cut_text_starting_with_whitespace_keeps_its_headers_newline(tok, lead, system):
    """Seen by a reviewer: SmolLM2's tokenizer writes "\\n " as one token (ĊĠ), the user header's
    newline and the text's leading space. It counted as the text's, so a cut inside the text
    took it and the prompt read '<|im_start|>userolor sit amet…'. A token that straddles the
    header's end is kept with the header: the header stays whole, the prompt within budget."""
    long = " ".join(["lorem ipsum dolor sit amet"] * 40)
    ex = chat_example(({"role": "system", "content": system}, {"role": "user", "content": lead + long}), answer="ok " * 50)
    for budget in (40, 60):
        row = tokenize_example(ex, tok, truncation=Truncation(budget + 5, budget))
        text = tok.decode(row.prompt_ids)
        assert row.prompt_cut == PromptCut.MID_TEXT and len(row.prompt_ids) <= budget
        assert "<|im_start|>user\n" in text and text.startswith("<|im_start|>system\n")
        assert text.endswith(" sit amet<|im_end|>\n<|im_start|>assistant\n")


def test_a_conversation_that_fits_is_not_cut_past_its_prompt_budget(tok):
    ex = chat_example(conversation(4))
    row = tokenize_example(ex, tok, truncation=Truncation(1000, 100))
    assert row.prompt_cut == PromptCut.NONE and len(row.prompt_ids) == len(tokenize_example(ex, tok).prompt_ids) > 100


def test_rows_with_one_prompt_get_one_cut_prompt(tok):
    """Two rows of one prompt text, both too long: identical cut prompt ids (prefix sharing packs
    them); a third with a short completion fits and keeps the whole prompt: two variants."""
    prompt = conversation(4)  # 369 tokens
    rule = Truncation(400, 100)
    a, b = (tokenize_example(chat_example(prompt, answer, str(i)), tok, truncation=rule) for i, answer in enumerate(("yes " * 80, "no " * 120)))
    short = tokenize_example(chat_example(prompt, "no", "s"), tok, truncation=rule)
    assert a.prompt_ids.tolist() == b.prompt_ids.tolist() and a.prompt_cut == PromptCut.TURNS
    assert short.prompt_cut == PromptCut.NONE and len(short.prompt_ids) == 369


def test_a_text_prompt_keeps_its_end(tok):
    ex = Example("t", "word " * 200 + "Question?", " yes" * 50, True, "t.jsonl: row 1")
    whole = tokenize_example(ex, tok)
    row = tokenize_example(ex, tok, truncation=Truncation(120, 60))
    assert row.prompt_cut == PromptCut.MID_TEXT and row.prompt_ids.tolist() == whole.prompt_ids[-60:].tolist()
    assert row.completion_ids.tolist() == whole.completion_ids.tolist()


def test_a_prefix_split_template_cut_by_turns_is_still_a_prefix_of_the_full_rendering(tokenizer_dir):
    """A template that renders the prompt differently when a reply follows: the cut prompt and the
    completion are split from the kept messages' full rendering, so together they are it."""
    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    tok.chat_template = (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
        "{% if m['role'] == 'assistant' %}<think></think>{% endif %}{{ m['content'] }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\nReady: {% endif %}"
    )
    ex = chat_example(conversation(4))
    row = tokenize_example(ex, tok, truncation=Truncation(300, 100))
    assert row.prefix_split and row.prompt_cut == PromptCut.TURNS
    full = tok.apply_chat_template([dict(m) for m in ex.prompt[-1:] + ex.completion], tokenize=False)
    assert tok.decode([*row.prompt_ids, *row.completion_ids]) == full and full.startswith("<|im_start|>user\nfinal question")


def test_the_staging_key_includes_the_limits(tokenizer_dir, tmp_path):
    """Staged prompts are already cut, so a resumed run with other limits must tokenize again
    (staging holds the cut of max_length 46 here, the whole prompts at 200)."""
    from conftest import chat_rows, staging_content, write_rows

    from kto.precompute.config import PrecomputeConfig
    from kto.precompute.pipeline import stage_rows
    from kto.precompute.staging import read_index
    from kto.precompute.templates import ChatTemplate

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    data = write_rows(tmp_path / "chat.jsonl", chat_rows())
    paths, prompt_lengths = [], []
    for max_length in (46, 200):
        cfg = PrecomputeConfig(data=(data,), model="unused", out=tmp_path / "c", max_length=max_length)
        content = staging_content(data)
        content = type(content)(**{**content.to_json(), "max_length": max_length, "max_prompt_length": max_length // 2})
        paths.append(stage_rows(cfg, tok, ChatTemplate(), content))
        prompt_lengths.append(read_index(paths[-1]).prompt_len.sum())
    assert paths[0] != paths[1] and prompt_lengths[0] < prompt_lengths[1]


def test_a_long_conversation_keeps_the_most_turns_that_fit_in_few_renderings(tok, monkeypatch):
    """40 earlier turns, budget 300: the kept prompt is the longest suffix of whole turns whose
    rendering fits (computed here by a reference loop over every suffix), found by
    bisection in at most ⌈log2 40⌉ + 2 renderings (a loop over the turns took 30-odd)."""
    from kto.precompute import tokenize

    prompt = conversation(40, words=5)
    lengths = [
        len(tok(tok.apply_chat_template([dict(m) for m in prompt[2 * k :]], tokenize=False, add_generation_prompt=True), add_special_tokens=False).input_ids)
        for k in range(1, 41)
    ]
    expected = next(k for k, n in zip(range(1, 41), lengths) if n <= 300)
    calls = []
    real = tokenize._split_rendering
    monkeypatch.setattr(tokenize, "_split_rendering", lambda *a: calls.append(1) or real(*a))
    row = tokenize_example(chat_example(prompt), tok, truncation=Truncation(400, 300))
    assert row.prompt_cut == PromptCut.TURNS
    assert tok.decode(row.prompt_ids) == tok.apply_chat_template([dict(m) for m in prompt[2 * expected :]], tokenize=False, add_generation_prompt=True)
    assert len(calls) <= 8


def test_a_system_message_too_long_for_the_budget_is_cut_inside_its_text_keeping_its_header(tok):
    """A 30-sentence system message with a short question: the system text, the headers and the
    generation prompt alone exceed max_prompt_length, so the last turn's text cannot absorb the
    cut. The system text loses its start, its header and the question stay whole. Before, the
    prompt kept the ids' end and began mid-sentence inside the system text, with no header."""
    system = "You are a careful assistant. " * 30
    ex = chat_example(({"role": "system", "content": system}, {"role": "user", "content": "Question: what is 2+2?"}), answer="ok " * 200)
    row = tokenize_example(ex, tok, truncation=Truncation(256, 100))
    text = tok.decode(row.prompt_ids)
    assert row.prompt_cut == PromptCut.MID_TEXT and len(row.prompt_ids) == 100
    assert text.startswith("<|im_start|>system\n") and not text.startswith("<|im_start|>system\nYou are a careful")
    assert text.endswith(" careful assistant. <|im_end|>\n<|im_start|>user\nQuestion: what is 2+2?<|im_end|>\n<|im_start|>assistant\n")


def test_a_system_message_and_a_last_turn_each_over_the_budget_are_both_cut_keeping_their_headers(tok):
    """Seen in a hunt: a 30-sentence system message and a 30-sentence question under
    max_prompt_length 48. Neither cut alone fits (the other text is 150+ tokens), so the prompt
    kept the ids' end: no system header, no user header, a start inside the question. Now both
    texts keep their ends, each behind its header: the headers and the generation prompt take 14
    ids ("assistant" is 2), the 34 left go 17 to the system text (half) and 17 to the question."""
    system, question = "You are a careful assistant. " * 30, "Please answer this long question. " * 30
    ex = chat_example(({"role": "system", "content": system}, {"role": "user", "content": question}), answer="ok " * 200)
    row = tokenize_example(ex, tok, truncation=Truncation(96, 48))
    text = tok.decode(row.prompt_ids)
    assert row.prompt_cut == PromptCut.MID_TEXT and len(row.prompt_ids) == 48
    system_kept, rest = text.removeprefix("<|im_start|>system\n").split("<|im_end|>\n<|im_start|>user\n")
    question_kept = rest.removesuffix("<|im_end|>\n<|im_start|>assistant\n")
    assert text.startswith("<|im_start|>system\n") and system.endswith(system_kept) and question.endswith(question_kept)
    ends = [i for i, t in enumerate(row.prompt_ids) if t == tok.convert_tokens_to_ids("<|im_end|>")]
    assert (ends[0] - 3, ends[1] - ends[0] - 5) == (17, 17)  # after "<|im_start|>system\n", "<|im_end|>\n<|im_start|>user\n"


TRIMMING = (
    "{% for m in messages %}<|im_start|>{{ m.role }}\n{% for c in m.tool_calls or [] %}<tool_call>{{ c.function.name }}</tool_call>{% endfor %}"
    "{{ m.content | trim }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@contextlib.contextmanager
def templated(tokenizer, text: str):
    """`tokenizer` with chat template `text` (as kto-precompute installs --chat-template) while inside."""
    before, tokenizer.chat_template = tokenizer.chat_template, text
    try:
        yield tokenizer
    finally:
        tokenizer.chat_template = before


def test_a_turn_that_a_trimming_template_renders_stripped_is_cut_inside_its_text(tok):
    """Seen in a review: Llama-3's, Gemma's and Mistral's templates `| trim` each text, so a
    last turn ending in a newline was not found in the rendering, and the prompt kept the ids'
    end: no system message, no header, a start mid-word. Counted as an ordinary mid-text cut."""
    prompt = ({"role": "system", "content": "Be brief."}, {"role": "user", "content": "word " * 300 + "\n"})
    with templated(tok, TRIMMING):
        row = tokenize_example(chat_example(prompt), tok, truncation=Truncation(256, 100))
    text = tok.decode(row.prompt_ids)
    assert row.prompt_cut == PromptCut.MID_TEXT and len(row.prompt_ids) == 100
    assert text.startswith("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n") and text.endswith("word<|im_end|>\n<|im_start|>assistant\n")


def test_a_long_tool_result_after_the_last_question_is_cut_inside_its_text(tok):
    """The turns after the last user turn (a call and its result) are kept whole when that turn
    is cut; a result longer than the budget left it no room, and the prompt kept the ids' end,
    starting inside the call. The result's text is cut now, every header kept."""
    call = {"type": "function", "function": {"name": "weather", "arguments": {}}}
    prompt = ({"role": "user", "content": "Weather?"}, {"role": "assistant", "content": "", "tool_calls": [call]}, {"role": "tool", "content": "sunny " * 300})
    with templated(tok, TRIMMING):
        row = tokenize_example(chat_example(prompt), tok, truncation=Truncation(256, 100))
    text = tok.decode(row.prompt_ids)
    assert row.prompt_cut == PromptCut.MID_TEXT and len(row.prompt_ids) == 100
    assert text.startswith("<|im_start|>user\nWeather?<|im_end|>\n<|im_start|>assistant\n<tool_call>weather</tool_call><|im_end|>\n<|im_start|>tool\n")
    assert text.endswith("sunny<|im_end|>\n<|im_start|>assistant\n")


def test_an_agent_trace_too_long_everywhere_costs_five_cut_tries(tok, monkeypatch):
    """Seen in a review: every turn after the last question was tried, each try rendering and
    tokenizing the whole prompt: 402 tries and 102 s for one row of 200 tool round trips. The
    largest later texts leave the most room, so only the three largest by tokens are tried after
    the user and system turns (prompt_cut.py CANDIDATES; the longest by characters is the first
    of them here); none fits and the ids' end is kept, as before."""
    from kto.precompute import prompt_cut

    tries = []
    cut_inside = prompt_cut._cut_inside
    monkeypatch.setattr(prompt_cut, "_cut_inside", lambda *a, **k: tries.append(a[1]) or cut_inside(*a, **k))
    call = {"type": "function", "function": {"name": "f", "arguments": {}}}
    turns = [m for i in range(40) for m in ({"role": "assistant", "content": "", "tool_calls": [call]}, {"role": "tool", "content": f"result {i} " * 20})]
    prompt = ({"role": "system", "content": "Be brief."}, {"role": "user", "content": "Go."}, *turns)
    with templated(tok, TRIMMING):
        row = tokenize_example(chat_example(prompt), tok, truncation=Truncation(256, 100))
    assert row.prompt_cut == PromptCut.MID_TEXT and len(row.prompt_ids) == 100
    assert tries == [1, 0, 23, 25, 27]  # the user turn, the system message, the first three largest results (i = 10…12: two digits)


SMOLLM_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"  # its template's own


def test_a_templates_own_system_message_is_cut_inside_its_text_keeping_its_header(tok):
    """Seen by a hunter: SmolLM2's template adds its own system message to a conversation that has
    none; only one present in the data was cut inside its text, so at --max-length 48 (prompt
    budget 24) 7 of conftest's 8 questions began mid-text inside the template's message
    (' Hugging Face<|im_end|>…') and at 32 one began with its header split ('user\\n…'). The
    template's message is cut as an explicit one is now: the same ids, its header kept. The
    sky question's turn, the generation prompt and the system header take 24 tokens, the whole
    budget: its two rows keep the system header with none of its text (they kept the ids' end,
    the last resort, until a hunt showed a Llama 3.2 prompt losing its system header so)."""
    from conftest import chat_rows

    headed = []
    for r in chat_rows():
        ex = chat_example(tuple(r["prompt"]), r["completion"][0]["content"])
        explicit = chat_example(({"role": "system", "content": SMOLLM_SYSTEM}, *r["prompt"]), r["completion"][0]["content"])
        row, same = (tokenize_example(e, tok, truncation=Truncation(48, 24)) for e in (ex, explicit))
        assert row.prompt_ids.tolist() == same.prompt_ids.tolist() and row.prompt_cut == same.prompt_cut
        text = tok.decode(row.prompt_ids)
        assert text.endswith(f"<|im_end|>\n<|im_start|>user\n{r['prompt'][0]['content']}<|im_end|>\n<|im_start|>assistant\n")
        if row.prompt_cut == PromptCut.MID_TEXT:
            headed.append(text.startswith("<|im_start|>system\n") and not text.startswith(f"<|im_start|>system\n{SMOLLM_SYSTEM[:8]}"))
    assert headed == [True] * 7


QWEN_LIKE = (  # Qwen2.5's shape: a default system message when the conversation has none
    "{% if messages[0].role == 'system' %}<|im_start|>system\n{{ messages[0].content }}<|im_end|>\n"
    "{% else %}<|im_start|>system\nYou are Qwen, a helpful assistant.<|im_end|>\n{% endif %}"
    "{% for m in messages %}{% if m.role != 'system' %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
LLAMA31_LIKE = (  # a system block always there, its text empty without a system message
    "<|im_start|>system\nToday Date: 1 Jan 2025\n\n{% if messages[0].role == 'system' %}{{ messages[0].content | trim }}{% endif %}<|im_end|>\n"
    "{% for m in messages %}{% if m.role != 'system' %}<|im_start|>{{ m.role }}\n{{ m.content | trim }}<|im_end|>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
GEMMA_LIKE = (  # refuses a system message
    "{% if messages[0].role == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}"
    "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content | trim }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
PREPENDING = (  # Gemma-3's and Mistral's shape: the system text is put inside a user turn
    "{% if messages[0].role == 'system' %}{% set sys = messages[0].content + '\n\n' %}{% set rest = messages[1:] %}"
    "{% else %}{% set sys = '' %}{% set rest = messages %}{% endif %}"
    "{% for m in rest %}<|im_start|>{{ m.role }}\n{% if loop.first %}{{ sys }}{% endif %}{{ m.content }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@pytest.mark.parametrize(
    ("template", "expected"),
    [(None, SMOLLM_SYSTEM), (QWEN_LIKE, "You are Qwen, a helpful assistant."), (LLAMA31_LIKE, None), (GEMMA_LIKE, None), (PREPENDING, None), (TRIMMING, None)],
    ids=["smollm2", "qwen-like", "llama31-like", "gemma-like", "prepending", "chatml-trimming"],
)
def test_the_templates_own_system_message_is_found_only_where_there_is_one(tok, template, expected):
    """A template's own system message is the text an explicit system message would need to
    render the same; a template without one (an empty system block, a refused or prepended
    system message) gives none, and its prompts are cut as before. A conversation with its own
    system message has no other."""
    from kto.precompute.prompt_cut import template_system
    from kto.precompute.templates import ChatTemplate
    from kto.precompute.tokenize import render

    question = ({"role": "user", "content": "What is 7 times 8?"},)
    draw = lambda messages: render(tok, messages, chat_example(question), ChatTemplate(), add_generation_prompt=True)
    with templated(tok, template) if template else contextlib.nullcontext(tok):
        found = template_system(question, draw)
        assert found == (({"role": "system", "content": expected},) if expected else ())
        with_system = ({"role": "system", "content": "Be brief."}, *question)
        assert template == GEMMA_LIKE or template_system(with_system, draw) == ()
