"""Example -> token ids (chat template or plain text), the prompt cut at tokenization; the
completions cut once the KL partner is known. Every tokenized row is spilled to the staging file
(staging.py: written there, its per-row index read back by plan.py).

The prompt is cut here, at tokenization, by the rule of plan.py (`Truncation`,
TRUNCATION_RULE): cutting a conversation by whole turns needs its messages and the chat
template. The completion is staged whole and cut in plan.py, behind each prompt it is paired
with. A row whose prompt or completion is empty after tokenization is dropped (and counted)
before pairing.
"""

from __future__ import annotations

import contextlib
import functools
import json
import re
import weakref
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path
from typing import NamedTuple, Protocol

import numpy as np

from kto.formats.errors import InputError
from kto.precompute.inputs.examples import Example, ParsedArguments, one_line

from .prompt_cut import cut_in_texts, headers_alone, template_system
from .templates import ChatTemplate, unrendered_tool_parts


class PromptCut(IntEnum):
    """How a row's prompt was cut (staged per row; the manifest counts each kind)."""

    NONE = 0
    TURNS = 1
    """Whole earliest turns dropped, the rest re-rendered: it starts with a turn header."""
    MID_TEXT = 2
    """Cut inside text: a plain-text prompt's start, or the start of the last user turn's text."""


class DroppedText(IntEnum):
    """What of a completion message's text the chat template left out (said in a note, not staged)."""

    NONE = 0
    REASONING = 1
    """The reasoning up to `</think>` (DeepSeek-R1-Distill's template drops it)."""
    BESIDE_TOOL_CALLS = 2
    """The text of an assistant turn that also calls tools (Llama 3.x's renders the call alone)."""
    OTHER = 3

    @property
    def words(self) -> str:
        """How the note on dropped text names this kind (DROPPED_TEXT_WORDS)."""
        return DROPPED_TEXT_WORDS[self]


# How the note on dropped text names each kind (staging.py stage(): one line for every kind of the run).
DROPPED_TEXT_WORDS = {
    DroppedText.REASONING: "the reasoning before </think>",
    DroppedText.BESIDE_TOOL_CALLS: "an assistant's text beside its tool calls",
    DroppedText.OTHER: "an assistant's text",
}


class PromptLimits(Protocol):
    """What cutting a prompt reads of plan.py's `Truncation` (the rule's limits and the BOS id);
    named here so that tokenize.py does not import plan.py, which reads the staged rows."""

    max_length: int
    max_prompt_length: int
    bos_id: int | None


@dataclass(frozen=True)
class TokenizedRow:
    example: Example
    prompt_ids: np.ndarray
    """int32: 4 bytes a token, where a tuple of Python ints costs ~36. Already cut when the row's
    own sequence does not fit (`prompt_cut` says how)."""
    completion_ids: np.ndarray
    """The whole completion: it is cut behind each prompt it is paired with (plan.py `shard_values`)."""
    prefix_split: bool
    """The chat template rendered the prompt alone differently from the prompt inside the full
    conversation, so prompt and completion were split at their common prefix."""
    prompt_cut: PromptCut = PromptCut.NONE
    completion_text_dropped: DroppedText = DroppedText.NONE
    """What of a completion message's text the chat template left out of the rendering
    (DeepSeek-R1-Distill's drops the reasoning up to `</think>`): said in a note, not staged."""
    control_text: str = ""
    """The first special token's string found in the prompt's or completion's text ("" for
    none): tokenized as that token (`control_text_in`), said in a note, not staged."""
    prompt_from_end: bool = False
    """A conversation's prompt kept its ids' end, the last resort (no cut inside a text with its
    headers kept fitted): it starts inside a text, with no turn header. Counted as MID_TEXT (the
    manifest's counts stay as they were), said in a note, not staged."""
    headers_alone: int = 0
    """Of a prompt kept by its ids' end: the ids of its rendering with every text left out
    (prompt_cut.py `headers_alone`) where those alone fill max_prompt_length, so no cut inside a
    text could fit and only a larger budget helps (said in the note); else 0. Not staged."""


