"""Mismatched KL pairs: each row i borrows the completion of another row j ≠ i.

KTO's reference point z estimates KL(πθ‖πref) on x ⊥ y′: a prompt with a completion written for
some *other* prompt. We draw the partners from the whole dataset through a seeded random
derangement (a random cyclic order, each row taking its successor's completion), not by rotating
inside a training batch as TRL does. TRL's in-batch rotation ties the KL pairs to batch
composition, which is why it cannot shuffle; here the pairs are fixed in the cache, so training
shuffles freely and every run sees the same pairs.

Constraints, in order:
- never j = i, and never a j whose completion text equals row i's own (that would be a matched
  sample in disguise);
- prefer a j whose prompt text differs from row i's; where none is left, take one that shares
  the prompt and count it (a matched-prompt pair biases z towards the matched log-ratio).
"""

from __future__ import annotations

import random
from collections.abc import Hashable, Sequence
from dataclasses import dataclass

from kto.formats.errors import InputError

# Past this many candidates in the cycle, fall back to the first acceptable one seen: keeps the
# worst case (one prompt shared by almost every row) linear-ish rather than quadratic.
MAX_SCAN = 4096


@dataclass(frozen=True)
class Pairing:
    partner: list[int]
    """partner[i] = j, the row whose completion row i uses for its KL sequence."""
    same_prompt: int
    """How many rows had to fall back to a partner sharing their prompt."""


def kl_partners(prompts: Sequence[Hashable], completions: Sequence[Hashable], ids: Sequence[str], seed: int) -> Pairing:
    n = len(prompts)
    if n < 2:
        raise InputError(f"KL pairing needs at least 2 rows, got {n}")
    order = list(range(n))
    random.Random(seed).shuffle(order)
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
    return Pairing(partner, same_prompt)
