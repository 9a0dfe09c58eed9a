"""One optimizer step: KL pass, forward/backward per micro-batch, one cross-rank reduction.

Loss reduction (the same whatever the split into ranks × accumulation × batch):

    L = Σ_{rows in step, all ranks} w·ℓ_kto(row) / N_step  +  γ · Σ_{desirable tokens} NLL / T_D

N_step counts the step's real rows on every rank; T_D its desirable completion tokens (the SFT
term is 0 when there are none). Each process backpropagates its local part of that sum,
multiplied by the world size, because DDP *averages* gradients over ranks and we want their sum.
We never use accelerate's own accumulation (Accelerator(gradient_accumulation_steps=1)), so
nothing divides by the number of micro-batches behind our back.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable, TypeVar

import torch

from kto.formats.errors import InputError
from kto.formats.logprob import sequence_sums

from .data import KTOBatch
from .loss import KLEstimate, KTOLossOutput, LossType, kl_estimate, kto_loss

T = TypeVar("T")

# The per-step statistics, summed over micro-batches and then over ranks in one all-reduce.
STAT_FIELDS = (
    "examples", "loss_sum", "desirable", "undesirable", "reward_d_sum", "reward_u_sum",
    "logp_d_sum", "logp_u_sum", "sft_nll_sum", "sft_tokens", "tokens", "kl_raw_sum", "kl_sum", "kl_scopes",
)


@dataclass(frozen=True)
class LossSettings:
    beta: float
    desirable_weight: float
    undesirable_weight: float
    loss_type: LossType
    sft_weight: float
    kl_scope: str  # "step" | "microbatch"


def all_reduce_sum(values: torch.Tensor, accelerator) -> torch.Tensor:
    """THE cross-rank reduction of this package: every global count and sum goes through here."""
    if accelerator.num_processes == 1:
        return values
    return accelerator.reduce(values, reduction="sum")


def all_reduce_max(value: float, accelerator) -> float:
    """The largest `value` over ranks, so that a decision taken on it is the same everywhere."""
    if accelerator.num_processes == 1:
        return value
    return float(accelerator.gather(torch.tensor([value], device=accelerator.device)).max())


def on_main(fn: Callable[[], T], accelerator) -> T:
    """Run `fn` on the main process only and hand its result, or its InputError, to every rank,
    so that all ranks go on together or all stop with the same line (a rank that stopped alone
    would leave the others waiting in the next collective). The other ranks wait here meanwhile."""
    if accelerator.num_processes == 1:
        return fn()
    from accelerate.utils import broadcast_object_list

    box = [None, None]
    if accelerator.is_main_process:
        try:
            box[0] = fn()
        except InputError as exc:
            box[1] = str(exc)
    broadcast_object_list(box, from_process=0)
    if box[1] is not None:
        raise InputError(box[1])
    return box[0]


def kl_local_sums(model, batches: list[KTOBatch]) -> tuple[torch.Tensor, torch.Tensor]:
    """Σ over valid rows of (log πθ(y'|x) − log πref(y'|x)), and the row count, under no_grad."""
    total = torch.zeros((), dtype=torch.float64, device=batches[0].ref_kl_logp.device)
    count = torch.zeros((), dtype=torch.float64, device=total.device)
    with torch.no_grad():
        for b in batches:
            flat = model(b.kl.input_ids, b.kl.score_mask)
            diff = sequence_sums(flat, b.kl.score_mask) - b.ref_kl_logp
            total += (diff * b.valid).sum()
            count += b.valid.sum()
    return total, count


def kl_reference_point(model, batches: list[KTOBatch], accelerator) -> KLEstimate:
    total, count = kl_local_sums(model, batches)
    reduced = all_reduce_sum(torch.stack([total, count]), accelerator)
    return kl_estimate(reduced[0], reduced[1])


def desirable_token_mask(b: KTOBatch) -> torch.Tensor:
    """[N] flat mask over scored tokens: True where the row is valid and desirable."""
    keep = (b.valid & b.desirable)[:, None].expand_as(b.policy.score_mask)
    return keep[b.policy.score_mask]


@dataclass(frozen=True)
class PolicyPass:
    """One micro-batch through the policy: flat token log-probs [N], sequence sums [B] (float64),
    per-example losses, and the NLL summed over valid desirable completion tokens."""

    flat: torch.Tensor
    logps: torch.Tensor
    out: KTOLossOutput
    nll_sum: torch.Tensor


def policy_pass(model, b: KTOBatch, s: LossSettings, z: KLEstimate | None) -> PolicyPass:
    """The policy forward and the loss maths, shared by training (with grad) and evaluation."""
    flat = model(b.policy.input_ids, b.policy.score_mask)
    logps = sequence_sums(flat, b.policy.score_mask)
    out = kto_loss(
        logps, b.ref_logp, b.desirable, z.clamped if z is not None else 0.0, beta=s.beta,
        desirable_weight=s.desirable_weight, undesirable_weight=s.undesirable_weight, loss_type=s.loss_type,
    )
    return PolicyPass(flat, logps, out, -(flat.double() * desirable_token_mask(b)).sum())


def forward_backward(model, batches: list[KTOBatch], s: LossSettings, accelerator) -> torch.Tensor:
    """Accumulate this process's gradients for one step; return the local STAT_FIELDS vector."""
    device = batches[0].ref_logp.device
    local = torch.stack([
        sum(b.valid.sum() for b in batches).double(),
        sum(desirable_token_mask(b).sum() for b in batches).double(),
    ])
    n_step, t_desirable = all_reduce_sum(local, accelerator).tolist()
    stats = torch.zeros(len(STAT_FIELDS), dtype=torch.float64, device=device)
    z = None
    if s.loss_type.needs_kl and s.kl_scope == "step":
        z = kl_reference_point(model, batches, accelerator)
    for i, b in enumerate(batches):
        if s.loss_type.needs_kl and s.kl_scope == "microbatch":
            z = kl_reference_point(model, [b], accelerator)
        last = i == len(batches) - 1
        sync = contextlib.nullcontext() if last else accelerator.no_sync(model)
        with sync:
            p = policy_pass(model, b, s, z)
            kto_part = (p.out.losses * b.valid).sum() / max(n_step, 1.0)
            sft_part = p.nll_sum / t_desirable if t_desirable > 0 else p.nll_sum * 0
            loss = kto_part + s.sft_weight * sft_part if s.sft_weight else kto_part
            accelerator.backward(loss * accelerator.num_processes)
        stats += batch_stats(b, p.out, p.logps.detach(), p.nll_sum.detach(), z, first=(i == 0 or s.kl_scope == "microbatch"))
    return stats