def prompt_must_be_cut(truncation: PromptLimits, prompt_len: int, completion_len: int) -> bool:
    """The row's own sequence does not fit and its prompt is over its budget."""
    return prompt_len + completion_len > truncation.max_length and prompt_len > truncation.max_prompt_length


def keep_end(truncation: PromptLimits, prompt_ids) -> np.ndarray:
    """The prompt's last max_prompt_length ids, its BOS (when it starts with one) re-attached."""
    prompt, keep = np.asarray(prompt_ids, np.int32), truncation.max_prompt_length
    if len(prompt) <= keep:
        return prompt
    if truncation.bos_id is not None and prompt[0] == truncation.bos_id:
        return np.concatenate([prompt[:1], prompt[len(prompt) - (keep - 1) :]]) if keep > 1 else prompt[:1]
    return prompt[len(prompt) - keep :]


def common_prefix_length(a, b) -> int:
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


def _split_rendering(example: Example, prompt: tuple, tokenizer, template: ChatTemplate) -> tuple[list[int], list[int], bool]:
    """Prompt ids = `prompt` with the generation prompt; completion ids = the rest of the full
    conversation. Templates carry their own special tokens, so none are added on top."""
    prompt_text = render(tokenizer, prompt, example, template, add_generation_prompt=True)
    full_text = render(tokenizer, tuple(prompt) + tuple(example.completion), example, template, add_generation_prompt=False)
    _check_system_kept(example, prompt, prompt_text)
    prompt_ids = tokenizer(prompt_text, add_special_tokens=False).input_ids
    full_ids = tokenizer(full_text, add_special_tokens=False).input_ids
    if full_ids[: len(prompt_ids)] == prompt_ids:
        return prompt_ids, full_ids[len(prompt_ids) :], False
    # Some templates render the last prompt turn differently when a reply follows (e.g. they
    # strip reasoning or add separators). Split where the two renderings part, as TRL does.
    k = common_prefix_length(prompt_ids, full_ids)
    _check_prompt_renders_first(example, prompt, tokenizer, template, prompt_text, full_text)
    _check_prompt_turn_kept(example, prompt, tokenizer, full_ids, k)
    return full_ids[:k], full_ids[k:], True


def _check_system_kept(example: Example, prompt: tuple, prompt_text: str) -> None:
    """Refuse a row whose system message the template leaves out of the prompt: Mistral v0.3's
    and Nemo's put it into the user turn that is the last message, so a prompt that ends with a
    tool result renders none, and the row (its label may rest on that instruction) trained
    without it. Compared without whitespace, so a template's `| trim` is no loss."""
    first = prompt[0] if prompt else None
    text = first.get("content") if first is not None and first.get("role") == "system" else None
    if isinstance(text, str) and text.strip() and _unspaced(text) not in _unspaced(prompt_text):
        raise InputError(
            f"{example.source} (id {example.id!r}): the chat template leaves the system message out of the prompt "
            f"({one_line(text)[:60]!r}…), so the row would train without it; put the system text in the first user turn, "
            "or pass a --chat-template that renders it"
        )


def _unspaced(text: str) -> str:
    """`text` without any whitespace: how a text is found in a rendering that a template's
    `| trim`, its newlines or a decoder's clean-up of spaces may have changed around it."""
    return "".join(text.split())


def _check_prompt_renders_first(example: Example, prompt: tuple, tokenizer, template: ChatTemplate, prompt_text: str, full_text: str) -> None:
    """Accept a split at the common prefix only where the renderings differ in the generation
    prompt alone: the prompt's turns rendered without it must start the full rendering (a
    reasoning template's `<think>` opener, or a `\n` the tokenizer merges with the completion,
    then only moves where the ids part). Mistral v0.3's and Nemo's templates put the system text
    into the user turn that is `loop.last`: once the completion follows, that turn is not last,
    the system text is gone, and the split fell inside the user's text, which was then trained
    as the reply, too early in the text for `_check_prompt_turn_kept` to see."""
    where = f"{example.source} (id {example.id!r})"
    try:
        bare = render(tokenizer, prompt, example, template, add_generation_prompt=False)
    except InputError:  # a template that renders a prompt only with its generation prompt: the turn check still runs
        return
    # Only what the two prompt renderings share: Phi-3's template ends a prompt rendered without
    # the generation prompt with the EOS token, which the full rendering has only at its end.
    shared = bare[: common_prefix_length(bare, prompt_text)]
    if not full_text.startswith(shared):
        raise InputError(
            f"{where}: the chat template does not render the prompt as the start of the conversation: it renders the prompt's turns "
            "differently once the completion follows (it moves or drops the system message, say), so part of the prompt would be "
            "trained as the completion; put the system text in the first user turn, or pass a --chat-template that renders them the same way"
        )


