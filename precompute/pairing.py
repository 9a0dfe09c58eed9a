"""Mismatched KL pairs: each row i borrows the completion of another row j ≠ i, its successor on
one seeded cycle through the data.

KTO's reference point z estimates KL(πθ‖πref) on x ⊥ y′: a prompt with a completion written for
some *other* prompt. The paper takes y′ from the same batch as y, so z and the rewards are
measured on equally fresh completions. A partner drawn from anywhere in the dataset is, late in
an epoch, often a row the policy has already been trained on (its log-ratio is then high or low
under any prompt), and z drifts with the position in the epoch (docs/kl_pairing.md).

So the pairs are drawn as one cycle that training can follow: a seeded shuffle (of prompt
groups, so rows sharing a prompt stay together for prefix-shared scoring) is cut into
an even number of blocks of at most BLOCK_ROWS rows, each block is sorted by length (ascending
and descending in turn, so the joins between blocks, the wrap included, stay short), and each row takes the completion of the row after it.
The rows are stored in this cycle order; kto-train builds each optimizer step from a contiguous
segment of it, so all but one of a step's partners are trained in the same step, and neighbours
have similar lengths (little padding in either pass). Nothing here depends on the batch size.

Constraints, in order:
- never j = i, and never a j whose completion text equals row i's own (that would be a matched
  sample in disguise);
- prefer a j whose prompt text differs from row i's: rows that break this are first moved apart
  (a later row that fits is swapped in); where none is left, a row takes the nearest later one
  that shares the prompt, and that is counted (a matched-prompt pair biases z towards the
  matched log-ratio).
"""

from __future__ import annotations

import math
import random
from collections.abc import Hashable, Sequence
from dataclasses import dataclass

from kto.formats.errors import InputError

# Past this many candidates, fall back to the first acceptable one seen: keeps the worst case
# (one prompt shared by almost every row) linear-ish rather than quadratic.
MAX_SCAN = 4096
# How far ahead `_spread` looks for a row to swap in: paired data needs one or two; past that
# (one prompt shared by most rows) the partner scan's counted fallback takes over.
SPREAD_SCAN = 64
# Rows per length-sorted block of the cycle. Large enough that a micro-batch of neighbours has
# similar lengths (0.4 % of a 32-2048-token mix's range per 8 rows), small enough that a block is
# still a random sample of the data. Part of the cache's content via PAIRING_RULE.
BLOCK_ROWS = 2048
PAIRING_RULE = (
    f"cycle through an even number of length-sorted blocks of at most {BLOCK_ROWS} rows (zigzag) of a seeded shuffle of prompt groups; "
    "partner = next acceptable row; rows stored in cycle order"
)


@dataclass(frozen=True)
class Pairing:
    order: list[int]
    """The cycle: rows are written in this order, and order[k] normally pairs with order[k+1]."""
    partner: list[int]
    """partner[i] = j, the row whose completion row i uses for its KL sequence (input indices)."""
    same_prompt: int
    """How many rows had to fall back to a partner sharing their prompt."""


def cycle_order(lengths: Sequence[int], seed: int, block_rows: int = BLOCK_ROWS, groups: Sequence[Hashable] | None = None) -> list[int]:
    """A seeded shuffle cut into blocks, each sorted by length, in alternating directions.

    An even number of blocks of at most `block_rows` (equal sizes to one row), so that the
    cycle's wrap from the last block back to the first also joins two short rows. With `groups`
    (the prompt texts), the shuffle moves whole groups: rows sharing a prompt (a paired
    dataset's chosen and rejected) stay in one block, close together after the sort, so they
    land in one shard and kto-precompute scores their prompt once (prefix sharing)."""
    order = list(range(len(lengths)))
    if groups is None:
        random.Random(seed).shuffle(order)
    else:
        members: dict[Hashable, list[int]] = {}
        for i in order:
            members.setdefault(groups[i], []).append(i)
        shuffled = list(members.values())
        random.Random(seed).shuffle(shuffled)
        order = [i for group in shuffled for i in group]
    blocks = 2 * math.ceil(len(order) / (2 * block_rows))
    size = math.ceil(len(order) / blocks) if blocks else 1
    out: list[int] = []
    for b, start in enumerate(range(0, len(order), size)):
        # Stable sort: equal lengths keep their shuffled order.
        out.extend(sorted(order[start : start + size], key=lambda i: lengths[i], reverse=b % 2 == 1))
    return out


def _spread(order: list[int], prompts: Sequence[Hashable], completions: Sequence[Hashable]) -> None:
    """Swap a later row in where a row's successor shares its prompt or completion text.

    Paired data puts a chosen and a rejected row with one prompt (and similar lengths) side by
    side after the sort; moving them apart keeps the cycle a derangement with fresh prompts,
    and the row swapped in is the nearest that fits, so lengths stay sorted almost everywhere.
    """
    n = len(order)

    def ok(k: int) -> bool:  # does order[k] → order[k+1] (cyclically) make an acceptable pair?
        a, b = order[k % n], order[(k + 1) % n]
        return prompts[a] != prompts[b] and completions[a] != completions[b]

    for k in range(n - 1):
        if ok(k):
            continue
        for m in range(k + 2, min(n, k + 2 + SPREAD_SCAN)):
            a, c = order[k], order[m]
            if prompts[a] != prompts[c] and completions[a] != completions[c]:
                order[k + 1], order[m] = c, order[k + 1]
                break
    # The wrap (last → first): swap an earlier row into the last place where every pair it
    # touches stays acceptable.
    if n > 3 and not ok(n - 1):
        for m in range(n - 2, max(0, n - 2 - SPREAD_SCAN), -1):
            order[m], order[n - 1] = order[n - 1], order[m]
            if all(ok(k) for k in {m - 1, m, n - 2, n - 1}):
                break
            order[m], order[n - 1] = order[n - 1], order[m]


def kl_partners(
    prompts: Sequence[Hashable],
    completions: Sequence[Hashable],
    ids: Sequence[str],
    seed: int,
    lengths: Sequence[int] | None = None,
    block_rows: int = BLOCK_ROWS,
) -> Pairing:
    """Pair every row with the next acceptable row on the cycle (see the module docstring).

    `lengths` (tokens of prompt + completion) sort the blocks; without them the cycle is the
    plain seeded shuffle."""
    n = len(prompts)
    if n < 2:
        raise InputError(f"KL pairing needs at least 2 rows, got {n}")
    order = cycle_order(lengths if lengths is not None else [0] * n, seed, block_rows, groups=prompts)
    _spread(order, prompts, completions)
    partner = [-1] * n
    same_prompt = 0
    for k, i in enumerate(order):
        fallback = None
        for step in range(1, n):
            j = order[(k + step) % n]
            if completions[j] == completions[i]:
                continue
            if prompts[j] != prompts[i]:
                partner[i] = j
                break
            if fallback is None:
                fallback = j
            if step >= MAX_SCAN and fallback is not None:
                break
        if partner[i] == -1:
            if fallback is None:
                raise InputError(f"row {ids[i]}: no valid KL partner (every other row has the same completion text)")
            partner[i] = fallback
            same_prompt += 1
    return Pairing(order, partner, same_prompt)
