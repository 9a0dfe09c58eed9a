"""Score many (prompt, completion) sequences with a frozen model, in token-budget batches.

kto-precompute scores the reference model with it; kto-inspect score scores a trained policy
with it. Both therefore batch and compute log-probs the same way (see logprob.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Hashable, Sequence

import numpy as np
import torch

from .batching import token_budget_batches
from .logprob import CompletionLogps, make_token_batch, sequence_sums, split_rows


@dataclass(frozen=True)
class Scored:
    token_logps: list[np.ndarray]
    """Per sequence, float32 log-probs of its completion tokens."""
    sums: np.ndarray
    """[n] float64 sums of the above."""


@torch.inference_mode()
def score_sequences(
    scorer: CompletionLogps,
    prompts: Sequence[Sequence[int]],
    completions: Sequence[Sequence[int]],
    keys: Sequence[Hashable],
    *,
    batch_tokens: int,
    pad_id: int,
    device: torch.device,
    on_batch: Callable[[int, int], None] | None = None,
) -> Scored:
    """Score sequence k = prompts[k] + completions[k]; batches are sorted by (length, key).

    `on_batch(sequences, real_tokens)` is called after each batch (progress reporting).
    """
    lengths = [len(p) + len(c) for p, c in zip(prompts, completions)]
    token_logps: list[np.ndarray | None] = [None] * len(lengths)
    sums = np.zeros(len(lengths), dtype=np.float64)
    for batch_idx in token_budget_batches(lengths, keys, batch_tokens):
        batch = make_token_batch([prompts[i] for i in batch_idx], [completions[i] for i in batch_idx], pad_id)
        batch = batch.to(device)
        flat = scorer(batch.input_ids, batch.score_mask)
        row_sums = sequence_sums(flat, batch.score_mask).cpu().numpy()
        for i, values, total in zip(batch_idx, split_rows(flat.float().cpu(), batch.score_mask.cpu()), row_sums):
            token_logps[i] = values.numpy()
            sums[i] = total
        if on_batch is not None:
            on_batch(len(batch_idx), sum(lengths[i] for i in batch_idx))
    return Scored(token_logps, sums)  # type: ignore[arg-type]