def _check_prompt_turn_kept(example: Example, prompt: tuple, tokenizer, full_ids: list[int], k: int) -> None:
    """Refuse a split that moves the last prompt turn's text into the completion: a template that
    renders messages in another order (or rewrites the prompt) would train the user's words as
    the reply. Text a template reworded is not found on either side and passes."""
    content = prompt[-1].get("content") if prompt else None
    text = content.strip() if isinstance(content, str) else ""
    if not text:
        return
    before, after = tokenizer.decode(full_ids[:k]), tokenizer.decode(full_ids[k:])
    if text in after and text not in before:
        raise InputError(
            f"{example.source} (id {example.id!r}): the chat template does not render the prompt as the start of the conversation, "
            "so the last prompt turn would be trained as part of the completion; check the template (--chat-template)"
        )


class ConversationIds(NamedTuple):
    prompt_ids: list[int]
    completion_ids: list[int]
    prefix_split: bool
    cut: PromptCut
    from_end: bool = False
    """The prompt kept its ids' end, the last resort (`TokenizedRow.prompt_from_end`)."""
    headers_alone: int = 0
    """Of a prompt kept by its ids' end: `TokenizedRow.headers_alone`."""


def conversational_ids(example: Example, tokenizer, template: ChatTemplate = ChatTemplate(), truncation: PromptLimits | None = None) -> ConversationIds:
    """Prompt ids, completion ids, whether they were split at a common prefix, how the prompt was
    cut (by `truncation`'s rule; nothing is cut without one) and whether it kept its ids' end,
    the last resort. A cut prompt is rendered from the kept messages together with the
    completion and split the same way, so it is still a prefix of that conversation's rendering."""
    prompt_ids, completion_ids, split = _split_rendering(example, example.prompt, tokenizer, template)
    if truncation is None or not prompt_must_be_cut(truncation, len(prompt_ids), len(completion_ids)):
        return ConversationIds(prompt_ids, completion_ids, split, PromptCut.NONE)
    budget = truncation.max_prompt_length
    head, rest = _system_head(example.prompt)
    starts = [i for i, m in enumerate(rest) if m.get("role") == "user"]
    # Drop whole earliest turns: keep the most turns that fit. A prompt only shortens as turns
    # go, so the first start that fits is found by bisection (O(log turns) renderings, not one
    # per turn: conversations of hundreds of turns exist).
    candidates, rendered = [s for s in starts if s > 0], {}

    def fits(k: int) -> bool:
        rendered[k] = _split_rendering(example, head + rest[candidates[k] :], tokenizer, template)
        return len(rendered[k][0]) <= budget

    lo, hi = 0, len(candidates)
    while lo < hi:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if fits(mid) else (mid + 1, hi)
    if lo < len(candidates):  # hi only moves down to a candidate that fitted: it is rendered
        return ConversationIds(*rendered[lo], PromptCut.TURNS)
    last = starts[-1] if starts else max(len(rest) - 1, 0)
    kept = head + rest[last:]
    prompt_ids, completion_ids, split = _split_rendering(example, kept, tokenizer, template)
    draw = lambda messages: render(tokenizer, messages, example, template, add_generation_prompt=True)
    if not head:  # the system message a template adds itself (SmolLM2's, Qwen2.5's) is cut as one given
        head = template_system(kept, draw)
        kept = head + kept
    # Then inside one text, or two (prompt_cut.py says which, in what order). Keeping the ids'
    # end, the last resort, starts the prompt inside a text, with no header: the row is flagged,
    # and a note names it (staging.py), with the headers' length where they alone leave no room.
    cut = cut_in_texts(kept, len(head), prompt_ids, tokenizer, draw, budget)
    if cut is not None:
        return ConversationIds(cut, completion_ids, split, PromptCut.MID_TEXT)
    floor = headers_alone(kept, tokenizer, draw)
    return ConversationIds(keep_end(truncation, prompt_ids).tolist(), completion_ids, split, PromptCut.MID_TEXT, True, floor if floor >= budget else 0)


