"""kto-train rounds the warmup ratio down (⌊ratio × total⌋, kept: resumed runs depend on it),
transformers up (⌈ratio × total⌉): where the two differ, a line at start-up says both."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from conftest import run_train

from kto.train.optim import warmup_note


def cfg(ratio: float, steps: int = 0) -> SimpleNamespace:
    return SimpleNamespace(warmup_ratio=ratio, warmup_steps=steps, lr_schedule="linear", lr=1e-6)


def test_the_note_gives_both_numbers():
    """0.1 × 6 = 0.6: ⌊0.6⌋ = 0 warmup steps here, ⌈0.6⌉ = 1 in transformers."""
    assert warmup_note(cfg(0.1), 6) == (
        "warmup: 0 steps (⌊warmup_ratio 0.1 × 6 steps⌋); transformers, hence TRL and LLaMA-Factory, rounds up to 1: give --warmup-steps 1 (warmup_steps in a --config file) to warm up as they do"
    )
    # 0.25 × 10 = 2.5: 2 here, 3 there.
    assert warmup_note(cfg(0.25), 10).startswith("warmup: 2 steps (⌊warmup_ratio 0.25 × 10 steps⌋); transformers, hence TRL and LLaMA-Factory, rounds up to 3:")


@pytest.mark.parametrize(
    ("config", "total"),
    [
        (cfg(0.1), 10),  # 0.1 × 10 = 1: both 1
        (cfg(0.0), 7),  # no warmup either way
        (cfg(0.1, steps=3), 6),  # warmup_steps wins over the ratio, as in transformers
    ],
)
def test_no_note_where_the_two_agree(config, total):
    assert warmup_note(config, total) is None


def test_kto_train_prints_it_at_start_up(tiny_cache, tiny_model_dir, tmp_path):
    """The default warmup_ratio 0.1 over 2 steps: none here, 1 step in transformers."""
    result = run_train(tiny_cache, tiny_model_dir, tmp_path / "run", "--batch-size", "2", "--max-steps", "2")
    assert result.exit_code == 0, result.output
    said = [line for line in result.output.splitlines() if line.startswith("warmup:")]
    assert said == [
        "warmup: 0 steps (⌊warmup_ratio 0.1 × 2 steps⌋); transformers, hence TRL and LLaMA-Factory, rounds up to 1: give --warmup-steps 1 (warmup_steps in a --config file) to warm up as they do"
    ]
