"""transformers' constant schedule takes no warmup, so no warmup line at all is printed for it:
neither the rounding note of warmup_ratio (⌊ratio × T⌋ here, ⌈ratio × T⌉ in transformers) nor
the warning that --warmup-steps outlasts the run. Both follow one rule (optim.takes_warmup),
which the model card's words follow too (no warmup for constant)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from conftest import run_train

from kto.train.optim import reaches_lr, takes_warmup, warmup_note


def cfg(schedule: str, ratio: float = 0.0, steps: int = 0) -> SimpleNamespace:
    return SimpleNamespace(warmup_ratio=ratio, warmup_steps=steps, lr_schedule=schedule, lr=1e-6)


def test_constant_takes_no_warmup_and_gets_no_line():
    """0.5 × 15 = 7.5: ⌊7.5⌋ = 7, ⌈7.5⌉ = 8, but constant warms up for neither."""
    assert not takes_warmup("constant")
    assert warmup_note(cfg("constant", ratio=0.5), 15) is None
    assert warmup_note(cfg("constant", steps=20), 15) is None
    assert reaches_lr("constant", 20, 15)


@pytest.mark.parametrize("schedule", ["linear", "cosine", "constant_with_warmup", "polynomial", "inverse_sqrt"])
def test_schedules_with_warmup_keep_both_lines(schedule):
    assert takes_warmup(schedule)
    assert warmup_note(cfg(schedule, ratio=0.5), 15).startswith("warmup: 7 steps (⌊warmup_ratio 0.5 × 15 steps⌋); transformers")
    assert warmup_note(cfg(schedule, steps=20), 15).startswith("warning: --warmup-steps 20 ≥ the run's 15 steps")
    assert not reaches_lr(schedule, 20, 15)


def test_kto_train_says_nothing_of_warmup_for_constant(tiny_cache, tiny_model_dir, tmp_path):
    """0.5 × 3 = 1.5: a line for linear (1 here, 2 there), none for constant."""
    args = ("--batch-size", "2", "--max-steps", "3", "--warmup-ratio", "0.5")
    linear = run_train(tiny_cache, tiny_model_dir, tmp_path / "linear", *args, "--lr-schedule", "linear")
    assert linear.exit_code == 0, linear.output
    assert [line for line in linear.output.splitlines() if line.startswith("warmup:")] == [
        "warmup: 1 step (⌊warmup_ratio 0.5 × 3 steps⌋); transformers, hence TRL and LLaMA-Factory, rounds up to 2: "
        "give --warmup-steps 2 (warmup_steps in a --config file) to warm up as they do"
    ]
    constant = run_train(tiny_cache, tiny_model_dir, tmp_path / "constant", *args, "--lr-schedule", "constant")
    assert constant.exit_code == 0, constant.output
    assert not [line for line in constant.output.splitlines() if "warmup" in line], constant.output
