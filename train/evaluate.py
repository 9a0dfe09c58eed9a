"""Evaluation on a cache: the same loss and metrics as training, with z over the whole eval set."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

from kto.formats.cache import ShardedCache

from .data import collate_micro_batch
from .loss import kl_estimate
from .progress import EvalProgress
from .step import LossSettings, StepStats, all_reduce_sum, batch_stats, kl_local_sums, policy_pass, summarize

if TYPE_CHECKING:
    from accelerate import Accelerator


def eval_slots(num_rows: int, batch_size: int, rank: int, world: int) -> list[np.ndarray]:
    """Rows rank, rank+world, … in batches; every rank gets the same number (filler = -1)."""
    per_rank = -(-num_rows // world)
    n_batches = -(-per_rank // batch_size)
    mine = np.full(n_batches * batch_size, -1, dtype=np.int64)
    rows = np.arange(rank, num_rows, world)
    mine[: len(rows)] = rows
    return list(mine.reshape(n_batches, batch_size))


@torch.no_grad()
def evaluate(model: torch.nn.Module, cache: ShardedCache, s: LossSettings, pad_id: int, batch_size: int, accelerator: Accelerator) -> dict[str, float]:
    """Two streaming passes (z first, then the losses), one micro-batch in memory at a time; a
    bar over both on the main process's stderr (train/progress.py EvalProgress)."""
    slots = eval_slots(cache.num_rows, batch_size, accelerator.process_index, accelerator.num_processes)
    passes = 2 if s.loss_type.needs_kl else 1

    def batches(bar: EvalProgress):
        for slot in slots:
            yield collate_micro_batch(cache, slot, pad_id).to(accelerator.device)
            bar.step()  # the batch yielded before is done

    z = None
    with EvalProgress(passes * len(slots), accelerator.is_main_process) as bar:
        if s.loss_type.needs_kl:
            parts = [kl_local_sums(model, [b], s.kl_prefix_sharing) for b in batches(bar)]
            sums = torch.stack([torch.stack([p.total, p.count]) for p in parts]).sum(0)
            reduced = all_reduce_sum(sums, accelerator)
            z = kl_estimate(reduced[0], reduced[1])
        stats = StepStats.zeros(accelerator.device)
        for b in batches(bar):
            p = policy_pass(model, b, s, z)
            stats = stats.plus(batch_stats(b, p.out, p.logps, p.nll_sum, None, first=False))
    stats = stats.all_reduced(accelerator)
    out = summarize(stats, s.sft_weight)
    for key in ("tokens", "padding/policy", "padding/kl", "tokens/saved"):
        out.pop(key, None)
    if z is not None:
        out["kl"], out["kl_raw"] = float(z.clamped), float(z.raw)
    return out
