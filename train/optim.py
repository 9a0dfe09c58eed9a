"""AdamW and the learning-rate schedule: transformers' `get_scheduler`, any kind it knows that
steps without a metric, so a TRL or LLaMA-Factory `lr_scheduler_type` means the same here.

Warmup: `--warmup-steps N` when N > 0, else ⌊warmup_ratio × total⌋ steps. transformers rounds
the ratio up instead; rounding down keeps the runs made before the move to get_scheduler (our
own formulas) bit-identical where no warmup step was taken (docs/design.md, "Where our metrics
differ from TRL's").
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable

import torch

from kto.formats.errors import InputError, exception_line

from .config import TrainConfig


def build_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    # No weight decay on biases and norm weights (1-D tensors), as is usual for transformers.
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    # Fused AdamW on CUDA (what HF's Trainer, hence TRL, uses): one kernel for the whole update.
    betas = (cfg.adam_beta1, cfg.adam_beta2)
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=betas, eps=cfg.adam_epsilon, fused=torch.cuda.is_available())


def warmup_steps(cfg: TrainConfig, total_steps: int) -> int:
    """--warmup-steps when set (as transformers: it wins over the ratio), else ⌊ratio × total⌋."""
    return cfg.warmup_steps if cfg.warmup_steps > 0 else int(cfg.warmup_ratio * total_steps)


def takes_warmup(lr_schedule: str) -> bool:
    """Whether transformers' get_scheduler gives `lr_schedule` its num_warmup_steps: all but
    constant (get_constant_schedule takes none; the former `constant` is constant_with_warmup).
    The one rule of warmup_note and reaches_lr, so the two cannot disagree."""
    return lr_schedule != "constant"


def warmup_note(cfg: TrainConfig, total_steps: int) -> str | None:
    """The line saying how many warmup steps the ratio gives here and in transformers, where the
    two differ (0.1 of 6 steps: none here, 1 there); with --warmup-steps, a warning where the
    warmup outlasts the run; else None, and always None for a schedule that takes no warmup
    (constant). The rounding itself stays: a resumed run's schedule depends on it."""
    if not takes_warmup(cfg.lr_schedule):
        return None
    if cfg.warmup_steps > 0:
        return _warmup_outlasts(cfg, total_steps)
    if not cfg.warmup_ratio:
        return None
    here, there = warmup_steps(cfg, total_steps), math.ceil(total_steps * cfg.warmup_ratio)  # transformers' get_warmup_steps
    if here == there:
        return None
    return (
        f"warmup: {here} step{'s' if here != 1 else ''} (⌊warmup_ratio {cfg.warmup_ratio} × {total_steps} step{'s' if total_steps != 1 else ''}⌋); transformers, hence TRL "
        f"and LLaMA-Factory, rounds up to {there}: give --warmup-steps {there} (warmup_steps in a --config file) to warm up as they do"
    )


def reaches_lr(lr_schedule: str, warmup: int, total_steps: int) -> bool:
    """Whether a run of `total_steps` with `warmup` warmup steps trains at --lr by its last step:
    transformers' warmup (s/W) reaches it on step W, cosine_warmup_with_min_lr's ((s + 1)/W) on
    step W − 1, and constant takes no warmup (takes_warmup)."""
    if not takes_warmup(lr_schedule):
        return True
    return warmup <= total_steps if lr_schedule == "cosine_warmup_with_min_lr" else warmup < total_steps