def render(tokenizer, messages, example, template: ChatTemplate, *, add_generation_prompt: bool) -> str:
    """One conversation as text; no template, or one that fails on this row, names the row."""
    where = f"{example.source} (id {example.id!r})"
    if not getattr(tokenizer, "chat_template", None):
        raise InputError(
            f"{where}: conversational row, but the tokenizer has no chat template; give text prompts "
            "and completions, use a model whose tokenizer has one, or pass --chat-template FILE.jinja (chat_template: FILE.jinja "
            "in a --config file; LLaMA-Factory's template: NAME is not read)"
        )
    _check_tools_render(example, tokenizer, template, where)
    render_as = lambda rows: tokenizer.apply_chat_template(
        rows, tools=list(example.tools) or None, tokenize=False, add_generation_prompt=add_generation_prompt, **template.kwargs
    )
    try:
        try:
            return render_as([dict(m) for m in messages])
        except TypeError as first:
            # A template that joins a call's arguments as text (DeepSeek-R1's) gets the JSON text
            # the arguments object was parsed from (examples.ParsedArguments); a row without any,
            # or one that fails again, is said by its first error: the second may blame the text.
            texts = [_arguments_as_text(m) for m in messages]
            if texts == [dict(m) for m in messages]:
                raise
            try:
                return render_as(texts)
            except Exception:
                raise first from None
    except Exception as e:  # jinja2 and transformers raise many types
        raise InputError(f"{where}: {template.name} failed to render this row ({type(e).__name__}: {one_line(e)})") from None


def _arguments_as_text(message) -> dict:
    """`message` with each tool call's parsed arguments (ParsedArguments) back as their text."""
    calls = message.get("tool_calls")
    if not isinstance(calls, list):
        return dict(message)
    as_text = lambda call: (
        {**call, "function": {**call["function"], "arguments": call["function"]["arguments"].text}}
        if isinstance(call, dict) and isinstance(call.get("function"), dict) and isinstance(call["function"].get("arguments"), ParsedArguments)
        else call
    )
    return {**message, "tool_calls": [as_text(c) for c in calls]}


def _check_tools_render(example: Example, tokenizer, template: ChatTemplate, where: str) -> None:
    """Refuse a row whose tool calls or tool schemas the template would leave out of the text."""
    used = {"tool_calls": any(m.get("tool_calls") for m in (*example.prompt, *example.completion)), "tools": bool(example.tools)}
    dropped = [part for part in unrendered_tool_parts(tokenizer, template) if used[part]] if any(used.values()) else []
    if dropped:
        parts = " and ".join(dropped)
        effect = "a function call renders as an empty assistant turn" if "tool_calls" in dropped else "its prompt loses the tool schemas"
        raise InputError(f"{where}: {template.name} does not render {parts}, so {effect}; pass a --chat-template that renders {parts}")


def _system_head(messages) -> tuple[tuple, tuple]:
    """(the leading system message, if any), the other messages."""
    messages = tuple(messages)
    k = 1 if messages and messages[0].get("role") == "system" else 0
    return messages[:k], messages[k:]


def text_ids(example: Example, tokenizer) -> tuple[list[int], list[int]]:
    """Tokenize prompt+completion together (so merges across the boundary are the model's own)
    and split at the prompt's last character: a token that straddles the boundary belongs to
    the completion. Special tokens (BOS) are added exactly as the tokenizer normally does."""
    prompt, completion = example.prompt, example.completion
    enc = tokenizer(prompt + completion, return_offsets_mapping=True)
    ids, offsets = _without_doubled_specials(list(enc.input_ids), list(enc.offset_mapping), tokenizer)
    boundary = len(prompt)
    split = 0
    while split < len(ids) and offsets[split][1] <= boundary and not _is_trailing_special(ids, split, tokenizer, offsets):
        split += 1
    prompt_ids, completion_ids = list(ids[:split]), list(ids[split:])
    eos = tokenizer.eos_token_id
    if eos is not None and (not completion_ids or completion_ids[-1] != eos):
        completion_ids.append(eos)
    return prompt_ids, completion_ids


