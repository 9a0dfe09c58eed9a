"""Values a fuzz of kto-train's flags found (/tmp/hunt-flags): a step count of 10**12 hung at
start-up, growing to 2.5 GB, with no message (the LR schedule check evaluated every step of the
run up front); --lora-r 2**63 passed validation and crashed in torch.empty with a traceback;
TrainConfig(lora_alpha=...) without lora_r trained every weight silently (only the command line
refused it)."""

from __future__ import annotations

import os
import signal
import time
from types import SimpleNamespace

import pytest
from conftest import run_train, train_error_line

from kto.formats.errors import InputError
from kto.train.config import TrainConfig, planned_steps
from kto.train.optim import check_schedule


def schedule_cfg(**kw) -> SimpleNamespace:
    return SimpleNamespace(**{"lr_schedule": "linear", "lr_schedule_kwargs": {}, "warmup_ratio": 0.0, "warmup_steps": 0, "lr": 1e-6, **kw})


HUGE = [10**12, 2**63 - 1, planned_steps(SimpleNamespace(max_steps=None, epochs=1e12), 5)]


@pytest.mark.parametrize("total", HUGE)
@pytest.mark.parametrize(
    "kind, kwargs, warmup",
    [("linear", {}, 0), ("cosine", {}, 10), ("constant_with_warmup", {}, 0), ("cosine_with_min_lr", {"min_lr_rate": 0.1}, 100), ("inverse_sqrt", {}, 0)],
)
def test_the_schedule_check_costs_nothing_per_step(monkeypatch, total, kind, kwargs, warmup):
    """And passes: cosine's last ~3.4e-9 of the run rounds to rate 0 in float64 (3,353 steps of
    10**12), which is not a clamp's lost tail. Counted, not timed: the schedule is evaluated on a
    bounded sample (optim._checked_steps), however long the run; before the fix, on every one
    of its 10**12 steps (hours and gigabytes)."""
    from kto.train import optim

    built, calls = optim._built, [0]

    def counting(*args, **kw):
        scheduler = built(*args, **kw)
        factor = scheduler.lr_lambdas[0]

        def counted(step):
            calls[0] += 1
            return factor(step)

        scheduler.lr_lambdas[0] = counted
        return scheduler

    monkeypatch.setattr(optim, "_built", counting)
    cfg = schedule_cfg(lr_schedule=kind, lr_schedule_kwargs=kwargs, warmup_steps=warmup)
    check_schedule(cfg, total)
    sample = 2 * optim._SPREAD + 5 * optim._EDGE + 8  # evenly spaced, golden, three edges, slack
    assert 0 < calls[0] <= sample


def test_a_huge_run_is_still_refused_for_what_its_schedule_does():
    """cosine_with_min_lr, min_lr_rate −1, over T steps: cos(π s/T) clamped at 0, so the second
    half, steps T/2 to T − 1, runs at rate 0 (as test_schedule_checks' 4-step run: steps 2 to 3).
    polynomial, lr_end −1e-6 = −lr: (1 − s/T)·2 − 1 is below 0 from step T/2 + 1 on."""
    total = 10**12
    cfg = schedule_cfg(lr_schedule="cosine_with_min_lr", lr_schedule_kwargs={"min_lr_rate": -1})
    with pytest.raises(InputError) as err:
        check_schedule(cfg, total)
    assert str(err.value).endswith(f"steps {total // 2} to {total - 1} ({total // 2} of the run's {total}) run at learning rate 0 and train nothing")
    with pytest.raises(InputError, match=f"step {total // 2 + 1} of the run's {total} would run at learning rate .*: a negative rate$"):
        check_schedule(schedule_cfg(lr_schedule="polynomial", lr_schedule_kwargs={"lr_end": -1e-6}), total)


@pytest.mark.parametrize(
    "kind, kwargs, warmup",
    [
        ("cosine_with_min_lr", {"min_lr_rate": -1}, 0),
        ("cosine_with_min_lr", {"min_lr_rate": -0.3}, 7),
        ("warmup_stable_decay", {"num_decay_steps": 10**6}, 0),
        ("polynomial", {"lr_end": -1e-6}, 3),
        ("polynomial", {"power": -1}, 0),
        ("linear", {}, 0),
        ("cosine", {"num_cycles": 1.0}, 5),
    ],
)
def test_the_sampled_check_says_what_the_step_by_step_one_says(monkeypatch, kind, kwargs, warmup):
    """Past optim.EVERY_STEP_UP_TO steps the factors are sampled; on a run just past it, the
    answer is the one checking every step gives."""
    from kto.train import optim

    total = optim.EVERY_STEP_UP_TO + 12345
    cfg = schedule_cfg(lr_schedule=kind, lr_schedule_kwargs=kwargs, warmup_steps=warmup)

    def answer():
        try:
            check_schedule(cfg, total)
        except InputError as exc:
            return str(exc)

    sampled = answer()
    monkeypatch.setattr(optim, "EVERY_STEP_UP_TO", total)
    assert sampled == answer()


@pytest.mark.slow
def test_a_run_of_10_12_steps_reaches_its_first_step_at_once_and_stops_on_sigint(tiny_cache, tiny_model_dir, tmp_path, monkeypatch):
    """kto-train --max-steps 10**12 reaches step 1 as a short run does; SIGINT after it stops
    with a checkpoint (the stop mechanism of train/stop.py). A timer bounds the start-up: a
    hang fails the test instead of hanging it."""
    import kto.train.loop as loop

    update, reached = loop.apply_update, []

    def then_interrupt(*args, **kwargs):
        update(*args, **kwargs)
        if not reached:
            reached.append(time.perf_counter())
            os.kill(os.getpid(), signal.SIGINT)

    def too_slow(*_):
        raise TimeoutError("no step within 120 s")

    monkeypatch.setattr(loop, "apply_update", then_interrupt)
    previous = signal.signal(signal.SIGALRM, too_slow)
    signal.alarm(120)
    try:
        start = time.perf_counter()
        result = run_train(tiny_cache, tiny_model_dir, tmp_path / "run", "--max-steps", str(10**12), "--batch-size", "2")
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    assert result.exit_code == 130, result.output[-3000:]
    assert f"stopped by SIGINT after step 1 of {10**12}: saved {tmp_path / 'run' / 'checkpoint-1'}" in result.output
    assert reached[0] - start < 60