def _warmup_outlasts(cfg: TrainConfig, total_steps: int) -> str | None:
    """A warning where --warmup-steps W ≥ the total T: transformers' warmup (s/W) is still rising
    on the last step, so the run never trains at --lr. Only --warmup-steps can: ⌊ratio × T⌋ < T.
    A run at rate 0 throughout (T = W = 1) is refused before this, by the schedule check."""
    if reaches_lr(cfg.lr_schedule, cfg.warmup_steps, total_steps):
        return None
    return (
        f"warning: --warmup-steps {cfg.warmup_steps} ≥ the run's {total_steps} steps: the learning rate is still warming up when the run ends "
        f"and never reaches --lr {cfg.lr:g}; give --warmup-steps below {total_steps} (warmup_steps in a --config file)"
    )


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig, total_steps: int) -> torch.optim.lr_scheduler.LRScheduler:
    """transformers' scheduler of kind cfg.lr_schedule over `total_steps`, the run's own; its
    own error, on one line, for kwargs it does not take or needs (cosine_with_min_lr needs min_lr
    or min_lr_rate). Whether the run can follow it was checked at start-up (`check_schedule`)."""
    return _built(optimizer, cfg, total_steps)


def _built(optimizer: torch.optim.Optimizer, cfg: TrainConfig, total_steps: int, real: bool = True) -> torch.optim.lr_scheduler.LRScheduler:
    """get_scheduler's scheduler; any error it raises as one line. transformers evaluates step 0
    as it builds, so arithmetic errors come from here too (inverse_sqrt's timescale 0). `real`:
    total_steps is the run's (else made up, and not said)."""
    get_scheduler = _get_scheduler()
    try:
        return get_scheduler(
            cfg.lr_schedule,
            optimizer,
            num_warmup_steps=warmup_steps(cfg, total_steps),
            num_training_steps=total_steps,
            scheduler_specific_kwargs=dict(cfg.lr_schedule_kwargs),
        )
    except (TypeError, ValueError, AssertionError) as exc:  # its own refusals: the message says it all
        raise InputError(f"{_given(cfg)}: {' '.join(str(exc).split())}") from None
    except Exception as exc:  # anything else (ZeroDivisionError) is a kwarg it took but cannot follow
        of_run = f" of the run's {total_steps}" if real else ""
        raise InputError(f"{_given(cfg)}: step 0{of_run} raises {exception_line(exc)}") from None


def _given(cfg: TrainConfig) -> str:
    """The flags as the user gives them: kwargs as JSON, which --lr-schedule-kwargs reads."""
    return f"--lr-schedule {cfg.lr_schedule} --lr-schedule-kwargs {json.dumps(dict(cfg.lr_schedule_kwargs), default=str)}"


# How far above 1 a factor may be and still be the peak of 1: polynomial's peak is
# ((lr − lr_end) + lr_end)/lr, 1.0000000000000002 for lr 0.007, lr_end 0.0005.
_ROUNDING = 1e-9
# Kinds whose factor on the first step after warmup is not 1 by design: cosine_warmup_with_min_lr
# reaches 1 on the last warmup step ((s + 1)/W) and is already decaying on the next.
_PEAK_IN_WARMUP = ("cosine_warmup_with_min_lr",)
# A tail at rate 0 shorter than this share of the run is float64 rounding of a decay to 0, not a
# clamp (below 1 step on runs under 10**8 steps: those are checked as before).
_ROUNDED_TAIL = 1e-8


# Past this many steps the factors are sampled (`_checked_steps`): evaluating every step of a
# run of 10**12 steps took hours and gigabytes before the run could start (a fuzz's hang).
EVERY_STEP_UP_TO = 100_000
_EDGE = 1_000  # steps checked at each end of the run and on each side of the warmup's end
_SPREAD = 10_000  # evenly spaced steps checked between them, and as many spread by _GOLDEN
_GOLDEN = (5**0.5 - 1) / 2


