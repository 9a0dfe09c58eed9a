"""One optimizer step: KL pass, forward/backward per micro-batch, one cross-rank reduction.

Loss reduction (the same whatever the split into ranks × accumulation × batch):

    L = Σ_{rows in step, all ranks} w·ℓ_kto(row) / N_step  +  γ · Σ_{desirable tokens} NLL / T_D

N_step counts the step's real rows on every rank; T_D its desirable completion tokens (the SFT
term is 0 when there are none). Each process backpropagates its local part of that sum,
multiplied by the world size, because DDP *averages* gradients over ranks and we want their sum.
We never use accelerate's own accumulation (Accelerator(gradient_accumulation_steps=1)), so
nothing divides by the number of micro-batches behind our back.

Collectives per optimizer step with several processes (none with one):
- 1 all-reduce before the first micro-batch of [Σ KL differences, real rows, desirable tokens]:
  the KL pairs are the step's real rows, so z and the loss normalisers share it. With
  `--kl-scope microbatch` there is one per micro-batch (the first also carries the step's
  counts); with `apo_zero_unpaired` (no KL pass) it carries the counts alone;
- DDP's gradient all-reduce, bucketed, in the last micro-batch's backward (the others run under
  no_sync); gradient clipping then needs none (the gradients are the same on every rank);
- 1 all-reduce of the stacked `StepStats` after the backward and before the update (kto-train's
  loop; the finite-value guard reads the reduced losses);
- at step 0 only, when --model is the reference: 1 all-reduce (max) of the step-0 drift.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

import torch
from torch.nn.utils.rnn import pad_sequence

from kto.formats.compute.logprob import TokenBatch, sequence_sums
from kto.formats.compute.shared_prefix import plan_packs

from .data import KTOMicroBatch
from .loss import KLEstimate, KTOLossOutput, LossType, kl_estimate, kto_loss
from .packing import PassTokens, completion_logps, plain_tokens, split_sequences

if TYPE_CHECKING:
    from collections.abc import Callable

    from accelerate import Accelerator


# The KL pass: Σ (log πθ(y'|x) − log πref(y'|x)) over a process's rows, no gradient; the step
# reduces its result across ranks itself (`kl_and_counts`, the one all-reduce).
#
# On an accelerator the step never waits for the device before the step's end: it plans from
# the micro-batches' CPU copies (KTOMicroBatch.host), keeps the counts it needs as device
# tensors, and copies host values over with `to_device`.


def to_device(x: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """Copy a CPU tensor to `device` without waiting for the device's queued kernels (a
    blocking copy would: torch synchronizes the stream after it). Safe from pageable memory: the
    driver stages the bytes before the call returns."""
    return x.to(device, non_blocking=True)


@dataclass(frozen=True)
class KLSums:
    """One process's KL pass: Σ (log πθ(y'|x) − log πref(y'|x)) over its valid rows, their count,
    the real and padded token slots the pass ran (for the padding metric) and the tokens prefix
    sharing saved."""

    total: torch.Tensor
    count: torch.Tensor
    real_tokens: int
    padded_tokens: int
    saved_tokens: int = 0


def kl_sequences(batches: list[KTOMicroBatch]) -> tuple[list[torch.Tensor], list[torch.Tensor], torch.Tensor]:
    """The valid rows' KL sequences, unpadded, from the batches' CPU copies: ids [L] and score
    masks [L]; and their ref_kl_logp [n], where the batches lie."""
    ids, masks, refs = [], [], []
    for b in batches:
        h = b.on_host
        lengths = h.kl.attention_mask.sum(1).tolist()
        rows = torch.nonzero(h.valid).flatten()
        for r in rows.tolist():
            ids.append(h.kl.input_ids[r, : lengths[r]])
            masks.append(h.kl.score_mask[r, : lengths[r]])
        refs.append(b.ref_kl_logp.index_select(0, to_device(rows, b.ref_kl_logp.device)))
    return ids, masks, torch.cat(refs)


def kl_groups(lengths: list[int], k: int) -> list[list[int]]:
    """Indices sorted by (length, index) and cut into `k` contiguous groups of near-equal size
    (some empty when there are fewer than k sequences)."""
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    bounds = [round(j * len(order) / k) for j in range(k + 1)]
    return [order[bounds[j] : bounds[j + 1]] for j in range(k)]


def kl_local_sums(model: torch.nn.Module, batches: list[KTOMicroBatch], share: bool = False) -> KLSums:
    """Σ over valid rows of (log πθ(y'|x) − log πref(y'|x)), and the row count, under no_grad.

    The KL sequences only feed one sum, so they are not run in the micro-batches they came in
    (grouped by the *main* sequence's length, while a KL sequence carries another row's
    completion): all of this process's KL sequences are sorted by their own length and cut into
    as many batches as there are micro-batches, of near-equal row counts (so no batch holds more
    rows than a micro-batch: the memory bound of the old per-micro-batch pass). Filler rows are
    not run. Every process therefore runs the same number of forwards without talking (the
    plan gives every rank as many micro-batches): DDP syncs buffers in its first forward after a
    backward, and sharded weights are gathered in every forward, so unequal counts would hang.
    A batch left empty (fewer real rows than micro-batches) runs one sequence and discards it.

    With `share`, the step's KL sequences that share a prompt (rows of a paired set, a repeated
    system prompt) are first planned into packs as kto-precompute plans them (train/packing.py);
    the units sorted and cut are then the packs and the sequences left alone, and a batch with a
    pack in it runs packed (the sum is the plain one to fp32 rounding).
    """
    ids, masks, ref = kl_sequences(batches)
    units = kl_units(ids, masks) if share else [[i] for i in range(len(ids))]
    total = torch.zeros((), dtype=torch.float64, device=batches[0].ref_kl_logp.device)
    real = padded = saved = 0
    with torch.no_grad():
        for group in kl_groups([sum(len(ids[i]) for i in u) for u in units], len(batches)):
            members = [i for u in group for i in units[u]]
            if not members:
                b = batches[0].kl  # keeps the forward count equal on every rank; result discarded
                model(b.input_ids[:1], b.score_mask[:1])
                continue
            sums, tokens = kl_group_sums(model, [ids[i] for i in members], [masks[i] for i in members], share, total.device)
            total += (sums - ref.index_select(0, to_device(torch.tensor(members), ref.device))).sum()
            real, padded, saved = real + tokens.real, padded + tokens.slots, saved + tokens.saved
    count = to_device(torch.tensor(float(len(ids)), dtype=torch.float64), total.device)
    return KLSums(total, count, real, padded, saved)


def kl_units(ids: list[torch.Tensor], masks: list[torch.Tensor]) -> list[list[int]]:
    """The KL sequences in units that one batch runs together: a pack's members, or one sequence.
    Sorting by a pack's summed length keeps it whole and ranks it by the tokens it holds."""
    if not ids:  # only filler rows here (a short last step, a rank with no real rows)
        return []
    batch = pad_sequence(ids, batch_first=True)
    prompts, completions = split_sequences(batch, pad_sequence(masks, batch_first=True))
    packs, plain = plan_packs(prompts, completions, list(range(len(ids))))
    return [list(p.members) for p in packs] + [[i] for i in plain]


