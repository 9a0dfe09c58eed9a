"""Start-up checks: right tokenizer, no numeric drift against the cache, class balance."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from kto.formats.compute.logprob import split_rows

from .data import KTOMicroBatch

# Per-token |Δ| allowed between the policy at step 0 and the cached reference, by the compute
# dtype. With matching numerics (the defaults) the only differences left come from batch shapes
# (padding, kernel choice): rounding in fp32, a few ulps of the logits in bf16/fp16.
DEFAULT_DRIFT_TOLERANCE = {torch.float32: 1e-3, torch.bfloat16: 0.15, torch.float16: 0.05}


@dataclass(frozen=True)
class Drift:
    max_abs: float
    tokens: int


@torch.no_grad()
def step0_drift(model: torch.nn.Module, batch: KTOMicroBatch) -> Drift:
    """Max per-token |log πθ − log πref| on one batch from a forward pass of its own (used with
    --keep-dropout, where the training forward is noisy); see `drift_of`."""
    return drift_of(model(batch.policy.input_ids, batch.policy.score_mask), batch)


@torch.no_grad()
def drift_of(flat: torch.Tensor, batch: KTOMicroBatch) -> Drift:
    """Max per-token |log πθ − log πref| of the policy's flat completion log-probs on `batch`,
    before any update (πθ = πref here). Valid rows with stored per-token terms only."""
    per_row = split_rows(flat.detach().float().cpu(), batch.policy.score_mask.cpu())
    worst, n = 0.0, 0
    for ours, cached, ok in zip(per_row, batch.ref_token_logps, batch.valid.tolist()):
        if not ok or cached is None:
            continue
        worst = max(worst, float(np.abs(ours.numpy() - cached).max(initial=0.0)))
        n += len(cached)
    return Drift(worst, n)


@dataclass(frozen=True)
class Balance:
    n_desirable: int
    n_undesirable: int
    ratio: float
    suggested_desirable_weight: float | None
    """The nearest w_D that brings the ratio inside [1, 4/3]; None when no w_D can (a class is
    absent, or w_U = 0 leaves the undesirable rows out of the loss)."""
    undesirable_weight: float = 1.0

    @property
    def ok(self) -> bool:
        return 1.0 <= self.ratio <= 4 / 3

    @property
    def advised_desirable_weight(self) -> str | None:
        """The suggestion as the user should type it: the fewest significant digits that still
        bring the ratio inside [1, 4/3], written out in full (`0.00001`, never `0.0000`)."""
        w = self.suggested_desirable_weight
        if w is None:
            return None
        inside = lambda x: 1.0 <= (x * self.n_desirable) / (self.undesirable_weight * self.n_undesirable) <= 4 / 3
        return np.format_float_positional(_shortest_inside(w, inside), trim="-")


def _shortest_inside(w: float, inside: Callable[[float], bool]) -> float:
    """The number with the fewest significant digits for which `inside` holds, the nearest to
    `w` among those (w itself when none of up to 17 digits does). At k digits only w rounded and
    its two neighbours can be nearest: 2.3333 → 3 for the range [2.33, 3.11], not 2.3333."""
    for k in range(1, 18):
        unit = 10.0 ** (math.floor(math.log10(w)) - k + 1)
        base = round(w / unit)
        for m in sorted((base - 1, base, base + 1), key=lambda m: abs(m * unit - w)):
            x = float(f"{m * unit:.{k + 1}g}")  # m · unit without the float tail (24 · 0.1)
            if x > 0 and inside(x):
                return x
    return w


def class_balance(n_d: int, n_u: int, w_d: float, w_u: float) -> Balance:
    """The paper's advice: (w_D·n_D)/(w_U·n_U) ∈ [1, 4/3]. Suggest the nearest w_D inside it."""
    if n_d == 0 or n_u == 0:
        return Balance(n_d, n_u, float("inf") if n_u == 0 else 0.0, None, w_u)
    if w_u == 0:  # no w_D balances a class that is not in the loss
        return Balance(n_d, n_u, float("inf") if w_d > 0 else float("nan"), None, w_u)
    ratio = (w_d * n_d) / (w_u * n_u)
    lo, hi = w_u * n_u / n_d, (4 / 3) * w_u * n_u / n_d
    return Balance(n_d, n_u, ratio, float(min(max(w_d, lo), hi)), w_u)


def loss_is_identically_zero(n_d: int, n_u: int, w_d: float, w_u: float, sft_weight: float) -> str | None:
    """Why every row's loss (KTO or APO, plus the SFT term) is 0 given the cache's class counts,
    as the flags to change; None when some row can move the weights.

    A desirable row contributes w_D·ℓ_D + γ·NLL, an undesirable one w_U·ℓ_U; a run where no row
    contributes trains nothing and saves the initial weights as final/."""
    desirable = "the cache has no desirable rows" if n_d == 0 else "--desirable-weight 0" if w_d == 0 and sft_weight == 0 else None
    undesirable = "the cache has no undesirable rows" if n_u == 0 else "--undesirable-weight 0" if w_u == 0 else None
    if desirable is None or undesirable is None:
        return None
    return f"{desirable} and {undesirable} (n_D = {n_d}, n_U = {n_u}): the loss is identically 0 and nothing would train"
