"""Real model families' chat templates (tests/precompute/templates/, as the models ship them)
through tokenization: SmolLM2's tokenizer dressed as each family's (its special tokens, BOS and
EOS), so the templates render exactly as they do for the real models.

- Mistral v0.3 and Nemo put the system text into the user turn that is `loop.last`: with the
  completion after it, that turn is no longer last, the system text is gone from the full
  rendering, and a split at the common prefix stored the user's words as the completion.
- DeepSeek-R1-Distill strips everything up to `</think>` from assistant turns: the row is kept
  (TRL splits the same way), but the dropped reasoning is said in a note.
- Llama 3.2 with a prompt budget that leaves the system text exactly zero tokens keeps the
  system header (empty text) instead of falling back to the ids' end.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from kto.formats.errors import InputError
from kto.precompute.inputs.examples import Example
from kto.precompute.plan import Truncation
from kto.precompute.staging import stage
from kto.precompute.templates import ChatTemplate
from kto.precompute.tokenize import DroppedText, PromptCut, TokenizedRow, leading_bos_id, tokenize_example

TEMPLATES = Path(__file__).parent / "templates"
MISTRAL_SPECIALS = ["<s>", "</s>", "[INST]", "[/INST]", "[TOOL_CALLS]", "[AVAILABLE_TOOLS]", "[/AVAILABLE_TOOLS]", "[TOOL_RESULTS]", "[/TOOL_RESULTS]"]
# family: (template file, special tokens, plain added tokens, BOS, EOS)
FAMILIES = {
    "mistral03": ("mistral_v03.jinja", MISTRAL_SPECIALS, [], "<s>", "</s>"),
    "mistralnemo": ("mistral_nemo_like.jinja", MISTRAL_SPECIALS, [], "<s>", "</s>"),
    "deepseek": (
        "deepseek_r1_qwen.jinja",
        ["<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", "<｜User｜>", "<｜Assistant｜>"],
        ["<think>", "</think>"],
        "<｜begin▁of▁sentence｜>",
        "<｜end▁of▁sentence｜>",
    ),
    "qwen3": ("qwen3.jinja", [], ["<think>", "</think>"], None, "<|im_end|>"),
    "llama32": (
        "llama32.jinja",
        ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>", "<|eom_id|>"],
        [],
        "<|begin_of_text|>",
        "<|eot_id|>",
    ),
}


@pytest.fixture(scope="module")
def family(tokenizer_dir):
    """family name -> a tokenizer with that family's tokens and chat template (built once)."""
    built: dict = {}

    def get(name: str):
        if name not in built:
            template, specials, plain, bos, eos = FAMILIES[name]
            tok = AutoTokenizer.from_pretrained(tokenizer_dir)
            if specials:
                tok.add_special_tokens({"additional_special_tokens": specials})
            if plain:  # Qwen3's and DeepSeek's think tags are plain added tokens
                tok.add_tokens(plain)
            tok.bos_token, tok.eos_token = bos, eos
            tok.chat_template = (TEMPLATES / template).read_text()
            built[name] = tok
        return built[name]

    return get


def chat(*turns: tuple[str, str], label: bool = True, row: int = 1) -> Example:
    """An example from (role, content) turns; the last turn is the completion."""
    messages = tuple({"role": r, "content": c} for r, c in turns)
    return Example(f"data.jsonl:{row}", messages[:-1], messages[-1:], label, f"data.jsonl: row {row}")


def full_rendering(tok, ex: Example, template: ChatTemplate = ChatTemplate()) -> str:
    return tok.apply_chat_template([dict(m) for m in (*ex.prompt, *ex.completion)], tokenize=False, **template.kwargs)


# ---- 1. a template that renders the prompt's turns differently once the completion follows ----

SYSTEM_ROWS = [
    # the hunter's rows: the split put " honest: what is 2+2?[/INST] 4</s>" into the completion
    chat(("system", "Be brief."), ("user", "Be honest: what is 2+2?"), ("assistant", "4")),
    # the last user text also appears in an earlier turn, which hid it from the old check
    chat(("system", "You write stories."), ("user", "Continue"), ("assistant", "Once upon a time."), ("user", "Continue"), ("assistant", "The end.")),
]


