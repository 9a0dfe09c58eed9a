"""README's rule for the eval split's size, on its own example: round(f·n_D) desirable and
round(f·n_U) undesirable rows, at most round(f·n) in all, the larger target giving way. The
shipped examples/feedback.jsonl (30 desirable, 20 undesirable) at README's old --eval-fraction
0.05 aims at 2 + 1 by label, but round(2.5) = 2 in all (a half goes to the even number): 1 + 1."""

import json
from pathlib import Path

from kto.precompute.plan import eval_targets

FEEDBACK = Path(__file__).resolve().parents[2] / "examples" / "feedback.jsonl"


def test_the_shipped_rows_at_five_percent_give_one_of_each():
    labels = [bool(json.loads(line)["label"]) for line in FEEDBACK.read_text().splitlines() if line.strip()]
    assert (sum(labels), len(labels) - sum(labels)) == (30, 20)
    assert (eval_targets(30, 20, 0.05).desirable, eval_targets(30, 20, 0.05).undesirable) == (1, 1)
    assert (eval_targets(30, 20, 0.1).desirable, eval_targets(30, 20, 0.1).undesirable) == (3, 2)  # README's "Using it"


def test_the_larger_target_gives_way_never_below_one():
    """f = 0.5 of 3 + 3: round(1.5) = 2 each, 4 > round(3.0) = 3, so desirable (the larger or
    equal) gives way to 1. f = 0.3 of 5 + 5: round(1.5) = 2 each, 4 > round(3.0) = 3: 1 + 2."""
    assert (eval_targets(3, 3, 0.5).desirable, eval_targets(3, 3, 0.5).undesirable) == (1, 2)
    assert (eval_targets(5, 5, 0.3).desirable, eval_targets(5, 5, 0.3).undesirable) == (1, 2)