def kl_group_sums(
    model: torch.nn.Module, ids: list[torch.Tensor], masks: list[torch.Tensor], share: bool, device: torch.device
) -> tuple[torch.Tensor, PassTokens]:
    """Σ log πθ(y'|x) [n] float64 of these unpadded KL sequences (CPU tensors), in one forward
    on `device`, and what ran."""
    # Right padding with token 0 is never attended by a real token (causal) nor scored.
    real = pad_sequence([torch.ones_like(x) for x in ids], batch_first=True)
    host = TokenBatch(pad_sequence(ids, batch_first=True), real, pad_sequence(masks, batch_first=True))
    flat, tokens = completion_logps(model, host.to(device), torch.ones(len(ids), dtype=torch.bool), share, host=host)
    return sequence_sums(flat, host.score_mask), tokens


class StepStats(NamedTuple):
    """Per-step statistics: float64 scalar tensors, summed over micro-batches, then over ranks
    (stacked into one vector for a single all-reduce and unstacked by name), then over the
    steps of a logging window. Sums over valid rows; `summarize` turns them into means."""

    examples: torch.Tensor
    loss_sum: torch.Tensor
    desirable: torch.Tensor
    undesirable: torch.Tensor
    reward_d_sum: torch.Tensor
    reward_u_sum: torch.Tensor
    logp_d_sum: torch.Tensor
    logp_u_sum: torch.Tensor
    sft_nll_sum: torch.Tensor
    sft_tokens: torch.Tensor
    tokens: torch.Tensor
    kl_raw_sum: torch.Tensor
    kl_sum: torch.Tensor
    kl_scopes: torch.Tensor
    # Token slots of each pass, real and padded (the KL pass's padding differs from the policy's).
    policy_real_tokens: torch.Tensor
    policy_padded_tokens: torch.Tensor
    kl_real_tokens: torch.Tensor
    kl_padded_tokens: torch.Tensor
    # Tokens both passes did not compute thanks to prefix sharing, and the steps they were
    # counted over (1 per step: 1 / ranks on each rank's first micro-batch), for `tokens/saved`.
    saved_tokens: torch.Tensor
    steps: torch.Tensor

    @classmethod
    def zeros(cls, device: torch.device | str) -> StepStats:
        return cls.unstacked(torch.zeros(len(cls._fields), dtype=torch.float64, device=device))

    def stacked(self) -> torch.Tensor:
        return torch.stack(tuple(self))

    @classmethod
    def unstacked(cls, values: torch.Tensor) -> StepStats:
        return cls(*values.unbind(0))

    def plus(self, other: StepStats) -> StepStats:
        return StepStats(*(a + b for a, b in zip(self, other)))

    def all_reduced(self, accelerator: Accelerator) -> StepStats:
        return StepStats.unstacked(all_reduce_sum(self.stacked(), accelerator))