@pytest.mark.parametrize("name", ["mistral03", "mistralnemo"])
@pytest.mark.parametrize("ex", SYSTEM_ROWS, ids=["system-then-user", "repeated-user-text"])
def test_a_template_that_drops_the_system_message_once_a_reply_follows_is_refused(family, name, ex):
    """Mistral v0.3 / Nemo: the system text rides the user turn that is loop.last, so the full
    rendering has no system text and the prompt rendering is not its start. Refused in one line
    naming the row, saying why and what to do, rather than training the user's words."""
    tok = family(name)
    assert ex.prompt[0]["content"] not in full_rendering(tok, ex)  # what the template does
    with pytest.raises(InputError) as refused:
        tokenize_example(ex, tok)
    message = str(refused.value)
    assert "\n" not in message
    assert message.startswith("data.jsonl: row 1 (id 'data.jsonl:1'): the chat template does not render the prompt as the start of the conversation")
    assert "differently once the completion follows" in message and "system message" in message
    assert "first user turn" in message and "--chat-template" in message


@pytest.mark.parametrize("name", ["mistral03", "mistralnemo"])
def test_the_same_templates_without_a_system_message_split_at_the_generation_prompt(family, name):
    tok = family(name)
    ex = chat(("user", "Be honest: what is 2+2?"), ("assistant", "4"))
    row = tokenize_example(ex, tok)
    assert tok.decode([*row.prompt_ids, *row.completion_ids]) == full_rendering(tok, ex)
    assert tok.decode(row.prompt_ids).endswith("what is 2+2?[/INST]") and "2+2" not in tok.decode(row.completion_ids)


def test_deepseek_rows_are_still_split_at_the_common_prefix(family):
    """DeepSeek-R1-Distill's generation prompt ends in '<think>\\n', which the rendering of a
    reply lacks: a common-prefix split, accepted, since the prompt's turns start the full
    rendering. With a system message too (this template keeps it first)."""
    tok = family("deepseek")
    for ex in (
        chat(("user", "What is 3*3?"), ("assistant", "It is 9.")),
        chat(("system", "Be brief."), ("user", "Hi"), ("assistant", "Hello!"), ("user", "What is 5+5?"), ("assistant", "10.")),
    ):
        row = tokenize_example(ex, tok)
        assert row.prefix_split
        assert tok.decode([*row.prompt_ids, *row.completion_ids]) == full_rendering(tok, ex)
        prompt = tok.decode(row.prompt_ids)
        assert prompt.endswith(ex.prompt[-1]["content"] + "<｜Assistant｜>") and ex.completion[0]["content"] in tok.decode(row.completion_ids)


def test_qwen3_without_thinking_still_tokenizes(family):
    tok, template = family("qwen3"), ChatTemplate(kwargs={"enable_thinking": False})
    ex = chat(("system", "Be brief."), ("user", "What is 2+2?"), ("assistant", "It is 4."))
    row = tokenize_example(ex, tok, template)
    assert tok.decode([*row.prompt_ids, *row.completion_ids]) == full_rendering(tok, ex, template)
    assert tok.decode(row.prompt_ids).endswith("What is 2+2?<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>")
    assert tok.decode(row.completion_ids) == "\n\nIt is 4.<|im_end|>\n"  # '\n\n' merged with the text: a prefix split


@pytest.mark.parametrize("completion", ["  indented answer", "\n\nanswer after blank lines"])
def test_a_generation_prompt_newline_merged_with_the_completion_is_still_split(tokenizer_dir, completion):
    """SmolLM2's own template: the generation prompt's last '\\n' merges with a completion that
    starts with spaces or newlines; the merged token goes to the completion (README)."""
    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    ex = chat(("user", "Say something."), ("assistant", completion))
    row = tokenize_example(ex, tok)
    assert row.prefix_split
    assert tok.decode([*row.prompt_ids, *row.completion_ids]) == full_rendering(tok, ex)
    assert "Say something." in tok.decode(row.prompt_ids)


# ---- 2. a template that drops part of the completion's text -----------------------------------

THINK_ROWS = [
    chat(("user", "Plain question"), ("assistant", "Plain answer without reasoning."), row=1),
    chat(("user", "What is 3*3?"), ("assistant", "<think>\nThree threes make nine.\n</think>\n\nIt is 9."), row=2),
    chat(
        ("user", "Hi"),
        ("assistant", "<think>\nGreeting.\n</think>\n\nHello!"),
        ("user", "What is 5+5?"),
        ("assistant", "<think>\nAdd them.\n</think>\n\n10."),
        row=3,
    ),
]


