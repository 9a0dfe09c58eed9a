"""Example -> token ids (chat template or plain text), the prompt cut at tokenization; the
completions cut once the KL partner is known.

The prompt is cut here, at tokenization, by the rule of plan.py (`Truncation`,
TRUNCATION_RULE): cutting a conversation by whole turns needs its messages and the chat
template. The completion is staged whole and cut in plan.py, behind each prompt it is paired
with. A row whose prompt or completion is empty after tokenization is dropped (and counted)
before pairing.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from kto.formats.errors import InputError
from kto.precompute.inputs.examples import Example, one_line

from .plan import PromptCut, Truncation
from .templates import ChatTemplate


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


def prompt_must_be_cut(truncation: Truncation, prompt_len: int, completion_len: int) -> bool:
    """The row's own sequence does not fit and its prompt is over its budget."""
    return prompt_len + completion_len > truncation.max_length and prompt_len > truncation.max_prompt_length


def keep_end(truncation: Truncation, prompt_ids) -> np.ndarray:
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
    prompt_ids = tokenizer(prompt_text, add_special_tokens=False).input_ids
    full_ids = tokenizer(full_text, add_special_tokens=False).input_ids
    if full_ids[: len(prompt_ids)] == prompt_ids:
        return prompt_ids, full_ids[len(prompt_ids) :], False
    # Some templates render the last prompt turn differently when a reply follows (e.g. they
    # strip reasoning or add separators). Split where the two renderings part, as TRL does.
    k = common_prefix_length(prompt_ids, full_ids)
    return full_ids[:k], full_ids[k:], True


def conversational_ids(
    example: Example, tokenizer, template: ChatTemplate = ChatTemplate(), truncation: Truncation | None = None
) -> tuple[list[int], list[int], bool, PromptCut]:
    """Prompt ids, completion ids, whether they were split at a common prefix, and how the prompt
    was cut (by `truncation`'s rule; nothing is cut without one). A cut prompt is rendered from
    the kept messages together with the completion and split the same way, so it is still a
    prefix of that conversation's rendering."""
    prompt_ids, completion_ids, split = _split_rendering(example, example.prompt, tokenizer, template)
    if truncation is None or not prompt_must_be_cut(truncation, len(prompt_ids), len(completion_ids)):
        return prompt_ids, completion_ids, split, PromptCut.NONE
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
        return *rendered[lo], PromptCut.TURNS
    last = starts[-1] if starts else max(len(rest) - 1, 0)
    kept = head + rest[last:]
    prompt_ids, completion_ids, split = _split_rendering(example, kept, tokenizer, template)
    cut = _cut_inside(example, kept, len(head), prompt_ids, tokenizer, template, budget)
    return (cut if cut is not None else keep_end(truncation, prompt_ids).tolist()), completion_ids, split, PromptCut.MID_TEXT


def render(tokenizer, messages, example, template: ChatTemplate, *, add_generation_prompt: bool) -> str:
    """One conversation as text; no template, or one that fails on this row, names the row."""
    where = f"{example.source} (id {example.id!r})"
    if not getattr(tokenizer, "chat_template", None):
        raise InputError(
            f"{where}: conversational row, but the tokenizer has no chat template; give text prompts "
            "and completions, use a model whose tokenizer has one, or pass --chat-template"
        )
    try:
        return tokenizer.apply_chat_template(
            [dict(m) for m in messages],
            tools=list(example.tools) or None,
            tokenize=False,
            add_generation_prompt=add_generation_prompt,
            **template.kwargs,
        )
    except Exception as e:  # jinja2 and transformers raise many types
        raise InputError(f"{where}: {template.name} failed to render this row ({type(e).__name__}: {one_line(e)})") from None


def _system_head(messages) -> tuple[tuple, tuple]:
    """(the leading system message, if any), the other messages."""
    messages = tuple(messages)
    k = 1 if messages and messages[0].get("role") == "system" else 0
    return messages[:k], messages[k:]


_SENTINEL = "\x00kto-cut-here\x00"