def test_epochs_whose_step_count_is_past_floats_range_are_one_line():
    cfg = SimpleNamespace(max_steps=None, epochs=1e308)
    with pytest.raises(InputError) as err:
        planned_steps(cfg, 5)
    assert str(err.value) == "--epochs 1e+308: × 5 steps per epoch is past floating point's range (1.8e+308)"
    assert planned_steps(SimpleNamespace(max_steps=None, epochs=1e300), 5) > 10**300


def test_a_lora_rank_past_its_range_is_one_line_before_anything_is_written(tmp_path):
    for r in (2**63, 2**31):
        with pytest.raises(InputError) as err:
            TrainConfig(cache=tmp_path / "c", model="m", out=tmp_path / "o", lora_r=r)
        assert str(err.value) == f"--lora-r {r}: must be in [0, 2**31)"
    assert not (tmp_path / "o").exists()
    assert TrainConfig(cache=tmp_path / "c", model="m", out=tmp_path / "o", lora_r=2**31 - 1).lora_r == 2**31 - 1


def test_kto_train_refuses_a_huge_lora_rank_in_one_line(tiny_cache, tiny_model_dir, tmp_path):
    result = run_train(tiny_cache, tiny_model_dir, tmp_path / "run", "--max-steps", "1", "--lora-r", str(2**63))
    assert result.exit_code == 2
    assert train_error_line(result.output) == f"kto-train: error: --lora-r {2**63}: must be in [0, 2**31)"
    assert not (tmp_path / "run").exists()


def test_lora_settings_without_a_rank_are_refused_by_the_config_itself(tmp_path):
    """The API and --config files get the command line's check (train/cli.py); a resumed run's
    command repeats a file's values, which the run record then checks."""
    base = dict(cache=tmp_path / "c", model="m", out=tmp_path / "o")
    for name, value in (("lora_alpha", 1.5), ("lora_dropout", 0.1)):
        flag = "--" + name.replace("_", "-")
        with pytest.raises(InputError) as err:
            TrainConfig(**base, **{name: value})
        assert str(err.value) == f"{flag}: needs --lora-r R > 0 (without it every weight is trained)"
        assert getattr(TrainConfig(**base, **{name: value}, resume=True), name) == value
        assert getattr(TrainConfig(**base, **{name: value}, lora_r=4), name) == value
    assert not (tmp_path / "o").exists()


def test_a_rank_above_a_targets_width_is_warned_of_in_one_line(tiny_model_dir, capsys):
    """TINY_LLAMA: k_proj and v_proj map 32 → 16 (2 KV heads of 8): a rank above 16 adds
    parameters but not rank there (peft allows it). A warning, not a refusal."""
    from kto.formats.compute.meta_device import model_skeleton
    from kto.formats.compute.sources import resolve_source
    from kto.train.adapters import check_model

    skeleton = model_skeleton(resolve_source(str(tiny_model_dir)))
    cfg = TrainConfig(cache=tiny_model_dir, model=str(tiny_model_dir), out=tiny_model_dir / "x", lora_r=17)
    check_model(cfg, skeleton)
    lines = capsys.readouterr().err.splitlines()
    assert lines == [
        "kto-train: warning: --lora-r 17 is above the width of k_proj, v_proj (32 in, 16 out): a LoRA update there has rank at most 16; "
        "a larger rank adds parameters, not rank"
    ]
    check_model(TrainConfig(cache=tiny_model_dir, model=str(tiny_model_dir), out=tiny_model_dir / "x", lora_r=16), skeleton)
    assert capsys.readouterr().err == ""


def test_a_periodic_schedule_cannot_hide_between_evenly_spaced_samples():
    """warmup_stable_decay with 10,000 cycles and min_lr_ratio 1.9 over 10**12 steps: each cycle
    is 10**8 steps, the spacing of the even samples, so every one of them landed on a peak at
    rate 1 and the run was accepted, half its steps at 1.9 × --lr (a reviewer's case). Samples
    at the golden ratio's multiples do not line up with any period."""
    total = 10**12
    kwargs = {"num_decay_steps": total, "num_cycles": 10_000, "min_lr_ratio": 1.9}
    with pytest.raises(InputError, match=r"above --lr$"):
        check_schedule(schedule_cfg(lr_schedule="warmup_stable_decay", lr_schedule_kwargs=kwargs), total)


def test_a_weight_decay_that_erases_the_weights_is_refused():
    """--lr 1 --weight-decay 1 (or the fuzz's --weight-decay 2**63) multiplied every weight by
    1 − lr·wd ≤ 0 at each step; the run exited 0 with weights of 9.5e11 in final/."""
    from kto.train.config import TrainConfig

    with pytest.raises(InputError, match=r"^--weight-decay 1\.0 with --lr 1\.0: AdamW multiplies every weight by 1 − lr × weight_decay = 0 "):
        TrainConfig(cache="c", model="m", out="o", lr=1.0, weight_decay=1.0)
    assert TrainConfig(cache="c", model="m", out="o", lr=1e-5, weight_decay=0.1).weight_decay == 0.1
