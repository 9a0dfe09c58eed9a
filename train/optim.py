"""AdamW and the learning-rate schedule: transformers' `get_scheduler`, any kind it knows that
steps without a metric, so a TRL or LLaMA-Factory `lr_scheduler_type` means the same here.

Warmup: `--warmup-steps N` when N > 0, else ⌊warmup_ratio × total⌋ steps. transformers rounds
the ratio up instead; rounding down keeps the runs made before the move to get_scheduler (our
own formulas) bit-identical where no warmup step was taken (docs/design.md, "Where our metrics
differ from TRL's").
"""

from __future__ import annotations

import math

import torch

from kto.formats.errors import InputError

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


def warmup_note(cfg: TrainConfig, total_steps: int) -> str | None:
    """The line saying how many warmup steps the ratio gives here and in transformers, where the
    two differ (0.1 of 6 steps: none here, 1 there); None when --warmup-steps decides or they agree.
    The rounding itself stays: a resumed run's schedule depends on it."""
    if cfg.warmup_steps > 0 or not cfg.warmup_ratio:
        return None
    here, there = warmup_steps(cfg, total_steps), math.ceil(total_steps * cfg.warmup_ratio)  # transformers' get_warmup_steps
    if here == there:
        return None
    return (
        f"warmup: {here} step{'s' if here != 1 else ''} (⌊warmup_ratio {cfg.warmup_ratio} × {total_steps} steps⌋); transformers, hence TRL "
        f"and LLaMA-Factory, rounds up to {there}: give --warmup-steps {there} (warmup_steps in a --config file) to warm up as they do"
    )


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig, total_steps: int) -> torch.optim.lr_scheduler.LRScheduler:
    """transformers' scheduler of kind cfg.lr_schedule; its own error, on one line, for kwargs
    it does not take or needs (cosine_with_min_lr needs min_lr or min_lr_rate)."""
    get_scheduler = _get_scheduler()
    try:
        return get_scheduler(
            cfg.lr_schedule,
            optimizer,
            num_warmup_steps=warmup_steps(cfg, total_steps),
            num_training_steps=total_steps,
            scheduler_specific_kwargs=dict(cfg.lr_schedule_kwargs),
        )
    except (TypeError, ValueError, AssertionError) as exc:
        detail = " ".join(str(exc).split())
        raise InputError(f"--lr-schedule {cfg.lr_schedule} --lr-schedule-kwargs {dict(cfg.lr_schedule_kwargs)}: {detail}") from None


# Kinds that need a kwarg (min_lr or min_lr_rate) or whose kwargs are checked only when built.
_NEEDS_KWARGS = ("cosine_with_min_lr", "cosine_warmup_with_min_lr")


def check_schedule(cfg: TrainConfig) -> None:
    """Build the schedule once on a throwaway parameter when it has kwargs to check, so that bad
    ones are refused at start-up, before the model loads (the import costs seconds: not always)."""
    if cfg.lr_schedule_kwargs or cfg.lr_schedule in _NEEDS_KWARGS:
        build_scheduler(torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=cfg.lr), cfg, 10)


def _get_scheduler():
    """transformers.get_scheduler. Its module imports peft, hence bitsandbytes, whose CPU backend
    logs a warning about an optional kernel package at import: noise for a schedule, held back."""
    from kto.formats.compute.adapters import quiet_bitsandbytes

    with quiet_bitsandbytes():
        from transformers.optimization import get_scheduler
    return get_scheduler
