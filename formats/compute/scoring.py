"""Score many (prompt, completion) sequences with a frozen model, in token-budget batches.

kto-precompute scores the reference model with it; kto-inspect score scores a trained policy
with it. Both therefore batch and compute log-probs the same way (see logprob.py).

With `share_prefixes`, sequences with identical prompt ids are packed (shared_prefix.py): each
distinct prompt is run once, followed by all its completions. The log-probs are those of the
plain layout to fp32 rounding (the kernels' summation order follows the padded widths, which
differ between any two batchings: bit for bit on the suite's small models on the AVX-512 machine,
up to 14 ulps on the 30-layer SmolLM2, as plain at another budget; docs/benchmarks.md); only the
work changes. Batches of either layout are cut by the tokens
actually computed.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from .logprob import CompletionLogps, make_token_batch, segment_sums, sequence_sums
from .shared_prefix import Pack, bucket_call_cost, make_packed_batch, plan_packs

GPU_BATCH_TOKENS = 16384
CPU_BATCH_TOKENS = 2048
"""On CPU a bigger batch costs more per token: its intermediate tensors (tens of MB each) leave
the caches, and glibc hands them back to the kernel and faults them in again. On 8 real pairs
with SmolLM2-135M, plain scoring took 57-60 s at 16384 tokens and 33 s at 2048; prefix-shared
27 s and 24 s (docs/benchmarks.md, "The batch budget on CPU")."""


def default_batch_tokens(device: torch.device) -> int:
    """--batch-tokens when it is not given: 16384 on an accelerator, 2048 on CPU."""
    return CPU_BATCH_TOKENS if torch.device(device).type == "cpu" else GPU_BATCH_TOKENS


@dataclass(frozen=True)
class Scored:
    token_logps: list[np.ndarray]
    """Per sequence, float32 log-probs of its completion tokens."""
    sums: np.ndarray
    """[n] float64 sums of the above."""


@dataclass(frozen=True)
class Plan:
    """How a set of sequences is scored: packs of completions sharing a prompt, and the rest plain."""

    packs: list[Pack]
    plain: list[int]
    represented_tokens: int
    """Σ (prompt + completion) over all sequences: what a plain forward of each would compute."""
    computed_tokens: int
    """Tokens run through the model (padding not counted)."""


def plan_scoring(prompts: Sequence[Sequence[int]], completions: Sequence[Sequence[int]], keys: Sequence[Hashable], *, share_prefixes: bool) -> Plan:
    """A pure function of the sequences: the same inputs always give the same packs."""
    lengths = [len(p) + len(c) for p, c in zip(prompts, completions)]
    packs, plain = plan_packs(prompts, completions, keys) if share_prefixes else ([], list(range(len(lengths))))
    computed = sum(p.length for p in packs) + sum(lengths[i] for i in plain)
    return Plan(packs, plain, sum(lengths), computed)


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
    share_prefixes: bool = False,
) -> Scored:
    """Score sequence k = prompts[k] + completions[k]; batches are sorted by (length, key).

    `on_batch(sequences, represented_tokens)` is called after each batch (progress reporting).
    """
    n = len(prompts)
    token_logps: list[np.ndarray | None] = [None] * n
    sums = np.zeros(n, dtype=np.float64)
    plan = plan_scoring(prompts, completions, keys, share_prefixes=share_prefixes)

    def store(indices: Sequence[int], flat: torch.Tensor, lengths: Sequence[int], row_sums: torch.Tensor) -> None:
        values = torch.split(flat.float().cpu(), list(lengths))
        for i, v, total in zip(indices, values, row_sums.cpu().numpy()):
            token_logps[i] = v.numpy()
            sums[i] = total
        if on_batch is not None:
            on_batch(len(indices), sum(len(prompts[i]) + len(completions[i]) for i in indices))

    packs = plan.packs
    # A pack's completions are gathered into one attention row each; the budget counts them as
    # wide as the pack's widest (an upper bound: attention buckets the rows by their own width).
    widths, rows = [p.width for p in packs], [len(p.members) for p in packs]
    for batch_idx in token_budget_batches(widths, [keys[p.members[0]] for p in packs], batch_tokens, rows):
        chosen = [packs[j] for j in batch_idx]
        members = [i for p in chosen for i in p.members]
        batch = make_packed_batch(
            [prompts[p.members[0]] for p in chosen], [[completions[i] for i in p.members] for p in chosen], pad_id, call_cost=bucket_call_cost(device.type)
        ).to(device)
        flat = scorer.forward_packed(batch)
        store(members, flat, batch.lengths, segment_sums(flat, batch.lengths))

    plain = plan.plain
    lengths = [len(prompts[i]) + len(completions[i]) for i in plain]
    for batch_idx in token_budget_batches(lengths, [keys[i] for i in plain], batch_tokens):
        indices = [plain[j] for j in batch_idx]
        batch = make_token_batch([prompts[i] for i in indices], [completions[i] for i in indices], pad_id).to(device)
        flat = scorer(batch.input_ids, batch.score_mask)
        store(indices, flat, batch.score_mask.sum(dim=1).tolist(), sequence_sums(flat, batch.score_mask))
    return Scored(token_logps, sums)  # type: ignore[arg-type]


# ---- token-budget batches ----------------------------------------------------------------------
# Token-budget batching for scoring: sort by length, cut windows whose padded size fits.
#
# Shared by kto-precompute (reference scoring) and kto-inspect score (policy scoring), so both
# see sequences in the same deterministic order. Sorting by (length, key) makes the batches a pure
# function of the sequences and the budget: a rerun forms the same batches, hence the same bytes.


def token_budget_batches(lengths: Sequence[int], keys: Sequence[Hashable], budget: int, rows: Sequence[int] | None = None) -> list[list[int]]:
    """Group indices into batches sorted by (length, key) whose padded size ≤ `budget` tokens.

    Padded size = rows × longest row. Item i stands for `rows[i]` rows (default 1) of up to
    `lengths[i]` tokens: a shared-prefix pack is one item whose completions are gathered into
    one row each. An item larger than the budget gets a batch of its own. Neighbours in sorted
    order have similar lengths, so padding stays small.
    """
    if budget <= 0:
        raise ValueError("budget must be positive")
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], keys[i]))
    batches: list[list[int]] = []
    current: list[int] = []
    n_rows = 0
    for i in order:
        k = 1 if rows is None else rows[i]
        # Sorted ascending, so the newest item is the longest of the batch.
        if current and (n_rows + k) * lengths[i] > budget:
            batches.append(current)
            current, n_rows = [], 0
        current.append(i)
        n_rows += k
    if current:
        batches.append(current)
    return batches


def padding_fraction(lengths: Sequence[int], batches: Sequence[Sequence[int]]) -> float:
    """Share of padded token slots that hold padding."""
    real = sum(lengths[i] for b in batches for i in b)
    padded = sum(len(b) * max(lengths[i] for i in b) for b in batches if b)
    return 0.0 if padded == 0 else 1.0 - real / padded
