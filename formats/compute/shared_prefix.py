"""Shared-prefix layout: each distinct prompt goes through the model once, with all its completions.

One packed sequence holds a prompt p (P tokens) followed by its completions c_1 … c_k back to
back, then right padding:

    tokens:    p_0 … p_{P-1} | c_1,0 … c_1,n1-1 | c_2,0 … | … | pad …
    positions: 0 … P-1       | P … P+n1-1       | P …     | … | (continue)
    sees:      causal        | p and itself     | p and itself, never c_1

Each completion keeps the positions it has in its own sequence p + c_i, and the 4D attention
mask lets it see exactly the keys it sees there, so its hidden states are those of the plain
forward up to float rounding (summation order). The first token of every completion is predicted
from the last prompt token (position P-1); token j > 0 from token j-1 of the same completion.
Pads see their causal past, so no query row is fully masked (SDPA returns NaN for such rows);
nothing reads them and no real token sees them.

The mask is additive (0 or the dtype's minimum), not boolean: the `eager` attention of
transformers adds the mask to the scores, so a boolean mask would add 1 or 0 there (checked:
hidden states off by 0.3), while SDPA takes either. Both honour `position_ids` for the rotary
embedding; with a 4D mask transformers uses the mask as given (masking_utils returns it as is).

Which sequences share: the grouping is by identical prompt ids among the sequences given (a
row's main and KL sequence always; rows of a paired dataset or with a repeated system prompt
when they are in the same call). `plan_groups` decides, per group, whether packing pays off.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

# A packed sequence holds at most this many tokens (or one plain sequence, if longer): the 4D
# mask is B × W × W, so one long pack would cost W² memory and attention that the plain layout
# does not pay (SDPA cannot skip the masked upper triangle as its causal kernels do).
MAX_PACKED_TOKENS = 2048

# Cost of attention per (query, key) pair relative to the dense matmuls per token, for the rule
# that decides whether a pack pays off. By FLOPs, attention costs 4 · d_attn per pair and layer
# (QKᵀ and AV), the dense layers 2 · N_non_embedding per token: for SmolLM2-135M 4 · 576 · 30 /
# (2 · 106.2M) = 3.3e-4 (Llama-3.2-1B: 6.7e-5). With 3.3e-4 the synthetic 32–2048 mix still ran
# 6 % slower shared than plain on CPU (docs/benchmarks.md): masked attention costs more per
# FLOP than the dense matmuls. 4× that, 1.3e-3, leaves those packs plain and keeps every pack of
# the chat and paired mixes. Fixed, not read from the model, so that the plan (and the token
# counts in the manifest) are a pure function of the data and the layout.
ATTENTION_COST = 1.3e-3


def group_by_prompt(prompts: Sequence[Sequence[int]]) -> list[list[int]]:
    """Indices grouped by identical prompt ids, groups in order of first appearance."""
    groups: dict[bytes, list[int]] = {}
    for i, p in enumerate(prompts):
        groups.setdefault(np.asarray(p, dtype=np.int64).tobytes(), []).append(i)
    return list(groups.values())


@dataclass(frozen=True)
class Pack:
    """One packed sequence: a prompt and the sequences (indices) whose completions follow it."""

    members: tuple[int, ...]
    prompt_length: int
    length: int  # prompt + all completions: the tokens this pack computes


def plan_packs(
    prompts: Sequence[Sequence[int]], completions: Sequence[Sequence[int]], keys: Sequence[Hashable], *, max_tokens: int = MAX_PACKED_TOKENS
) -> tuple[list[Pack], list[int]]:
    """Split the sequences into packs (≥ 2 completions sharing a prompt) and plain leftovers.

    A group's completions fill packs in key order, each pack at most `max_tokens` long (a pack
    may hold one sequence longer than that on its own). A pack is kept only if it pays off
    (`worth_packing`); otherwise, and for a pack of one, its sequences are scored plain.
    Deterministic: a pure function of the inputs, so a rerun forms the same packs and bytes.
    """
    packs: list[Pack] = []
    plain: list[int] = []
    for group in group_by_prompt(prompts):
        group = sorted(group, key=lambda i: keys[i])
        prompt_length = len(prompts[group[0]])
        current: list[int] = []
        length = prompt_length
        for i in group:
            n = len(completions[i])
            if current and length + n > max_tokens:
                _close(current, prompt_length, completions, packs, plain)
                current, length = [], prompt_length
            current.append(i)
            length += n
        _close(current, prompt_length, completions, packs, plain)
    return packs, plain


def worth_packing(prompt_length: int, completion_lengths: Sequence[int], attention_cost: float = ATTENTION_COST) -> bool:
    """Does one pack cost less than its sequences scored plain?

    Packing saves the dense work of (k − 1) prompts, and pays attention over its whole W × W
    square: with an explicit mask, SDPA cannot skip the upper triangle as its causal kernels do
    for a plain sequence (measured on CPU: 1.8× the causal time at 2048 tokens). In dense-token
    units, with ρ = attention_cost:

        saved = (k − 1) · P        extra = ρ · (W² − ½ Σ_i (P + c_i)²),   W = P + Σ_i c_i

    Short prompts before long completions (the synthetic 32–2048 mix) do not pay; long shared
    prompts (chat templates, paired data) do.
    """
    k, p = len(completion_lengths), prompt_length
    width = p + sum(completion_lengths)
    extra = attention_cost * (width**2 - 0.5 * sum((p + c) ** 2 for c in completion_lengths))
    return (k - 1) * p > extra


def _close(members: list[int], prompt_length: int, completions, packs: list[Pack], plain: list[int]) -> None:
    lengths = [len(completions[i]) for i in members]
    if len(members) > 1 and worth_packing(prompt_length, lengths):
        packs.append(Pack(tuple(members), prompt_length, prompt_length + sum(lengths)))
    else:
        plain.extend(members)


@dataclass(frozen=True)
class PackedBatch:
    """Right-padded packed sequences and where each scored token is predicted from.

    input_ids:    [B, W] int64
    position_ids: [B, W] int64, restarting at P for every completion
    segment:      [B, W] int64: 0 on the prompt, s on completion s (1-based), -1 on padding;
                  `attention_allowed()` turns it into the [B, W, W] mask on its device
    predict_from: [N] int64, flat index b * W + t of the hidden state that predicts token n
    targets:      [N] int64, the scored completion tokens, completion after completion
    lengths:      completion lengths in the order of `targets` (to split the N values)
    """

    input_ids: torch.Tensor
    position_ids: torch.Tensor
    segment: torch.Tensor
    predict_from: torch.Tensor
    targets: torch.Tensor
    lengths: list[int]

    def to(self, device: torch.device | str) -> PackedBatch:
        moved = (t.to(device, non_blocking=True) for t in (self.input_ids, self.position_ids, self.segment, self.predict_from, self.targets))
        return PackedBatch(*moved, self.lengths)

    def attention_allowed(self) -> torch.Tensor:
        """[B, W, W] bool: query q may see key k iff k ≤ q and k is in the prompt or in q's own
        completion; a pad query sees its whole past (no empty row: SDPA would give NaN)."""
        width = self.segment.shape[1]
        causal = torch.ones(width, width, dtype=torch.bool, device=self.segment.device).tril_()
        q, k = self.segment[:, :, None], self.segment[:, None, :]
        return causal & ((k == 0) | (q == k) | (q == -1))


def make_packed_batch(prompts: Sequence[Sequence[int]], completions: Sequence[Sequence[Sequence[int]]], pad_id: int) -> PackedBatch:
    """prompts[b] followed by completions[b][0], completions[b][1], …; one row per prompt."""
    widths = [len(p) + sum(len(c) for c in cs) for p, cs in zip(prompts, completions)]
    width = max(widths, default=0)
    rows = len(prompts)
    ids = torch.full((rows, width), pad_id, dtype=torch.long)
    positions = torch.zeros((rows, width), dtype=torch.long)
    # Segment per token: 0 = prompt, s = completion s, -1 = padding.
    segment = torch.full((rows, width), -1, dtype=torch.long)
    predict_from: list[int] = []
    targets: list[int] = []
    lengths: list[int] = []
    for b, (p, cs) in enumerate(zip(prompts, completions)):
        n_prompt = len(p)
        if n_prompt == 0:
            raise ValueError("every sequence needs at least one prompt token to predict the first completion token")
        ids[b, :n_prompt] = torch.as_tensor(list(p), dtype=torch.long)
        positions[b, :n_prompt] = torch.arange(n_prompt)
        segment[b, :n_prompt] = 0
        at = n_prompt
        for s, c in enumerate(cs, start=1):
            n = len(c)
            lengths.append(n)
            if n == 0:
                continue
            ids[b, at : at + n] = torch.as_tensor(list(c), dtype=torch.long)
            positions[b, at : at + n] = torch.arange(n_prompt, n_prompt + n)
            segment[b, at : at + n] = s
            # Token 0 is predicted from the last prompt token, token j from token j-1.
            predict_from += [b * width + n_prompt - 1] + list(range(b * width + at, b * width + at + n - 1))
            targets += [int(t) for t in c]
            at += n
        # Pads: any position works, nothing reads them.
        positions[b, at:] = torch.arange(at, width)
    return PackedBatch(ids, positions, segment, torch.as_tensor(predict_from, dtype=torch.long), torch.as_tensor(targets, dtype=torch.long), lengths)
