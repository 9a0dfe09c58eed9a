"""The LR schedule is checked over the run's own steps before it trains: every step's factor
(the rate over --lr) as the run's scheduler will compute it, from step 0 to the scheduler's
step after the last update. Seen in a review: `polynomial` with a negative power trained above
--lr and then crashed after the last update (no final/); `inverse_sqrt` with timescale 0 crashed
at start-up with a traceback; bad kwargs silently left steps at rate 0 or never reached --lr;
a run whose only step was a warmup step (rate 0) saved --model unchanged as final/, exit 0."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from conftest import run_train, train_error_line

from kto.formats.errors import InputError
from kto.train.optim import build_scheduler, check_schedule, warmup_note


def schedule_cfg(**kw) -> SimpleNamespace:
    return SimpleNamespace(**{"lr_schedule": "linear", "lr_schedule_kwargs": {}, "warmup_ratio": 0.0, "warmup_steps": 0, "lr": 1e-6, **kw})


def refusal(cfg: SimpleNamespace, total: int) -> str:
    with pytest.raises(InputError) as err:
        check_schedule(cfg, total)
    return str(err.value)


def test_a_step_that_raises_is_refused_naming_it():
    """polynomial, power −1, 4 steps: pct_remaining**−1 divides by 0 at step 4, the scheduler's
    step after the last update; its rate rises above --lr before that (step 1: 4/3 × --lr).
    inverse_sqrt, timescale 0, no warmup: step 0 divides by 0 (the 10 made-up steps of the old
    check gave 1 warmup step, which hid it)."""
    line = refusal(schedule_cfg(lr_schedule="polynomial", lr_schedule_kwargs={"power": -1}), 4)
    assert line.startswith(
        '--lr-schedule polynomial --lr-schedule-kwargs {"power": -1}: step 1 of the run\'s 4 would run at learning rate 1.3e-06 (1.3 × --lr 1e-06): above --lr'
    )
    assert "\n" not in line
    line = refusal(schedule_cfg(lr_schedule="inverse_sqrt", lr_schedule_kwargs={"timescale": 0}), 4)
    assert line.startswith('--lr-schedule inverse_sqrt --lr-schedule-kwargs {"timescale": 0}: ') and "ZeroDivisionError" in line and "step 0" in line


def test_a_raise_on_the_step_after_the_last_update_is_refused(monkeypatch):
    """polynomial's crash came from scheduler.step() after the last update (step = total): that
    step is evaluated too, though no update runs at its rate. A schedule fine on steps 0..3 that
    divides by 0 at step 4, built by a stand-in for get_scheduler."""
    from kto.train import optim

    def get_scheduler(name, optimizer, **_):
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0 if s < 4 else 1 / 0)

    monkeypatch.setattr(optim, "_get_scheduler", lambda: get_scheduler)
    line = refusal(schedule_cfg(lr_schedule="constant"), 4)
    assert (
        line
        == "--lr-schedule constant --lr-schedule-kwargs {}: step 4 (the scheduler's step after the last update) of the run's 4 raises ZeroDivisionError: division by zero"
    )
    check_schedule(schedule_cfg(lr_schedule="constant"), 3)


def test_build_scheduler_turns_any_error_into_an_input_error():
    """The run builds its scheduler with the real total too: an error there is one line, never
    a traceback (transformers evaluates step 0 when it builds the scheduler)."""
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1e-6)
    with pytest.raises(InputError, match="ZeroDivisionError"):
        build_scheduler(optimizer, schedule_cfg(lr_schedule="inverse_sqrt", lr_schedule_kwargs={"timescale": 0}), 4)


def test_kwargs_that_silently_change_the_rate_are_refused():
    """cosine_with_min_lr, min_lr_rate −1, --lr 0.1, 4 steps: 2·½(1 + cos(π s/4)) − 1 = cos(π s/4),
    clamped at 0 by transformers: [1, 0.71, 0, 0] × --lr, half the run at rate 0.
    warmup_stable_decay, num_decay_steps 100 on 4 steps: the stable phase is 4 − 100 < 0 steps,
    so step 0 is 96% through the cosine decay: ½(1 + cos(0.96π)) = 0.0039 × --lr, never --lr."""
    line = refusal(schedule_cfg(lr_schedule="cosine_with_min_lr", lr_schedule_kwargs={"min_lr_rate": -1}, lr=0.1), 4)
    assert line == (
        '--lr-schedule cosine_with_min_lr --lr-schedule-kwargs {"min_lr_rate": -1}: steps 2 to 3 (2 of the run\'s 4) run at learning rate 0 and train nothing'
    )
    line = refusal(schedule_cfg(lr_schedule="warmup_stable_decay", lr_schedule_kwargs={"num_decay_steps": 100}), 4)
    assert line == (
        '--lr-schedule warmup_stable_decay --lr-schedule-kwargs {"num_decay_steps": 100}: step 0, the first after warmup, runs at 0.00394 × --lr 1e-06: '
        "the schedule never reaches --lr over the run's 4 steps"
    )
    assert f"{0.5 * (1 + math.cos(math.pi * 0.96)):.3g}" == "0.00394"
    # A negative rate: lr_end below 0, which transformers takes.
    line = refusal(schedule_cfg(lr_schedule="polynomial", lr_schedule_kwargs={"lr_end": -1e-6}), 4)
    assert line.endswith("step 3 of the run's 4 would run at learning rate -5e-07 (-0.5 × --lr 1e-06): a negative rate")


def test_a_run_at_rate_0_throughout_is_refused():
    """--max-steps 1 --warmup-steps 1: transformers' warmup is s/W, so the only step runs at 0."""
    line = refusal(schedule_cfg(warmup_steps=1), 1)
    assert line == (
        "every step of the run (1) runs at learning rate 0 (--warmup-steps 1 ≥ the run's 1 steps, and transformers' warmup starts at rate 0): "
        "nothing would train and final/ would be --model unchanged; give --warmup-steps below 1 (or a smaller --warmup-ratio), or more steps"
    )


