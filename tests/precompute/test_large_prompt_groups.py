"""A few prompts over many rows (sampled completions of a handful of prompts): the cycle moved
each prompt group whole, so a group of thousands of rows filled blocks of the cycle alone, where
no row had another prompt to pair with. 5 prompts over 50k rows gave 21,608 same-prompt KL pairs
(43 %) and took 11 s to pair. A group of more than SIDE_BY_SIDE_ROWS rows is now shuffled row by
row; smaller groups (a pair's chosen and rejected) still sit side by side."""

from __future__ import annotations

import random

from kto.precompute.plan import SIDE_BY_SIDE_ROWS, cycle_order, kl_partners


def test_a_few_prompts_over_many_rows_pair_across_prompts():
    rows, prompts = 10_000, 5
    rng = random.Random(0)
    prompt = [f"p{i % prompts}" for i in range(rows)]
    completion = [f"c{i}" for i in range(rows)]
    lengths = [rng.randint(17, 60) for _ in range(rows)]
    pairing = kl_partners(prompt, completion, [str(i) for i in range(rows)], seed=0, lengths=lengths)
    assert pairing.same_prompt == 0
    position = {row: k for k, row in enumerate(pairing.order)}
    successor = sum(pairing.partner[row] == pairing.order[(position[row] + 1) % rows] for row in range(rows))
    assert successor / rows > 0.99, successor


def test_small_groups_still_sit_side_by_side():
    """Pairs (groups of 2) and a group of SIDE_BY_SIDE_ROWS rows are each contiguous on the cycle;
    a group one row larger is not."""
    sizes = [2] * 200 + [SIDE_BY_SIDE_ROWS, SIDE_BY_SIDE_ROWS + 1]
    groups = [g for g, size in enumerate(sizes) for _ in range(size)]
    lengths = [50] * len(groups)  # equal lengths: the sort keeps each group's rows together or not by the shuffle alone
    order = cycle_order(lengths, seed=3, groups=groups)
    where = {}
    for k, row in enumerate(order):
        where.setdefault(groups[row], []).append(k)
    contiguous = {g: max(ks) - min(ks) == len(ks) - 1 for g, ks in where.items()}
    assert all(contiguous[g] for g in range(201)) and not contiguous[201], [g for g, c in contiguous.items() if not c]