def staged_notes(examples: list[Example], tok, tmp_path: Path, capsys) -> list[str]:
    """The note lines stage() prints for these rows."""
    stage(iter(examples), lambda ex: tokenize_example(ex, tok), tmp_path / ".staging-0123456789abcdef01234567.arrow")
    return [line for line in capsys.readouterr().err.splitlines() if line.startswith("note:")]


def test_reasoning_the_template_drops_is_counted_in_one_note(family, tmp_path, capsys):
    """DeepSeek-R1-Distill caches '<think>…</think>\\n\\nIt is 9.' as '\\n\\nIt is 9.<eos>' (TRL
    does the same): kept, but said in one line with the count and the first such row."""
    tok = family("deepseek")
    row = tokenize_example(THINK_ROWS[1], tok)
    assert "Three threes" not in tok.decode(row.completion_ids)
    assert row.completion_text_dropped and not tokenize_example(THINK_ROWS[0], tok).completion_text_dropped
    [note] = staged_notes(THINK_ROWS, tok, tmp_path, capsys)
    assert note.startswith("note: 2 of 3 rows: the chat template dropped part of the completion's text")
    assert "first data.jsonl: row 2 (id 'data.jsonl:2')" in note and "--chat-template" in note and "reasoning" in note


def test_templates_that_trim_or_keep_the_text_and_tool_calls_give_no_note(family, tmp_path, capsys):
    """Mistral v0.3 trims the assistant's text (`| trim`) and Llama 3.2 trims every message: not
    a dropped text. A completion of tool calls alone has no text to look for."""
    padded = [chat(("user", f"Question {i}?"), ("assistant", f"  Answer {i}.  \n"), row=i) for i in range(1, 3)]
    for name in ("mistral03", "llama32"):
        assert staged_notes(padded, family(name), tmp_path / name, capsys) == []
    call = {"type": "function", "function": {"name": "add", "arguments": '{"a": 5, "b": 5}'}}
    calls = Example(
        "data.jsonl:3", ({"role": "user", "content": "Add 5 and 5."},), ({"role": "assistant", "content": "", "tool_calls": [call]},), True, "data.jsonl: row 3"
    )
    row = tokenize_example(calls, family("deepseek"))
    assert isinstance(row, TokenizedRow) and not row.completion_text_dropped


# ---- 3. a prompt budget that leaves the system text exactly no room ----------------------------

LONG = chat(
    ("system", "You are a helpful assistant. " * 3),
    ("user", "First question " + "blah " * 30),
    ("assistant", "First answer " + "yada " * 30),
    ("user", "Second question " + "foo " * 30),
    ("assistant", "Second answer " + "bar " * 30),
    ("user", "Third question, short?"),
    ("assistant", "Third answer " + "ok " * 40),
)
SYSTEM_HEADER = "<|begin_of_text|><|start_header_id|>system<|end_header_id|>"


def test_a_budget_that_leaves_the_system_text_no_room_keeps_its_header(family):
    """Llama 3.2, the hunter's long row: the smallest prompt budget that keeps the last turn whole
    (48) keeps the system header with none of the system text (room 0). Before, room 0 fell back
    too, and the prompt started inside the system text. Below it, both texts are cut, each
    behind its header (44: the system text empty, the question's "?"; 46: "." and " short?"),
    and a budget one smaller than that (43) falls back to the ids' end."""
    tok, template = family("llama32"), ChatTemplate(kwargs={"date_string": "06 Dec 2026"})
    limits = lambda budget: Truncation(max_length=2 * budget, max_prompt_length=budget, bos_id=leading_bos_id(tok))
    cut = {b: tokenize_example(LONG, tok, template, limits(b)) for b in range(30, 66)}  # 66 keeps whole turns
    assert all(row.prompt_cut == PromptCut.MID_TEXT and len(row.prompt_ids) <= b for b, row in cut.items())
    text = {b: tok.decode(row.prompt_ids) for b, row in cut.items()}
    headed = sorted(b for b in cut if text[b].startswith(SYSTEM_HEADER))
    assert headed == list(range(44, 66)), headed  # every budget from the first keeps it
    whole = "Third question, short?<|eot_id|><|start_header_id|>assistant<|end_header_id|>"
    smallest_whole = min(b for b in headed if text[b].endswith(whole))
    system_text = lambda b: re.search(r"Today Date: 06 Dec 2026\n\n(.*?)<\|eot_id\|>", text[b], re.S).group(1)
    question = lambda b: text[b].rsplit("<|start_header_id|>user<|end_header_id|>\n\n", 1)[1].removesuffix(whole[len("Third question, short?") :])
    assert smallest_whole == 48 and system_text(48) == "", text[48]  # the last turn whole
    assert [(system_text(b), question(b)) for b in (44, 45, 46)] == [("", "?"), (".", "?"), (".", " short?")]
    assert not text[43].startswith(SYSTEM_HEADER)


