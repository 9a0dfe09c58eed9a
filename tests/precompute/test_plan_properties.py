"""Properties of the eval split and the KL cycle (precompute/plan.py) that each seed must keep."""

import random

from kto.precompute.plan import kl_partners, split_eval


def test_a_same_prompt_partner_is_only_a_fallback():
    """prompts p, p, q (completions all distinct): on any cycle of three, one p row is followed
    by the other p row, yet both have q further on, so no row takes a same-prompt partner."""
    for seed in range(10):
        pairing = kl_partners(["p", "p", "q"], ["a", "b", "c"], ["0", "1", "2"], seed)
        assert pairing.same_prompt == 0, seed
        assert pairing.partner[0] == pairing.partner[1] == 2, (seed, pairing)
        assert pairing.partner[2] in (0, 1)


def test_only_one_prompt_with_another_completion_falls_back_and_is_counted():
    pairing = kl_partners(["p", "p", "p"], ["a", "b", "c"], ["0", "1", "2"], 0)
    assert pairing.same_prompt == 3
    assert [pairing.partner[i] for i in pairing.order] == pairing.order[1:] + pairing.order[:1]  # the next row


def groups_and_labels(n_groups=20):
    rows = list(range(2 * n_groups))
    groups = [r // 2 for r in rows]  # pairs: chosen and rejected share a prompt
    labels = [r % 2 == 0 for r in rows]
    return rows, labels, groups


def test_the_eval_split_depends_on_the_seed_and_stays_stratified():
    rows, labels, groups = groups_and_labels()
    evals = []
    for seed in range(5):
        train, held = split_eval(rows, labels, groups, 0.25, seed)
        assert sorted(train + held) == rows and not set(train) & set(held)
        assert sum(labels[r] for r in held) == 5 and len(held) == 10  # 25 % of each label
        assert {groups[r] for r in train}.isdisjoint({groups[r] for r in held})  # a pair on one side
        assert held == sorted(held) and train == sorted(train)  # input order kept
        evals.append(tuple(held))
    assert len(set(evals)) >= 2, evals
    # The same seed, the same split.
    assert split_eval(rows, labels, groups, 0.25, 3)[1] == list(evals[3])


def test_the_cycles_wrap_pairs_the_last_row_with_the_first():
    """3 pairs (chosen and rejected share a prompt), lengths of their own: the cycle's last row
    (the end of the second, descending block) would otherwise meet the first row's prompt for
    some seeds. `_spread` repairs the wrap too, so every row, the last included, pairs with its
    successor on the cycle, and none falls back to a same-prompt partner."""
    n = 6
    prompts = [f"p{i // 2}" for i in range(n)]
    completions = [f"c{i}" for i in range(n)]
    lengths = [random.Random(i).randint(5, 50) for i in range(n)]
    for seed in range(21):
        pairing = kl_partners(prompts, completions, [str(i) for i in range(n)], seed, lengths)
        order = pairing.order
        assert sorted(order) == list(range(n))
        assert prompts[order[-1]] != prompts[order[0]], (seed, order)
        assert pairing.partner[order[-1]] == order[0], (seed, pairing)
        assert [pairing.partner[order[k]] for k in range(n)] == order[1:] + order[:1], (seed, pairing)
        assert pairing.same_prompt == 0
