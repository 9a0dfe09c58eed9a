"""The model card's learning-rate row names the warmup steps the run took (train/optim.py
warmup_steps of the run's total), not only the ratio asked for: a 9-step run at warmup ratio 0.1
warmed up for 0 steps while its card said "warmup ratio 0.1"."""

from __future__ import annotations

import pytest
from conftest import run_train

ARGS = ("--batch-size", "2", "--lr", "1e-3", "--log-every", "1", "--max-steps", "3", "--lr-schedule", "cosine")


def learning_rate_row(folder) -> str:
    for line in (folder / "README.md").read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells[0] == "learning rate":
            return cells[1]
    raise AssertionError("no learning rate row")


@pytest.mark.parametrize(
    "extra, row",
    [
        ((), "0.001 (cosine, 0 warmup steps (warmup ratio 0.1 of 3 steps))"),  # ⌊0.1 × 3⌋ = 0
        (("--warmup-ratio", "0.5"), "0.001 (cosine, 1 warmup step (warmup ratio 0.5 of 3 steps))"),  # ⌊0.5 × 3⌋ = 1
        (("--warmup-steps", "2"), "0.001 (cosine, 2 warmup steps (warmup_steps 2))"),
        # The run warned that the rate never reaches --lr: every one of its 3 steps warmed up.
        (("--warmup-steps", "10"), "0.001 (cosine, 10 warmup steps (warmup_steps 10; more than the run's 3 steps, so the rate never reached 0.001))"),
        (("--warmup-steps", "3"), "0.001 (cosine, 3 warmup steps (warmup_steps 3; as many as the run's 3 steps, so the rate never reached 0.001))"),
    ],
)
def test_the_card_names_the_warmup_steps_the_run_took(tiny_cache, tiny_model_dir, tmp_path, extra, row):
    out = tmp_path / "run"
    result = run_train(tiny_cache, tiny_model_dir, out, *ARGS, *extra)
    assert result.exit_code == 0, result.output
    assert learning_rate_row(out / "final") == row


def test_constant_takes_no_warmup_and_the_card_says_so():
    """transformers' constant schedule ignores num_warmup_steps (optim.py)."""
    from kto.train.model_card import learning_rate_line

    config = {"lr": 1e-3, "lr_schedule": "constant", "warmup_ratio": 0.5, "warmup_steps": 0, "lr_schedule_kwargs": {}}
    assert learning_rate_line(config, 1, 3) == "0.001 (constant, no warmup (transformers' constant takes none))"


@pytest.mark.parametrize("schedule", ["linear", "cosine", "cosine_warmup_with_min_lr", "constant"])
@pytest.mark.parametrize("warmup", [2, 3, 4])
def test_the_card_says_the_rate_never_reached_lr_where_the_run_warned_it(schedule, warmup):
    """The card's words follow the run's warning (optim.warmup_note): cosine_warmup_with_min_lr
    warms up as (s + 1)/W, so it reaches --lr on a run of W steps; the others need W + 1 steps."""
    from kto.train.config import TrainConfig
    from kto.train.model_card import learning_rate_line
    from kto.train.optim import warmup_note

    kwargs = {"min_lr_rate": 0.1} if schedule == "cosine_warmup_with_min_lr" else {}
    cfg = TrainConfig(cache="c", model="m", out="o", lr=1e-3, lr_schedule=schedule, lr_schedule_kwargs=kwargs, warmup_steps=warmup)
    config = {"lr": 1e-3, "lr_schedule": schedule, "warmup_ratio": 0.1, "warmup_steps": warmup, "lr_schedule_kwargs": kwargs}
    warned = (warmup_note(cfg, 3) or "").startswith("warning:")
    assert ("never reached" in learning_rate_line(config, warmup, 3)) == warned
    assert warned == (schedule != "constant" and warmup >= (4 if schedule == "cosine_warmup_with_min_lr" else 3))
