"""The KTO loss and its reference point, as pure functions of tensors.

Notation (Ethayarajh et al., 2024, Eqn. 7): for a row (x, y) with label desirable/undesirable,
    r = log πθ(y|x) − log πref(y|x)                       (summed over completion tokens)
    z = max(0, KL̂),  KL̂ = mean over mismatched pairs (x_i, y'_i) of
                          log πθ(y'_i|x_i) − log πref(y'_i|x_i)   (detached)
    loss_kto = w_D · (1 − σ(β (r − z)))    if desirable
             = w_U · (1 − σ(β (z − r)))    if undesirable
APO-zero, unpaired variant (D'Oosterlinck et al., 2024; TRL's `apo_zero_unpaired`), needs no z:
    loss_apo = w_D · (1 − σ(β r))          if desirable
             = w_U · σ(β r)                if undesirable

Nothing here reduces over examples, micro-batches or ranks: the caller sums per-example losses
and divides by the step's global example count (train/step.py), so the maths is independent of
how a step is split.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .loss_type import LossType  # here too: callers import the loss and its kinds from one place


@dataclass(frozen=True)
class KTOLossOutput:
    """All tensors are [B].

    losses:  weighted per-example losses (carry gradient to policy_logps)
    rewards: β · r, detached (TRL's `rewards/chosen|rejected` are their class means)
    """

    losses: torch.Tensor
    rewards: torch.Tensor


def kto_loss(
    policy_logps: torch.Tensor,
    ref_logps: torch.Tensor,
    desirable: torch.Tensor,
    kl: torch.Tensor | float,
    *,
    beta: float,
    desirable_weight: float = 1.0,
    undesirable_weight: float = 1.0,
    loss_type: LossType = LossType.KTO,
) -> KTOLossOutput:
    """Per-example KTO (or APO-zero-unpaired) losses.

    policy_logps, ref_logps: [B] sequence log-probs (any float dtype; computed in float64 here
    so that r, a small difference of two large sums, keeps its digits); desirable: [B] bool;
    kl: the clamped, detached z (scalar), ignored by APO.
    """
    r = policy_logps.double() - ref_logps.double()
    z = torch.as_tensor(kl, dtype=torch.float64, device=r.device).detach()
    match loss_type:
        case LossType.KTO:
            desirable_loss = 1 - torch.sigmoid(beta * (r - z))
            undesirable_loss = 1 - torch.sigmoid(beta * (z - r))
        case LossType.APO_ZERO_UNPAIRED:
            desirable_loss = 1 - torch.sigmoid(beta * r)
            undesirable_loss = torch.sigmoid(beta * r)
    losses = torch.where(desirable, desirable_weight * desirable_loss, undesirable_weight * undesirable_loss)
    return KTOLossOutput(losses=losses, rewards=(beta * r).detach())


@dataclass(frozen=True)
class KLEstimate:
    raw: torch.Tensor
    """Σ(policy_kl − ref_kl) / count, possibly negative (logged)."""
    clamped: torch.Tensor
    """max(raw, 0): the z used in the loss."""
    pairs: torch.Tensor
    """The all-reduced number of KL pairs it averages; 0 when its scope held only filler rows."""


def kl_estimate(diff_sum: torch.Tensor, count: torch.Tensor) -> KLEstimate:
    """z from an all-reduced sum of (policy_kl_logp − ref_kl_logp) and its pair count.

    Count-weighted over every pair in scope, so it does not depend on how the pairs were split
    into micro-batches or ranks. Zero pairs give 0, never NaN.
    """
    diff_sum = diff_sum.detach().double()
    raw = diff_sum / count.clamp(min=1).to(diff_sum)
    return KLEstimate(raw=raw, clamped=raw.clamp(min=0), pairs=count)