def _without_doubled_specials(ids: list[int], offsets: list, tokenizer) -> tuple[list[int], list]:
    """Drop the BOS (EOS) the tokenizer adds where the text already starts (ends) with it.

    Text a chat template rendered beforehand (`apply_chat_template(..., tokenize=False)`, as
    TRL's users prepare rows) carries its own BOS; a tokenizer that adds one too (Llama-3's,
    Mistral's) made it [BOS, BOS, ...], a context never served at inference, which moved the
    completion's log-prob by about 0.85 nats a row on SmolLM2 (TRL tokenizes without special
    tokens and adds a BOS only where one is missing). An added token's span is (0, 0); the
    text's own spans its characters."""
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    if len(ids) > 1 and bos is not None and ids[0] == ids[1] == bos and tuple(offsets[0]) == (0, 0) != tuple(offsets[1]):
        ids, offsets = ids[1:], offsets[1:]
    if len(ids) > 1 and eos is not None and ids[-1] == ids[-2] == eos and tuple(offsets[-1]) == (0, 0) != tuple(offsets[-2]):
        ids, offsets = ids[:-1], offsets[:-1]
    return ids, offsets


def _is_trailing_special(ids, i, tokenizer, offsets) -> bool:
    # A special token with an empty (0, 0) span after real text is an appended EOS, not prompt.
    return i > 0 and offsets[i] == (0, 0) and ids[i] in tokenizer.all_special_ids


def stop_ids(tokenizer, model_dir: Path | None) -> set[int]:
    """The ids generation stops at: the tokenizer's EOS and the model's generation_config.json
    `eos_token_id` (one id or a list: Llama-3 instruct stops at <|eot_id|> as well). None for a
    GGUF file, whose folder's generation_config.json need not be its own."""
    ids = {tokenizer.eos_token_id} - {None}
    if model_dir is None:
        return ids
    path = Path(model_dir) / "generation_config.json"
    try:
        configured = json.loads(path.read_text(encoding="utf-8")).get("eos_token_id") if path.is_file() else None
    except (OSError, ValueError, AttributeError):
        configured = None
    for i in configured if isinstance(configured, list) else [configured]:
        if isinstance(i, int):
            ids.add(i)
    return ids


def leading_bos_id(tokenizer) -> int | None:
    """The BOS id if this tokenizer starts plain text with it (Llama-3 does, SmolLM2 does not)."""
    bos = tokenizer.bos_token_id
    ids = tokenizer("a").input_ids
    return bos if bos is not None and ids and ids[0] == bos else None


def tokenize_example(example: Example, tokenizer, template: ChatTemplate = ChatTemplate(), truncation: PromptLimits | None = None) -> TokenizedRow | None:
    """Token ids for one example, its prompt cut by `truncation`'s rule (uncut without one), or
    None when its prompt or completion is empty (the row is dropped). The completion stays whole:
    it is cut behind each prompt it is paired with (plan.py `shard_values`)."""
    cut, from_end, floor = PromptCut.NONE, False, 0
    if example.conversational:
        prompt_ids, completion_ids, prefix_split, cut, from_end, floor = conversational_ids(example, tokenizer, template, truncation)
    else:
        (prompt_ids, completion_ids), prefix_split = text_ids(example, tokenizer), False
        if truncation is not None and prompt_must_be_cut(truncation, len(prompt_ids), len(completion_ids)):
            prompt_ids, cut = keep_end(truncation, prompt_ids), PromptCut.MID_TEXT
    if not len(prompt_ids) or not len(completion_ids):
        return None
    dropped = completion_text_dropped(example, tokenizer, completion_ids) if example.conversational else DroppedText.NONE
    control = control_text_in(example, control_strings(tokenizer))
    prompt, completion = np.asarray(prompt_ids, np.int32), np.asarray(completion_ids, np.int32)
    return TokenizedRow(example, prompt, completion, prefix_split, cut, dropped, control, from_end, floor)


