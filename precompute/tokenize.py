"""Example -> token ids (chat template or plain text); truncation once the KL partner is known.

Truncation rule (the manifest records it under `truncation`), applied per row to the pair of
sequences that share its prompt, the main one and the KL one, as TRL cuts:
- Nothing is cut while the longer of the two fits max_length.
- Otherwise the prompt is cut first, keeping its END (the question sits there) and re-attaching
  BOS when the tokenizer starts sequences with one, down to max_prompt_length at most: to
  max(max_prompt_length, max_length - longer completion) tokens.
- Then both completions are cut to max_length - prompt, keeping their START.
Both sequences keep one (identical) prompt, and a completion keeps at least
min(its length, max_length - max_prompt_length) tokens (max_prompt_length < max_length, so a
completion is never cut to nothing). A row whose prompt or completion is empty after
tokenization is dropped (and counted) before pairing.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from kto.formats.examples import Example

from .templates import ChatTemplate, render

TRUNCATION_RULE = (
    "pair-aware: nothing cut while prompt + longer of completion and KL completion fits max_length; "
    "else prompt keeps its end (BOS re-attached) down to max(max_prompt_length, max_length - longer completion); "
    "then completions keep their start, max_length - prompt"
)


@dataclass(frozen=True)
class TokenizedRow:
    example: Example
    prompt_ids: np.ndarray
    """int32: 4 bytes a token, where a tuple of Python ints costs ~36. Not truncated yet: that
    needs the KL partner (`Truncation`)."""
    completion_ids: np.ndarray
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


@dataclass(frozen=True)
class Truncated:
    """One row's sequences after truncation and what was cut."""

    prompt_ids: np.ndarray
    completion_ids: np.ndarray
    kl_completion_ids: np.ndarray
    prompt_cut: bool
    completion_cut: bool
    kl_completion_cut: bool

    @property
    def truncated(self) -> bool:
        """The main sequence (prompt + own completion) lost tokens."""
        return self.prompt_cut or self.completion_cut


@dataclass(frozen=True)
class Truncation:
    """TRUNCATION_RULE with its limits; `bos_id` is `leading_bos_id(tokenizer)`."""

    max_length: int
    max_prompt_length: int
    bos_id: int | None = None

    def kept_lengths(self, prompt_len, completion_len, kl_completion_len):
        """Tokens kept of each of the three parts: ints, or numpy arrays for many rows at once
        (the manifest's counts), by the same arithmetic `apply` cuts with."""
        longer = np.maximum(completion_len, kl_completion_len)
        squeezed = np.minimum(prompt_len, np.maximum(self.max_prompt_length, self.max_length - longer))
        prompt = np.where(prompt_len + longer > self.max_length, squeezed, prompt_len)
        room = self.max_length - prompt
        return prompt, np.minimum(completion_len, room), np.minimum(kl_completion_len, room)

    def apply(self, prompt_ids: np.ndarray, completion_ids: np.ndarray, kl_completion_ids: np.ndarray) -> Truncated:
        """Cut one row's prompt, completion and KL completion."""
        keep, n_completion, n_kl = (int(n) for n in self.kept_lengths(len(prompt_ids), len(completion_ids), len(kl_completion_ids)))
        prompt = np.asarray(prompt_ids, np.int32)
        if keep < len(prompt):
            if self.bos_id is not None and prompt[0] == self.bos_id:
                prompt = np.concatenate([prompt[:1], prompt[len(prompt) - (keep - 1) :]]) if keep > 1 else prompt[:1]
            else:
                prompt = prompt[len(prompt) - keep :]
        return Truncated(
            prompt,
            np.asarray(completion_ids[:n_completion], np.int32),
            np.asarray(kl_completion_ids[:n_kl], np.int32),
            prompt_cut=keep < len(prompt_ids),
            completion_cut=n_completion < len(completion_ids),
            kl_completion_cut=n_kl < len(kl_completion_ids),
        )


def leading_bos_id(tokenizer) -> int | None:
    """The BOS id if this tokenizer starts plain text with it (Llama-3 does, SmolLM2 does not)."""
    bos = tokenizer.bos_token_id
    ids = tokenizer("a").input_ids
    return bos if bos is not None and ids and ids[0] == bos else None


def tokenize_example(example: Example, tokenizer, template: ChatTemplate = ChatTemplate()) -> TokenizedRow | None:
    """Token ids for one example, or None when its prompt or completion is empty (the row is
    dropped). Nothing is cut here: truncation waits for the KL partner (`Truncation`)."""
    if example.conversational:
        prompt_ids, completion_ids, prefix_split = conversational_ids(example, tokenizer, template)
    else:
        (prompt_ids, completion_ids), prefix_split = text_ids(example, tokenizer), False
    if not prompt_ids or not completion_ids:
        return None
    return TokenizedRow(example, np.asarray(prompt_ids, np.int32), np.asarray(completion_ids, np.int32), prefix_split)
