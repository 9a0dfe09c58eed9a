"""Example -> token ids: chat template or plain text, then truncation.

Rules (the manifest records them under `truncation`):
- The prompt is capped at max_prompt_length tokens, keeping its END (the question sits there),
  with BOS re-attached when the tokenizer starts sequences with one.
- The completion is capped at max_length - len(prompt), keeping its START.
- A row whose completion is empty after tokenization/truncation is dropped (and counted).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from kto.formats.examples import Example

from .templates import ChatTemplate, render

TRUNCATION_RULE = "prompt: keep end, cap max_prompt_length, re-attach BOS; completion: keep start, cap max_length - prompt"


@dataclass(frozen=True)
class TokenizedRow:
    example: Example
    prompt_ids: np.ndarray
    """int32: 4 bytes a token, where a tuple of Python ints costs ~36 (the whole dataset is held)."""
    completion_ids: np.ndarray
    truncated: bool
    prefix_split: bool
    """The chat template rendered the prompt alone differently from the prompt inside the full
    conversation, so prompt and completion were split at their common prefix."""


def common_prefix_length(a, b) -> int:
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


def conversational_ids(example: Example, tokenizer, template: ChatTemplate = ChatTemplate()) -> tuple[list[int], list[int], bool]:
    """Prompt ids = prompt with the generation prompt; completion ids = the rest of the full
    conversation. Templates carry their own special tokens, so none are added on top."""
    prompt_text = render(tokenizer, example.prompt, example, template, add_generation_prompt=True)
    full_text = render(tokenizer, tuple(example.prompt) + tuple(example.completion), example, template, add_generation_prompt=False)
    prompt_ids = tokenizer(prompt_text, add_special_tokens=False).input_ids
    full_ids = tokenizer(full_text, add_special_tokens=False).input_ids
    if full_ids[: len(prompt_ids)] == prompt_ids:
        return prompt_ids, full_ids[len(prompt_ids) :], False
    # Some templates render the last prompt turn differently when a reply follows (e.g. they
    # strip reasoning or add separators). Split where the two renderings part, as TRL does.
    k = common_prefix_length(prompt_ids, full_ids)
    return full_ids[:k], full_ids[k:], True


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


def truncate(prompt_ids: list[int], completion_ids: list[int], *, max_length: int, max_prompt_length: int, bos_id: int | None):
    truncated = False
    if len(prompt_ids) > max_prompt_length:
        truncated = True
        if bos_id is not None and prompt_ids[0] == bos_id:
            prompt_ids = [bos_id] + prompt_ids[len(prompt_ids) - (max_prompt_length - 1) :]
        else:
            prompt_ids = prompt_ids[-max_prompt_length:]
    room = max_length - len(prompt_ids)
    if len(completion_ids) > room:
        truncated = True
        completion_ids = completion_ids[:room]
    return prompt_ids, completion_ids, truncated


def leading_bos_id(tokenizer) -> int | None:
    """The BOS id if this tokenizer starts plain text with it (Llama-3 does, SmolLM2 does not)."""
    bos = tokenizer.bos_token_id
    ids = tokenizer("a").input_ids
    return bos if bos is not None and ids and ids[0] == bos else None


def tokenize_example(
    example: Example,
    tokenizer,
    *,
    max_length: int,
    max_prompt_length: int,
    bos_id: int | None,
    template: ChatTemplate = ChatTemplate(),
) -> TokenizedRow | None:
    """Token ids for one example, or None when its completion is empty (the row is dropped).

    `bos_id` is `leading_bos_id(tokenizer)`: re-attached after cutting a prompt's start."""
    if example.conversational:
        prompt_ids, completion_ids, prefix_split = conversational_ids(example, tokenizer, template)
    else:
        (prompt_ids, completion_ids), prefix_split = text_ids(example, tokenizer), False
    if not prompt_ids or not completion_ids:
        return None
    prompt_ids, completion_ids, truncated = truncate(
        prompt_ids,
        completion_ids,
        max_length=max_length,
        max_prompt_length=max_prompt_length,
        bos_id=bos_id,
    )
    if not completion_ids:
        return None
    return TokenizedRow(example, np.asarray(prompt_ids, np.int32), np.asarray(completion_ids, np.int32), truncated, prefix_split)