STAT_FIELDS = StepStats._fields


@dataclass(frozen=True)
class LossSettings:
    beta: float
    desirable_weight: float
    undesirable_weight: float
    loss_type: LossType
    sft_weight: float
    kl_scope: str  # "step" | "microbatch"
    # Prefix sharing (train/packing.py) in the no-grad KL pass and in the policy pass. The policy
    # pass does not share under gradient checkpointing: the recomputed forward in backward would
    # run after the gathered attention was switched off again.
    kl_prefix_sharing: bool = False
    policy_prefix_sharing: bool = False


def all_reduce_sum(values: torch.Tensor, accelerator: Accelerator) -> torch.Tensor:
    """THE cross-rank reduction of this package: every global count and sum goes through here."""
    if accelerator.num_processes == 1:
        return values
    return accelerator.reduce(values, reduction="sum")


def all_reduce_max(value: float, accelerator: Accelerator) -> float:
    """The largest `value` over ranks, so that a decision taken on it is the same everywhere."""
    if accelerator.num_processes == 1:
        return value
    return float(accelerator.gather(torch.tensor([value], device=accelerator.device)).max())


def step_counts(batches: list[KTOMicroBatch]) -> torch.Tensor:
    """[real rows, valid desirable completion tokens] of this process's part of the step, float64
    on the CPU (counted on the batches' CPU copies)."""
    hosts = [b.on_host for b in batches]
    rows = sum(int(h.valid.sum()) for h in hosts)
    tokens = sum(int(desirable_token_mask(h).sum()) for h in hosts)
    return torch.tensor([rows, tokens], dtype=torch.float64)