def _checked_steps(total: int, warmup: int) -> list[int]:
    """Every step 0..T when T ≤ EVERY_STEP_UP_TO; past that, a sample: the first and last _EDGE
    steps, _EDGE on each side of the warmup's end, _SPREAD evenly spaced and _SPREAD more at the
    golden ratio's multiples. transformers'
    schedules are closed forms, smooth between those boundaries: what goes wrong (a raise, a
    factor out of [0, 1], a clamp to 0) does so at a boundary or over a stretch the sample hits."""
    if total <= EVERY_STEP_UP_TO:
        return list(range(total + 1))
    picked = {*range(_EDGE), *range(warmup - _EDGE, warmup + _EDGE), *range(total - _EDGE, total + 1)}
    picked.update(i * total // _SPREAD for i in range(_SPREAD + 1))
    # And as many at the golden ratio's multiples (mod 1): a periodic schedule whose period is
    # the even spacing (cycles of total/_SPREAD steps) put every even sample on a peak.
    picked.update(int(((i * _GOLDEN) % 1.0) * total) for i in range(1, _SPREAD + 1))
    return sorted(s for s in picked if 0 <= s <= total)


def schedule_refusal(cfg: TrainConfig, factor: Callable[[int], float], total_steps: int) -> str | None:
    """Why the run could not follow a schedule whose rate on step s is factor(s) × --lr, as one
    line; None when it can. factor is the scheduler's own lambda, evaluated on the steps the run's
    scheduler will evaluate (`_checked_steps`: all of them on a run of up to EVERY_STEP_UP_TO):
    0..T − 1, and T, where scheduler.step() after the last update lands.

    Refused: a step that raises (on step T too: it would end the run before final/ is saved), a
    factor not finite, below 0 or above 1 (a rate above --lr); every step at rate 0 (nothing
    trains: a warmup over the whole run); the first step after warmup below 1 (the schedule
    never reaches --lr: warmup_stable_decay's num_decay_steps beyond the run); the last steps
    at rate 0 (transformers clamps a factor below 0 to 0: cosine_with_min_lr's min_lr_rate −1)."""
    factors: dict[int, float] = {}
    previous = -1
    for step in _checked_steps(total_steps, warmup_steps(cfg, total_steps)):
        why, f = _step_refusal(cfg, factor, step, total_steps)
        if why:
            # Sampled, the first step refused lies after the last step checked: found by
            # bisection, so the line names the step that checking every one would name.
            while step - previous > 1:
                mid = (previous + step) // 2
                previous, step = (previous, mid) if _step_refusal(cfg, factor, mid, total_steps)[0] else (mid, step)
            return _step_refusal(cfg, factor, step, total_steps)[0]
        if step < total_steps:  # no update runs at step T's rate: only its raising matters
            factors[step] = f
        previous = step
    return _shape_refusal(cfg, factor, factors, total_steps)


def _step_refusal(cfg: TrainConfig, factor: Callable[[int], float], step: int, total_steps: int) -> tuple[str | None, float]:
    """Why step `step`'s factor is refused (`schedule_refusal`), or None; and the factor."""
    try:
        f = float(factor(step))
    except Exception as exc:  # whatever the lambda raises, the run's scheduler.step() would
        after = " (the scheduler's step after the last update)" if step == total_steps else ""
        # polynomial divides by T − W: a warmup over the whole run is the cause, not the kwargs.
        warmup = warmup_steps(cfg, total_steps)
        hint = f"; --warmup-steps {warmup} ≥ the run's {total_steps} steps: give fewer" if warmup >= total_steps else ""
        return f"{_given(cfg)}: step {step}{after} of the run's {total_steps} raises {exception_line(exc)}{hint}", math.nan
    if step == total_steps:
        return None, f
    problem = "not a finite number" if not math.isfinite(f) else "a negative rate" if f < 0 else "above --lr" if f > 1 + _ROUNDING else None
    if problem:
        return f"{_given(cfg)}: step {step} of the run's {total_steps} would run at learning rate {f * cfg.lr:g} ({f:g} × --lr {cfg.lr:g}): {problem}", f
    return None, f


def _shape_refusal(cfg: TrainConfig, factor: Callable[[int], float], factors: dict[int, float], total: int) -> str | None:
    """`schedule_refusal`'s checks on the run's factors (step: factor, each within [0, 1])."""
    warmup = warmup_steps(cfg, total)
    if factors and not any(factors.values()):
        # As loss_is_identically_zero (train/checks.py): a run that trains nothing saves --model as final/.
        why = (
            f" (--warmup-steps {warmup} ≥ the run's {total} steps, and transformers' warmup starts at rate 0)"
            if warmup >= total and cfg.lr_schedule != "constant"
            else f" ({_given(cfg)})"
        )
        return (
            f"every step of the run ({total}) runs at learning rate 0{why}: nothing would train and final/ would be --model unchanged; "
            f"give --warmup-steps below {total} (or a smaller --warmup-ratio), or more steps"
        )
    if warmup < total and cfg.lr_schedule not in _PEAK_IN_WARMUP and factors[warmup] < 1 - _ROUNDING:
        return f"{_given(cfg)}: step {warmup}, the first after warmup, runs at {factors[warmup]:.3g} × --lr {cfg.lr:g}: the schedule never reaches --lr over the run's {total} steps"
    if warmup < total and factors[total - 1] == 0:
        # Exactly 0: a clamp's. A decay to 0 ends above it (linear: 1/(T − W) on the last step),
        # and a single 0 mid-run (cosine with num_cycles 1) is a choice, not a lost tail. But
        # cosine's ½(1 + cos(π·(1 − x))) rounds to 0 in float64 for x below ~3.4e-9: a run of
        # 10**12 steps ends with 3,353 such steps, rounding and not a clamp.
        first = _zero_tail_start(factor, factors, warmup)
        n = total - first
        if n < total * _ROUNDED_TAIL:
            return None
        steps = f"step {first} (1" if n == 1 else f"steps {first} to {total - 1} ({n}"
        return f"{_given(cfg)}: {steps} of the run's {total}) run{'s' if n == 1 else ''} at learning rate 0 and train nothing"
    return None


def _zero_tail_start(factor: Callable[[int], float], factors: dict[int, float], warmup: int) -> int:
    """The first step of the run's last stretch at rate 0: after the last checked step that is
    in warmup or above 0, found between it and the next checked step by bisection (a clamp's
    tail, once 0, stays 0; with every step checked, the two are neighbours)."""
    checked = sorted(factors)
    i = next(i for i in range(len(checked) - 1, -1, -1) if checked[i] < warmup or factors[checked[i]] != 0)
    above, zero = checked[i], checked[i + 1]
    while zero - above > 1:
        mid = (above + zero) // 2
        if mid >= warmup and float(factor(mid)) == 0:
            zero = mid
        else:
            above = mid
    return zero


def check_schedule(cfg: TrainConfig, total_steps: int | None = None) -> None:
    """Refuse a schedule the run could not follow at start-up, before the model loads, building
    it on a throwaway parameter: with the run's `total_steps`, `schedule_refusal`'s checks, which
    only the real total makes right (warmup ⌊ratio × T⌋, the last step, the decay's length). Without it (a caller that has not planned the steps yet), only the kwargs
    get_scheduler refuses, on a made-up 10 steps, and only where there are kwargs to check."""
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=cfg.lr)
    if total_steps is not None:
        lambdas = getattr(_built(optimizer, cfg, total_steps), "lr_lambdas", None)  # None: a kind that steps on a metric (refused by TrainConfig)
        why = schedule_refusal(cfg, lambdas[0], total_steps) if lambdas else None
        if why:
            raise InputError(why)
    elif cfg.lr_schedule_kwargs or cfg.lr_schedule in _NEEDS_KWARGS:
        _built(optimizer, cfg, 10, real=False)


# Kinds that need a kwarg (min_lr or min_lr_rate) or whose kwargs are checked only when built.
_NEEDS_KWARGS = ("cosine_with_min_lr", "cosine_warmup_with_min_lr")


def _get_scheduler():
    """transformers.get_scheduler. Its module imports peft, hence bitsandbytes, whose CPU backend
    logs a warning about an optional kernel package at import: noise for a schedule, held back."""
    from kto.formats.compute.adapters import quiet_bitsandbytes

    with quiet_bitsandbytes():
        from transformers.optimization import get_scheduler
    return get_scheduler