def _cut_inside(example: Example, kept: tuple, target: int, prompt_ids: list[int], tokenizer, template: ChatTemplate, budget: int) -> list[int] | None:
    """`prompt_ids` (the rendering of `kept`) with message `target`'s text cut to its end, its
    turn header before it and everything after it (the generation prompt) kept whole: `budget`
    ids in all. None when the text's tokens cannot be located (the template changes the text,
    no fast tokenizer) or the rest alone exceeds the budget: the caller keeps the ids' end."""
    content = kept[target].get("content") if target < len(kept) else None
    if not isinstance(content, str) or not content:
        return None
    marked = [dict(m) for m in kept]
    marked[target]["content"] = _SENTINEL
    text = render(tokenizer, kept, example, template, add_generation_prompt=True)
    parts = render(tokenizer, marked, example, template, add_generation_prompt=True).split(_SENTINEL)
    if len(parts) != 2 or parts[0] + content + parts[1] != text:
        return None
    a, b = len(parts[0]), len(parts[0]) + len(content)  # the text's character span
    try:
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    except (NotImplementedError, ValueError, TypeError):  # a slow tokenizer has no offsets
        return None
    ids, offsets = list(enc.input_ids[: len(prompt_ids)]), enc.offset_mapping[: len(prompt_ids)]
    if ids != list(prompt_ids):
        return None
    # Tokens that straddle a boundary count as the text's: what is kept of the header and the
    # generation prompt is then exactly their own tokens.
    first = next((i for i, (_, end) in enumerate(offsets) if end > a), len(ids))
    after = next((i for i in range(first, len(ids)) if offsets[i][0] >= b and offsets[i][1] > offsets[i][0]), len(ids))
    room = budget - first - (len(ids) - after)
    if room <= 0 or room >= after - first:
        return None
    return ids[:first] + ids[after - room : after] + ids[after:]


def text_ids(example: Example, tokenizer) -> tuple[list[int], list[int]]:
    """Tokenize prompt+completion together (so merges across the boundary are the model's own)
    and split at the prompt's last character: a token that straddles the boundary belongs to
    the completion. Special tokens (BOS) are added exactly as the tokenizer normally does."""
    prompt, completion = example.prompt, example.completion
    enc = tokenizer(prompt + completion, return_offsets_mapping=True)
    ids, offsets = enc.input_ids, enc.offset_mapping
    boundary = len(prompt)
    split = 0
    while split < len(ids) and offsets[split][1] <= boundary and not _is_trailing_special(ids, split, tokenizer, offsets):
        split += 1
    prompt_ids, completion_ids = list(ids[:split]), list(ids[split:])
    eos = tokenizer.eos_token_id
    if eos is not None and (not completion_ids or completion_ids[-1] != eos):
        completion_ids.append(eos)
    return prompt_ids, completion_ids


def _is_trailing_special(ids, i, tokenizer, offsets) -> bool:
    # A special token with an empty (0, 0) span after real text is an appended EOS, not prompt.
    return i > 0 and offsets[i] == (0, 0) and ids[i] in tokenizer.all_special_ids


def leading_bos_id(tokenizer) -> int | None:
    """The BOS id if this tokenizer starts plain text with it (Llama-3 does, SmolLM2 does not)."""
    bos = tokenizer.bos_token_id
    ids = tokenizer("a").input_ids
    return bos if bos is not None and ids and ids[0] == bos else None


def tokenize_example(example: Example, tokenizer, template: ChatTemplate = ChatTemplate(), truncation: Truncation | None = None) -> TokenizedRow | None:
    """Token ids for one example, its prompt cut by `truncation`'s rule (uncut without one), or
    None when its prompt or completion is empty (the row is dropped). The completion stays whole:
    it is cut behind each prompt it is paired with (plan.py `shard_values`)."""
    cut = PromptCut.NONE
    if example.conversational:
        prompt_ids, completion_ids, prefix_split, cut = conversational_ids(example, tokenizer, template, truncation)
    else:
        (prompt_ids, completion_ids), prefix_split = text_ids(example, tokenizer), False
        if truncation is not None and prompt_must_be_cut(truncation, len(prompt_ids), len(completion_ids)):
            prompt_ids, cut = keep_end(truncation, prompt_ids), PromptCut.MID_TEXT
    if not len(prompt_ids) or not len(completion_ids):
        return None
    return TokenizedRow(example, np.asarray(prompt_ids, np.int32), np.asarray(completion_ids, np.int32), prefix_split, cut)
