"""Token-budget batching for scoring: sort by length, cut windows whose padded size fits.

Shared by kto-precompute (reference scoring) and kto-inspect score (policy scoring), so both
see sequences in the same deterministic order. Sorting by (length, key) makes the batches a pure
function of the sequences and the budget: a rerun forms the same batches, hence the same bytes.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

# Every forward pads its sequence width to a multiple of this. CPU flash attention (torch's
# FlashAttentionKernel.cpp) sums the softmax over keys in 16-wide vectors (AVX-512 fp32; 8-wide
# under AVX2, and 16 is a multiple of 8) and the last `width % 16` keys one by one with another
# exp: a token near the end of the longest row got other bits than the same token in a wider
# batch. With no such tail, a row's attention does not depend on the batch width. The plain and
# shared-prefix layouts (and precompute and training) then agree bit for bit on the AVX-512
# machine, and to a few ulps under AVX2, where MKL blocks matmuls by other shapes (docs/design.md).
ATTENTION_WIDTH_MULTIPLE = 16


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