def kl_and_counts(
    model: torch.nn.Module, kl_batches: list[KTOMicroBatch], counts: torch.Tensor | None, accelerator: Accelerator, share: bool = False
) -> tuple[KLEstimate | None, torch.Tensor | None, KLSums]:
    """z over `kl_batches` on every rank, and `counts` summed over ranks, in one all-reduce;
    also this process's KLSums (for the padding metric).

    Without `kl_batches` (no KL pass) only the counts are reduced; without `counts`, only z.
    """
    parts, sums = [], None
    if kl_batches:
        sums = kl_local_sums(model, kl_batches, share)
        parts.append(torch.stack([sums.total, sums.count]))
    if counts is not None:
        parts.append(to_device(counts, parts[0].device) if parts else counts)
    reduced = all_reduce_sum(torch.cat(parts), accelerator)
    z = kl_estimate(reduced[0], reduced[1]) if kl_batches else None
    return z, (reduced[-2:] if counts is not None else None), sums


def desirable_token_mask(b: KTOMicroBatch) -> torch.Tensor:
    """[N] flat mask over scored tokens: True where the row is valid and desirable."""
    keep = (b.valid & b.desirable)[:, None].expand_as(b.policy.score_mask)
    return keep[b.policy.score_mask]


@dataclass(frozen=True)
class PolicyPass:
    """One micro-batch through the policy: flat token log-probs [N] (row-major, shared prefixes
    or not), sequence sums [B] (float64), per-example losses, the NLL summed over valid
    desirable completion tokens, and what the forward computed."""

    flat: torch.Tensor
    logps: torch.Tensor
    out: KTOLossOutput
    nll_sum: torch.Tensor
    tokens: PassTokens


def policy_pass(model: torch.nn.Module, b: KTOMicroBatch, s: LossSettings, z: KLEstimate | None) -> PolicyPass:
    """The policy forward and the loss maths, shared by training (with grad) and evaluation."""
    h = b.on_host
    flat, tokens = completion_logps(model, b.policy, h.valid, s.policy_prefix_sharing, host=h.policy)
    logps = sequence_sums(flat, h.policy.score_mask)
    out = kto_loss(
        logps,
        b.ref_logp,
        b.desirable,
        z.clamped if z is not None else 0.0,
        beta=s.beta,
        desirable_weight=s.desirable_weight,
        undesirable_weight=s.undesirable_weight,
        loss_type=s.loss_type,
    )
    desirable_tokens = to_device(desirable_token_mask(h), flat.device)
    return PolicyPass(flat, logps, out, -(flat.double() * desirable_tokens).sum(), tokens)


def forward_backward(
    model: torch.nn.Module, batches: list[KTOMicroBatch], s: LossSettings, accelerator: Accelerator, on_first_pass: Callable[[PolicyPass], None] | None = None
) -> StepStats:
    """Accumulate this process's gradients for one step; return its local StepStats.

    `on_first_pass(pass_)`, if given, sees the first micro-batch's PolicyPass before its backward
    (kto-train's step-0 drift check runs there and may stop the run before any update)."""
    device = batches[0].ref_logp.device
    per_microbatch_kl = s.loss_type.needs_kl and s.kl_scope == "microbatch"
    kl_batches = batches if s.loss_type.needs_kl and s.kl_scope == "step" else batches[:1] if per_microbatch_kl else []
    z, counts, kl = kl_and_counts(model, kl_batches, to_device(step_counts(batches), device), accelerator, s.kl_prefix_sharing)
    # Kept on the device: reading them here would wait for the whole KL pass before the first
    # policy forward could be queued.
    n_step, t_desirable = counts
    stats = StepStats.zeros(device)
    for i, b in enumerate(batches):
        if per_microbatch_kl and i > 0:
            z, _, kl = kl_and_counts(model, [b], None, accelerator, s.kl_prefix_sharing)
        last = i == len(batches) - 1
        sync = contextlib.nullcontext() if last else accelerator.no_sync(model)
        with sync:
            p = policy_pass(model, b, s, z)
            if i == 0 and on_first_pass is not None:
                on_first_pass(p)
            kto_part = (p.out.losses * b.valid).sum() / n_step.clamp(min=1.0)
            # No desirable token in the step: the NLL sum is 0 (every token masked), so is this.
            sft_part = p.nll_sum / t_desirable.clamp(min=1.0)
            loss = kto_part + s.sft_weight * sft_part if s.sft_weight else kto_part
            accelerator.backward(loss * accelerator.num_processes)
        first = i == 0 or per_microbatch_kl
        step = 1 / accelerator.num_processes if i == 0 else 0.0  # summed over ranks: 1 per step
        stats = stats.plus(batch_stats(b, p.out, p.logps.detach(), p.nll_sum.detach(), z, first=first, kl=kl if first else None, policy=p.tokens, step=step))
    return stats