GOOD = [
    ("constant", {}),
    ("constant_with_warmup", {}),
    ("linear", {}),
    ("cosine", {}),
    ("cosine", {"num_cycles": 1.0}),  # a full cosine: one step at rate 0 mid-run, by choice
    ("cosine_with_restarts", {}),
    ("cosine_with_restarts", {"num_cycles": 3}),
    ("polynomial", {}),
    ("polynomial", {"power": 2.0, "lr_end": 0.0}),
    ("inverse_sqrt", {}),
    ("inverse_sqrt", {"timescale": 20}),
    ("cosine_with_min_lr", {"min_lr": 1e-7}),
    ("cosine_with_min_lr", {"min_lr_rate": 0.1}),
    ("cosine_warmup_with_min_lr", {"min_lr_rate": 0.1}),
    ("warmup_stable_decay", {"num_decay_steps": 1}),
    ("warmup_stable_decay", {"num_decay_steps": 1, "decay_type": "1-sqrt", "min_lr_ratio": 0.1}),
]


@pytest.mark.parametrize("kind, kwargs", GOOD)
@pytest.mark.parametrize("total, warmup", [(1, 0), (2, 1), (7, 0), (7, 2), (100, 10), (3, 3), (3, 5)])
def test_the_documented_schedules_pass(kind, kwargs, total, warmup):
    """Every kind README lists, with its usual kwargs, over short and long runs, warmup or not
    (warmup ≥ total only warns: tested below). lr 3e-4 against polynomial's lr_end 1e-7: its
    peak ((lr − lr_end)·1 + lr_end)/lr is 1 only up to float rounding."""
    cfg = schedule_cfg(lr_schedule=kind, lr_schedule_kwargs=kwargs, warmup_steps=warmup, lr=3e-4)
    if kind == "polynomial" and warmup == total:
        # transformers' polynomial divides by T − W on step T, where scheduler.step() lands
        # after the last update: the run would crash there, before final/ is saved.
        assert refusal(cfg, total).endswith(
            f"step {total} (the scheduler's step after the last update) of the run's {total} raises ZeroDivisionError: division by zero; "
            f"--warmup-steps {warmup} ≥ the run's {total} steps: give fewer"
        )
        return
    check_schedule(cfg, total)


def test_a_factor_of_one_up_to_rounding_is_not_above_lr():
    """polynomial's factor at its peak is ((lr − lr_end) + lr_end)/lr, a hair above 1 for some lr."""
    lr, lr_end = 0.007, 0.0005
    assert ((lr - lr_end) + lr_end) / lr > 1.0  # the rounding this test is about
    check_schedule(schedule_cfg(lr_schedule="polynomial", lr_schedule_kwargs={"lr_end": lr_end}, lr=lr), 5)