# ---- a system message the template leaves out, whatever the split ------------------------------

ADD = {"type": "function", "function": {"name": "add", "description": "add", "parameters": {"type": "object", "properties": {"a": {"type": "number"}}}}}
ADD_CALL = {"type": "function", "id": "call0abcd", "function": {"name": "add", "arguments": {"a": 5}}}


@pytest.mark.parametrize("name", ["mistral03", "mistralnemo"])
def test_a_system_message_left_out_of_a_prompt_that_ends_with_a_tool_result_is_refused(family, name):
    """Seen by a reviewer: the prompt ends with a tool result, so no user turn is last and these
    templates render the system text nowhere; the prompt ids were a prefix of the full ids, so
    no split check ran, and the row (its label resting on "answer in French") trained without it."""
    prompt = (
        {"role": "system", "content": "Always answer in French."},
        {"role": "user", "content": "Add 5 and 5."},
        {"role": "assistant", "content": "", "tool_calls": [ADD_CALL]},
        {"role": "tool", "content": "10", "tool_call_id": "call0abcd", "name": "add"},
    )
    ex = Example("data.jsonl:1", prompt, ({"role": "assistant", "content": "Ten."},), True, "data.jsonl: row 1", (ADD,))
    with pytest.raises(InputError) as refused:
        tokenize_example(ex, family(name))
    message = str(refused.value)
    assert message.startswith("data.jsonl: row 1 (id 'data.jsonl:1'): the chat template leaves the system message out of the prompt")
    assert "first user turn" in message and "\n" not in message


def test_reasoning_content_the_template_leaves_out_is_noted(family):
    """`reasoning_content` beside the answer (OpenAI-style reasoning, kept by the reader for the
    templates that render it): Llama 3.2 and DeepSeek render the answer alone, so the labelled
    reasoning does not train; Qwen3 renders it, so nothing is said."""
    said = {"role": "assistant", "content": "It is 9.", "reasoning_content": "Three threes make nine."}
    ex = Example("data.jsonl:1", ({"role": "user", "content": "What is 3*3?"},), (said,), True, "data.jsonl: row 1")
    assert tokenize_example(ex, family("llama32"), ChatTemplate(kwargs={"date_string": "06 Dec 2026"})).completion_text_dropped == DroppedText.REASONING
    assert tokenize_example(ex, family("deepseek")).completion_text_dropped == DroppedText.REASONING
    assert tokenize_example(ex, family("qwen3")).completion_text_dropped == DroppedText.NONE


def test_a_template_that_raises_on_a_tool_role_is_still_probed_for_calls(family, tokenizer_dir):
    """Seen by a reviewer: Gemma-style templates raise on a `tool` role, and the one probe of
    calls and schemas held one, so its failure was taken for "renders both"; a reply that is a
    call alone then cached as an empty turn. Each part is probed alone now."""
    from kto.precompute.templates import unrendered_tool_parts

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    tok.chat_template = (
        "{% for m in messages %}{% if m.role not in ('user', 'assistant') %}{{ raise_exception('roles must be user or assistant') }}{% endif %}"
        "<{{ m.role }}>{{ m.content }}</{{ m.role }}>{% endfor %}{% if add_generation_prompt %}<assistant>{% endif %}"
    )
    assert unrendered_tool_parts(tok, ChatTemplate()) == ("tool_calls", "tools")
    call = {"role": "assistant", "content": "", "tool_calls": [ADD_CALL]}
    ex = Example("data.jsonl:1", ({"role": "user", "content": "Add 5 and 5."},), (call,), True, "data.jsonl: row 1")
    with pytest.raises(InputError, match=r"does not render tool_calls, so a function call renders as an empty assistant turn"):
        tokenize_example(ex, tok)