def batch_stats(
    b: KTOMicroBatch,
    out: KTOLossOutput,
    logps: torch.Tensor,
    nll_sum: torch.Tensor,
    z: KLEstimate | None,
    first: bool,
    kl: KLSums | None = None,
    policy: PassTokens | None = None,
    step: float = 0.0,
) -> StepStats:
    """One micro-batch's StepStats; `policy` is what its policy forward ran (None: the plain
    batch as collated), `step` this micro-batch's share of a step's count (1 / ranks on each
    rank's first micro-batch)."""
    d, u = b.valid & b.desirable, b.valid & ~b.desirable
    zero = torch.zeros((), dtype=torch.float64, device=logps.device)
    scoped = z is not None and first
    as_float = lambda x: to_device(torch.tensor(float(x), dtype=torch.float64), logps.device)
    policy = policy or plain_tokens(b.on_host.policy, b.on_host.valid)
    # tokens_per_s counts the tokens the rows hold (prefix sharing computes fewer: its saving is
    # `tokens/saved`), the KL sequences' only where a KL pass ran: a step has a z exactly then
    # (none with --loss apo_zero_unpaired, which logged twice its throughput counting them).
    sequence_tokens = b.policy.attention_mask.sum(1) + (b.kl.attention_mask.sum(1) if z is not None else 0)
    return StepStats(
        examples=b.valid.sum().double(),
        loss_sum=(out.losses.detach() * b.valid).sum(),
        desirable=d.sum().double(),
        undesirable=u.sum().double(),
        reward_d_sum=(out.rewards * d).sum(),
        reward_u_sum=(out.rewards * u).sum(),
        logp_d_sum=(logps * d).sum(),
        logp_u_sum=(logps * u).sum(),
        sft_nll_sum=nll_sum,
        sft_tokens=(b.policy.score_mask & d[:, None]).sum().double(),
        tokens=(sequence_tokens * b.valid).sum().double(),
        kl_raw_sum=z.raw if scoped else zero,
        kl_sum=z.clamped if scoped else zero,
        # A scope without a pair (micro-batch scope, a micro-batch of filler on every rank) has
        # no estimate to average: its z of 0 is not counted in the logged kl.
        kl_scopes=(z.pairs > 0).double() if scoped else zero,
        # Filler rows still run in the policy pass: their slots count as padding.
        policy_real_tokens=as_float(policy.real),
        policy_padded_tokens=as_float(policy.slots),
        kl_real_tokens=as_float(kl.real_tokens if kl else 0),
        kl_padded_tokens=as_float(kl.padded_tokens if kl else 0),
        saved_tokens=as_float(policy.saved + (kl.saved_tokens if kl else 0)),
        steps=as_float(step),
    )


