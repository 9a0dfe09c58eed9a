"""Class weights that make the KTO loss identically 0 are refused; the balance warning never
advises a 0 weight or one printed with digits that round it away. Both weights 0 used to be
accepted: loss 0 every step, final/ = the initial weights, and the warning advised
`--desirable-weight 0.0000`."""

from __future__ import annotations

import math

import pytest
from conftest import train_error_line
from test_loop import train_cli

from kto.train import checks


@pytest.mark.parametrize(
    "n_d, n_u, w_d, w_u, sft, why",
    [
        (8, 8, 0.0, 0.0, 0.0, "--desirable-weight 0 and --undesirable-weight 0 (n_D = 8, n_U = 8)"),
        (8, 0, 0.0, 1.0, 0.0, "--desirable-weight 0 and the cache has no undesirable rows (n_D = 8, n_U = 0)"),
        (0, 8, 1.0, 0.0, 0.0, "the cache has no desirable rows and --undesirable-weight 0 (n_D = 0, n_U = 8)"),
    ],
)
def test_weights_that_zero_the_loss_for_every_row_are_named(n_d, n_u, w_d, w_u, sft, why):
    assert checks.loss_is_identically_zero(n_d, n_u, w_d, w_u, sft) == f"{why}: the loss is identically 0 and nothing would train"


@pytest.mark.parametrize(
    "n_d, n_u, w_d, w_u, sft",
    [
        (8, 8, 0.0, 0.0, 0.1),  # SFT alone still trains the desirable rows
        (8, 8, 0.0, 1.0, 0.0),  # only undesirable rows count, but they do
        (8, 0, 1.0, 0.0, 0.0),  # an all-desirable cache with w_D > 0
    ],
)
def test_weights_that_leave_some_row_in_the_loss_pass(n_d, n_u, w_d, w_u, sft):
    assert checks.loss_is_identically_zero(n_d, n_u, w_d, w_u, sft) is None


def test_kto_train_refuses_both_weights_zero_before_out(tiny_cache, tiny_model_dir, tmp_path):
    result = train_cli(tiny_cache, tiny_model_dir, tmp_path / "r", "--max-steps", "1", "--desirable-weight", "0", "--undesirable-weight", "0")
    assert result.exit_code == 2, result.output
    assert train_error_line(result.output) == (
        "kto-train: error: --desirable-weight 0 and --undesirable-weight 0 (n_D = 8, n_U = 8): the loss is identically 0 and nothing would train"
    )
    assert not (tmp_path / "r").exists()


def test_no_weight_is_advised_when_undesirable_weight_is_zero():
    """With w_U = 0 no w_D brings (w_D·n_D)/(w_U·n_U) inside [1, 4/3]: the old code advised w_D itself."""
    b = checks.class_balance(8, 8, 0.0, 0.0)
    assert b.suggested_desirable_weight is None and b.advised_desirable_weight is None and not b.ok
    b = checks.class_balance(8, 8, 1.0, 0.0)
    assert b.ratio == math.inf and b.advised_desirable_weight is None


@pytest.mark.parametrize(
    "n_d, n_u, w_d, w_u, advised",
    [
        (100_000, 1, 1.0, 1.0, "0.00001"),  # `:.4f` printed 0.0000: a weight that zeroes the loss
        (300, 100, 1.0, 1.0, "0.4"),  # 4/9 exactly, but 0.4 is inside and is what one types
        (100, 300, 1.0, 1.0, "3"),
        (8, 8, 1.0, 2.0, "2"),
        (7, 3, 1.0, 1.0, "0.5"),  # nearest 4/7 = 0.5714…; 0.6 falls outside [3/7, 4/7], 0.5 is inside
        (3, 7, 1.0, 1.0, "3"),  # nearest 7/3 = 2.333…, which was advised in full; 3 is inside [7/3, 28/9]
        (1, 1000, 1.0, 1.0, "1000"),  # the low end exactly
    ],
)
def test_advised_weight_is_short_nonzero_and_inside(n_d, n_u, w_d, w_u, advised):
    b = checks.class_balance(n_d, n_u, w_d, w_u)
    assert not b.ok and b.advised_desirable_weight == advised
    w = float(advised)
    assert w > 0 and 1.0 <= (w * n_d) / (w_u * n_u) <= 4 / 3


def test_the_papers_range_holds_its_ends():
    """(w_D·n_D)/(w_U·n_U) ∈ [1, 4/3], both ends in: 4 desirable rows to 3 undesirable ones is
    4/3 exactly, balanced, no warning (a mutation to `< 4/3` warned there and went unseen)."""
    assert checks.class_balance(4, 3, 1, 1).ok and checks.class_balance(3, 3, 1, 1).ok
    assert not checks.class_balance(5, 3, 1, 1).ok and not checks.class_balance(2, 3, 1, 1).ok