# Per tokenizer (a reviewer measured 136 µs a row rebuilding the list for Llama 3's ~256 special
# tokens); weak, so that a tokenizer is not kept alive by this module.
_CONTROL_STRINGS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def control_strings(tokenizer) -> tuple[str, ...]:
    """The strings a tokenizer reads as one special token wherever they stand in a text: its
    special tokens and its added tokens marked special (split_special_tokens is off, as TRL and
    LLaMA-Factory leave it). Added tokens that are not special (Qwen's `<think>`) are left out:
    reasoning data writes them on purpose."""
    with contextlib.suppress(TypeError):  # an object that takes no weak reference is asked each time
        if tokenizer in _CONTROL_STRINGS:
            return _CONTROL_STRINGS[tokenizer]
    added = getattr(tokenizer, "added_tokens_decoder", None) or {}
    found = [*getattr(tokenizer, "all_special_tokens", ()), *(t.content for t in added.values() if getattr(t, "special", False))]
    strings = tuple(dict.fromkeys(s for s in found if isinstance(s, str) and s.strip()))
    with contextlib.suppress(TypeError):
        _CONTROL_STRINGS[tokenizer] = strings
    return strings


@functools.lru_cache(maxsize=8)
def _any_of(strings: tuple[str, ...]) -> re.Pattern:
    return re.compile("|".join(map(re.escape, strings)))


def control_text_in(example: Example, strings: Sequence[str]) -> str:
    """The first of `strings` found in the example's prompt or completion text (every string of
    its messages: contents, reasoning, tool-call arguments), else "". One regex search a text
    for the usual row that holds none, the ordered scan only for one that does: the note on such
    rows must cost next to nothing, whatever the number of special tokens."""
    texts = [t for part in (example.prompt, example.completion) for t in _strings_of(part)]
    strings = tuple(strings)
    if not strings or not any(_any_of(strings).search(t) for t in texts):
        return ""
    return next((s for s in strings if any(s in t for t in texts)), "")


def _strings_of(value) -> Iterator[str]:
    """Every string value inside `value` (a text, or messages: dict values and list items)."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _strings_of(v)
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _strings_of(v)


def completion_text_dropped(example: Example, tokenizer, completion_ids) -> DroppedText:
    """What of an assistant message's text of the completion is not in its decoded ids: the
    template left part of it out (DeepSeek-R1-Distill's drops the reasoning up to `</think>`,
    as TRL's split does too), so the labelled words are not what trains. Compared without
    whitespace, so that a template's `| trim` (Mistral's, Llama-3's), Qwen3's newlines around a
    think block and a decoder's clean-up of spaces are not taken for a drop. Tool results are
    not looked at (templates quote them as JSON); a message of tool calls alone has no text.
    The first such message says what was dropped: the note's words follow it."""
    decoded = _unspaced(tokenizer.decode(list(completion_ids)))
    for message in example.completion:
        reasoning = message.get("reasoning_content")  # OpenAI-style reasoning beside the answer: most templates leave it out
        if message.get("role") == "assistant" and isinstance(reasoning, str) and _unspaced(reasoning) not in decoded:
            return DroppedText.REASONING
        content = message.get("content")
        text = _unspaced(content) if message.get("role") == "assistant" and isinstance(content, str) else ""
        if text and text not in decoded:
            # Reasoning, where what follows the last </think> was kept; else the words beside a
            # call, which Llama 3.x's template renders without them: the note said "reasoning"
            # of those too, and told the user to keep a reasoning the row never had.
            answer = _unspaced(text.rsplit("</think>", 1)[-1])
            if "</think>" in text and answer in decoded:
                return DroppedText.REASONING
            return DroppedText.BESIDE_TOOL_CALLS if message.get("tool_calls") else DroppedText.OTHER
    return DroppedText.NONE