def clip_gradients(model: torch.nn.Module, accelerator: Accelerator, max_grad_norm: float) -> torch.Tensor:
    """Clip (or just measure) the global gradient norm; the same value on every rank."""
    norm = accelerator.clip_grad_norm_(model.parameters(), max_grad_norm if max_grad_norm > 0 else float("inf"))
    # Under FSDP2 the norm is a replicated DTensor; full_tensor() gives the plain tensor.
    return norm.full_tensor() if hasattr(norm, "full_tensor") else norm


def apply_update(optimizer: torch.optim.Optimizer, scheduler: torch.optim.lr_scheduler.LRScheduler) -> bool:
    """The update, then the schedule's next rate. Returns whether fp16's loss scaler skipped the
    update (a gradient overflowed fp16: the weights did not move, the scale was lowered); such an
    update leaves the schedule where it was, as transformers' Trainer does (accelerate's scheduler
    wrapper): the rate it did not train with is the next step's. Without a scaler (fp32, bf16),
    and for a plain optimizer, none is skipped."""
    optimizer.step()
    skipped = getattr(optimizer, "step_was_skipped", False)  # accelerate's optimizer under a loss scaler
    if not skipped:
        scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return skipped


def optimizer_step(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler: torch.optim.lr_scheduler.LRScheduler, accelerator: Accelerator, max_grad_norm: float
) -> float:
    """Clip, step, and clear the gradients (no finite-value check: the loop does that in between)."""
    norm = clip_gradients(model, accelerator, max_grad_norm)
    apply_update(optimizer, scheduler)
    return float(norm)


def summarize(stats: StepStats, sft_weight: float = 0.0) -> dict[str, float]:
    """Turn all-reduced StepStats sums (possibly over several steps) into logged metrics.

    Names follow TRL (`rewards/chosen` = desirable, `rewards/rejected` = undesirable) so that
    dashboards compare side by side. `loss` is the objective trained on: the KTO loss per row
    plus `sft_weight` × `sft_loss` (--sft-weight, LLaMA-Factory's pref_ftx), as LLaMA-Factory
    logs it; `kto_loss` is the first term alone.
    """
    v = dict(zip(StepStats._fields, stats.stacked().tolist()))
    nan = float("nan")
    # A class absent from the window has no mean: NaN (written as null), never a fake 0.
    div = lambda a, b: a / b if b else nan
    chosen, rejected = div(v["reward_d_sum"], v["desirable"]), div(v["reward_u_sum"], v["undesirable"])
    kto, sft = div(v["loss_sum"], v["examples"]), div(v["sft_nll_sum"], v["sft_tokens"])
    out = {
        "loss": kto + (sft_weight * sft if sft_weight and v["sft_tokens"] else 0.0),
        "kto_loss": kto,
        "sft_loss": sft,
        "rewards/chosen": chosen,
        "rewards/rejected": rejected,
        "rewards/margins": chosen - rejected,
        "logps/chosen": div(v["logp_d_sum"], v["desirable"]),
        "logps/rejected": div(v["logp_u_sum"], v["undesirable"]),
        "count/chosen": v["desirable"],
        "count/rejected": v["undesirable"],
        "tokens": v["tokens"],
        # Share of the padded token slots that held padding, per pass, over the window.
        "padding/policy": 1 - v["policy_real_tokens"] / v["policy_padded_tokens"] if v["policy_padded_tokens"] else nan,
        # Tokens per step (both passes, all ranks) that prefix sharing did not compute.
        "tokens/saved": v["saved_tokens"] / v["steps"] if v["steps"] else nan,
    }
    # Without a KL pass (--loss apo_zero_unpaired; eval, which adds its own z) there is no
    # estimate and no KL batch: not logged, rather than a 0 that reads as a stuck KL.
    if v["kl_scopes"]:
        out["kl"], out["kl_raw"] = v["kl_sum"] / v["kl_scopes"], v["kl_raw_sum"] / v["kl_scopes"]
    if v["kl_padded_tokens"]:
        out["padding/kl"] = 1 - v["kl_real_tokens"] / v["kl_padded_tokens"]
    return out