def test_without_the_total_only_what_get_scheduler_refuses_is_checked():
    """A caller that has not planned the steps yet: kwargs get_scheduler refuses, nothing else."""
    with pytest.raises(InputError, match="min_lr"):
        check_schedule(schedule_cfg(lr_schedule="cosine_with_min_lr"))
    check_schedule(schedule_cfg(lr_schedule="warmup_stable_decay", lr_schedule_kwargs={"num_decay_steps": 100}))


def test_a_warmup_that_outlasts_the_run_is_warned_of():
    """--warmup-steps 5 over 4 steps: s/5 peaks at 3/5 × --lr on the last step, never --lr."""
    assert warmup_note(schedule_cfg(warmup_steps=5), 4) == (
        "warning: --warmup-steps 5 ≥ the run's 4 steps: the learning rate is still warming up when the run ends and never reaches --lr 1e-06; "
        "give --warmup-steps below 4 (warmup_steps in a --config file)"
    )
    assert warmup_note(schedule_cfg(warmup_steps=4), 4).startswith("warning: --warmup-steps 4 ≥ the run's 4 steps:")
    assert warmup_note(schedule_cfg(warmup_steps=3), 4) is None
    assert warmup_note(schedule_cfg(warmup_steps=5, lr_schedule="constant"), 4) is None  # transformers' constant has no warmup
    # cosine_warmup_with_min_lr's warmup is (s + 1)/W: it reaches --lr on step W − 1.
    assert warmup_note(schedule_cfg(warmup_steps=4, lr_schedule="cosine_warmup_with_min_lr"), 4) is None


ARGS = ["--batch-size", "2", "--log-every", "1", "--max-steps", "4"]


@pytest.mark.parametrize(
    "flags, start",
    [
        (
            ["--lr-schedule", "polynomial", "--lr-schedule-kwargs", '{"power": -1}'],
            'kto-train: error: --lr-schedule polynomial --lr-schedule-kwargs {"power": -1}: step 1 of the run\'s 4',
        ),
        (
            ["--lr-schedule", "inverse_sqrt", "--lr-schedule-kwargs", '{"timescale": 0}'],
            'kto-train: error: --lr-schedule inverse_sqrt --lr-schedule-kwargs {"timescale": 0}: step 0 of the run\'s 4 raises ZeroDivisionError',
        ),
        (
            ["--lr-schedule", "cosine_with_min_lr", "--lr-schedule-kwargs", '{"min_lr_rate": -1}', "--lr", "0.1"],
            'kto-train: error: --lr-schedule cosine_with_min_lr --lr-schedule-kwargs {"min_lr_rate": -1}: steps 2 to 3',
        ),
        (
            ["--lr-schedule", "warmup_stable_decay", "--lr-schedule-kwargs", '{"num_decay_steps": 100}'],
            'kto-train: error: --lr-schedule warmup_stable_decay --lr-schedule-kwargs {"num_decay_steps": 100}: step 0, the first after warmup',
        ),
        (
            ["--max-steps", "1", "--warmup-steps", "1"],
            "kto-train: error: every step of the run (1) runs at learning rate 0 (--warmup-steps 1 ≥ the run's 1 steps",
        ),
    ],
    ids=["polynomial-power", "inverse_sqrt-timescale", "min_lr_rate", "num_decay_steps", "all-warmup"],
)
def test_kto_train_refuses_them_in_one_line_before_training(tiny_cache, tiny_model_dir, tmp_path, flags, start):
    result = run_train(tiny_cache, tiny_model_dir, tmp_path / "run", *ARGS, *flags)
    assert result.exit_code == 2, result.output
    assert train_error_line(result.output).startswith(start)
    assert not (tmp_path / "run").exists()


def test_kto_train_warns_when_the_warmup_outlasts_the_run(tiny_cache, tiny_model_dir, tmp_path):
    result = run_train(tiny_cache, tiny_model_dir, tmp_path / "run", "--batch-size", "2", "--max-steps", "2", "--warmup-steps", "3")
    assert result.exit_code == 0, result.output
    assert "warning: --warmup-steps 3 ≥ the run's 2 steps: the learning rate is still warming up when the run ends" in result.output
