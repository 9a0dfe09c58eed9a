"""The KL pass of a step: Σ (log πθ(y'|x) − log πref(y'|x)) over a process's rows, no gradient.

Moved out of train/step.py as it was (issue 21's optional item): the step calls `kl_local_sums`
and reduces its result across ranks itself (step.py `kl_and_counts`, the one all-reduce).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.nn.utils.rnn import pad_sequence

from kto.formats.compute.logprob import TokenBatch, sequence_sums
from kto.formats.compute.shared_prefix import plan_packs

from .data import KTOMicroBatch
from .packing import PassTokens, completion_logps, split_sequences


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
    """The valid rows' KL sequences, unpadded: ids [L], score masks [L], and ref_kl_logp [n]."""
    ids, masks, refs = [], [], []
    for b in batches:
        lengths = b.kl.attention_mask.sum(1).tolist()
        for r in torch.nonzero(b.valid).flatten().tolist():
            ids.append(b.kl.input_ids[r, : lengths[r]])
            masks.append(b.kl.score_mask[r, : lengths[r]])
            refs.append(b.ref_kl_logp[r])
    ref = torch.stack(refs) if refs else torch.zeros(0, dtype=torch.float64, device=batches[0].ref_kl_logp.device)
    return ids, masks, ref


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
            sums, tokens = kl_group_sums(model, [ids[i] for i in members], [masks[i] for i in members], share)
            total += (sums - ref[members]).sum()
            real, padded, saved = real + tokens.real, padded + tokens.slots, saved + tokens.saved
    count = torch.tensor(float(len(ids)), dtype=torch.float64, device=total.device)
    return KLSums(total, count, real, padded, saved)


def kl_units(ids: list[torch.Tensor], masks: list[torch.Tensor]) -> list[list[int]]:
    """The KL sequences in units that one batch runs together: a pack's members, or one sequence.
    Sorting by a pack's summed length keeps it whole and ranks it by the tokens it holds."""
    batch = pad_sequence(ids, batch_first=True)
    prompts, completions = split_sequences(batch, pad_sequence(masks, batch_first=True))
    packs, plain = plan_packs(prompts, completions, list(range(len(ids))))
    return [list(p.members) for p in packs] + [[i] for i in plain]


def kl_group_sums(model: torch.nn.Module, ids: list[torch.Tensor], masks: list[torch.Tensor], share: bool) -> tuple[torch.Tensor, PassTokens]:
    """Σ log πθ(y'|x) [n] float64 of these unpadded KL sequences, in one forward, and what ran."""
    # Right padding with token 0 is never attended by a real token (causal) nor scored.
    real = pad_sequence([torch.ones_like(x) for x in ids], batch_first=True)
    batch = TokenBatch(pad_sequence(ids, batch_first=True), real, pad_sequence(masks, batch_first=True))
    flat, tokens = completion_logps(model, batch, torch.ones(len(ids), dtype=torch.bool), share)
    return sequence_sums(flat, batch.score_mask), tokens