def batch_stats(b: KTOBatch, out, logps, nll_sum, z: KLEstimate | None, first: bool) -> torch.Tensor:
    d, u = b.valid & b.desirable, b.valid & ~b.desirable
    zero = torch.zeros((), dtype=torch.float64, device=logps.device)
    kl_raw = z.raw if (z is not None and first) else zero
    kl = z.clamped if (z is not None and first) else zero
    return torch.stack([
        b.valid.sum().double(),
        (out.losses.detach() * b.valid).sum(),
        d.sum().double(), u.sum().double(),
        (out.rewards * d).sum(), (out.rewards * u).sum(),
        (logps * d).sum(), (logps * u).sum(),
        nll_sum, (b.policy.score_mask & d[:, None]).sum().double(),
        ((b.policy.attention_mask.sum(1) + b.kl.attention_mask.sum(1)) * b.valid).sum().double(),
        kl_raw, kl, torch.tensor(float(first and z is not None), dtype=torch.float64, device=logps.device),
    ])


def clip_gradients(model, accelerator, max_grad_norm: float) -> torch.Tensor:
    """Clip (or just measure) the global gradient norm; the same value on every rank."""
    return accelerator.clip_grad_norm_(model.parameters(), max_grad_norm if max_grad_norm > 0 else float("inf"))


def apply_update(optimizer, scheduler) -> None:
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)


def optimizer_step(model, optimizer, scheduler, accelerator, max_grad_norm: float) -> float:
    """Clip, step, and clear the gradients (no finite-value check: the loop does that in between)."""
    norm = clip_gradients(model, accelerator, max_grad_norm)
    apply_update(optimizer, scheduler)
    return float(norm)


def summarize(stats: torch.Tensor) -> dict[str, float]:
    """Turn all-reduced STAT_FIELDS sums (possibly over several steps) into logged metrics.

    Names follow TRL (`rewards/chosen` = desirable, `rewards/rejected` = undesirable) so that
    dashboards compare side by side.
    """
    v = dict(zip(STAT_FIELDS, stats.tolist()))
    nan = float("nan")
    # A class absent from the window has no mean: NaN (written as null), never a fake 0.
    div = lambda a, b: a / b if b else nan  # noqa: E731
    chosen, rejected = div(v["reward_d_sum"], v["desirable"]), div(v["reward_u_sum"], v["undesirable"])
    out = {
        "loss": div(v["loss_sum"], v["examples"]),
        # No KL pass (apo_zero_unpaired) means z = 0 was used, so 0 is the true value here.
        "kl": v["kl_sum"] / v["kl_scopes"] if v["kl_scopes"] else 0.0,
        "kl_raw": v["kl_raw_sum"] / v["kl_scopes"] if v["kl_scopes"] else 0.0,
        "sft_loss": div(v["sft_nll_sum"], v["sft_tokens"]),
        "rewards/chosen": chosen,
        "rewards/rejected": rejected,
        "rewards/margins": chosen - rejected,
        "logps/chosen": div(v["logp_d_sum"], v["desirable"]),
        "logps/rejected": div(v["logp_u_sum"], v["undesirable"]),
        "count/chosen": v["desirable"],
        "count/rejected": v["undesirable"],
        "tokens": v["tokens"],
    }
    return out
