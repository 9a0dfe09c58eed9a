"""Stream a cache into KTO micro-batches: memory-mapped shards, seeded plans that follow the
cache's KL cycle.

The plan of an epoch is a pure function of (seed, epoch, rows, world size, batch shape), so a
resumed run rebuilds it and skips to its step, and every rank agrees on it without talking.

- Steps per epoch are fixed: ceil(rows / (batch · accum · world)). The LR schedule is thus
  known up front.
- No row is dropped and none is seen twice: the last step of an epoch may be short, and its
  empty slots are filled with a copy of a real row marked `valid = False`, which adds nothing
  to any loss, count or metric. Every rank therefore runs the same number of micro-batches,
  because a rank that runs dry hangs the collectives.
- Steps follow the KL cycle: rows are stored in cycle order (row k's KL partner is row k+1, see
  precompute/pairing.py), and a step is a contiguous segment of that cycle, so all its rows'
  KL partners but one are trained in the same step: z is measured on completions exactly as
  fresh as the rewards, as in the paper. Each epoch the segments start at a seeded random
  shift and the steps run in a seeded random order. Neighbours on the cycle have similar
  lengths, and inside a step rows are sorted by length before being cut into micro-batches,
  so padding stays low. The step's row set depends on rows per step only, not on how they are
  split into ranks × accumulation × batch (gradient equality, tests/train/test_step.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from kto.formats import schema as S
from kto.formats.cache import ShardedCache
from kto.formats.compute.logprob import TokenBatch, make_token_batch

if TYPE_CHECKING:
    from collections.abc import Callable, Hashable


@dataclass(frozen=True)
class KTOMicroBatch:
    """One micro-batch of B rows on one process.

    policy:   prompt + completion (TokenBatch, [B, T])
    kl:       prompt + KL completion (TokenBatch, [B, T'])
    columns:  every declared per-row column training reads (formats/schema.py `COLUMNS` with
              `trained`, numbers and bools), by name: a [B] tensor each. Typed below:
    ref_logp:      [B] float64, cached Σ log πref(y|x)
    ref_kl_logp:   [B] float64, cached Σ log πref(y'|x)
    desirable:     [B] bool (the `label` column)
    valid:    [B] bool, False on filler rows of an epoch's short last step
    ref_token_logps: per-row float32 arrays (for the step-0 drift check), or None

    The per-row columns are a mapping rather than one field each so that a column added to the
    declaration reaches the loss without an edit here (docs/design.md, "Adding a column");
    tests/train/test_data.py keeps `columns` and the declaration in step.
    """

    policy: TokenBatch
    kl: TokenBatch
    columns: dict[str, torch.Tensor]
    valid: torch.Tensor
    ref_token_logps: list[np.ndarray] | None = None

    @property
    def ref_logp(self) -> torch.Tensor:
        return self.columns[S.REF_LOGP]

    @property
    def ref_kl_logp(self) -> torch.Tensor:
        return self.columns[S.REF_KL_LOGP]

    @property
    def desirable(self) -> torch.Tensor:
        return self.columns[S.LABEL]

    def _map(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> KTOMicroBatch:
        tb = lambda b: TokenBatch(fn(b.input_ids), fn(b.attention_mask), fn(b.score_mask))
        columns = {name: fn(t) for name, t in self.columns.items()}
        return KTOMicroBatch(tb(self.policy), tb(self.kl), columns, fn(self.valid), self.ref_token_logps)

    def pin_memory(self) -> KTOMicroBatch:
        """Page-locked copies, so that `to(cuda)` overlaps with compute (CUDA only)."""
        return self._map(lambda t: t.pin_memory())

    def to(self, device: torch.device | str) -> KTOMicroBatch:
        return self._map(lambda t: t.to(device, non_blocking=True))


@dataclass(frozen=True)
class MicroBatchShape:
    """Training batches count rows: `batch_size` rows per micro-batch (--batch-size), `grad_accum`
    micro-batches per step and process, `world_size` processes. (Scoring batches are cut by a
    token budget instead: formats/compute/token_budget.py.)"""

    batch_size: int
    grad_accum: int
    world_size: int

    @property
    def rows_per_step(self) -> int:
        return self.batch_size * self.grad_accum * self.world_size


def steps_per_epoch(num_rows: int, shape: MicroBatchShape) -> int:
    return math.ceil(num_rows / shape.rows_per_step)


def epoch_plan(lengths: np.ndarray, shape: MicroBatchShape, seed: int, epoch: int) -> np.ndarray:
    """[steps, world, accum, batch] global row indices; -1 marks an empty (filler) slot.

    `lengths` are in the cache's (cycle) order; see the module docstring.
    """
    n, G = len(lengths), shape.rows_per_step
    steps = steps_per_epoch(n, shape)
    rng = np.random.default_rng([seed, epoch])
    shift = int(rng.integers(n)) if n else 0
    padded = np.full(steps * G, -1, dtype=np.int64)
    padded[:n] = (np.arange(n) + shift) % n
    segments = padded.reshape(steps, G)
    for seg in segments:
        # Longest first, filler (-1) last; a stable sort keeps equal lengths in cycle order.
        key = np.where(seg >= 0, -lengths[np.maximum(seg, 0)], 1)
        seg[:] = seg[np.argsort(key, kind="stable")]
    # Consecutive rows (similar lengths) form a micro-batch; micro-batches go round-robin to
    # (rank, accumulation slot), so a short last step spreads its rows over every rank.
    plan = segments.reshape(steps, shape.grad_accum, shape.world_size, shape.batch_size).transpose(0, 2, 1, 3)
    return plan[rng.permutation(steps)] if steps > 1 else plan


def row_columns(*, ref_logp: torch.Tensor, ref_kl_logp: torch.Tensor, desirable: torch.Tensor, **more: torch.Tensor) -> dict[str, torch.Tensor]:
    """`KTOMicroBatch.columns` by the typed names, for batches built by hand (tools, tests)."""
    return {S.REF_LOGP: ref_logp, S.REF_KL_LOGP: ref_kl_logp, S.LABEL: desirable, **more}


# The list columns that become the policy and KL TokenBatches.
SEQUENCE_COLUMNS = (S.PROMPT_IDS, S.COMPLETION_IDS, S.KL_COMPLETION_IDS)


def per_row_columns() -> tuple[str, ...]:
    """The declared columns training reads one value a row of: `KTOMicroBatch.columns`."""
    return tuple(c.name for c in S.COLUMNS if c.trained and not c.is_list)


def collate_micro_batch(cache: ShardedCache, indices: np.ndarray, pad_id: int, with_token_logps: bool = False) -> KTOMicroBatch:
    """Build the micro-batch for `indices` ([B], -1 = filler) straight from the shards' buffers."""
    indices = np.asarray(indices, dtype=np.int64)
    valid = indices >= 0
    fill = int(indices[valid][0]) if valid.any() else 0
    per_row = per_row_columns()
    columns = SEQUENCE_COLUMNS + per_row + ((S.REF_TOKEN_LOGPS,) if with_token_logps else ())
    rows = cache.rows(np.where(valid, indices, fill), columns)
    return KTOMicroBatch(
        policy=make_token_batch(rows[S.PROMPT_IDS], rows[S.COMPLETION_IDS], pad_id),
        kl=make_token_batch(rows[S.PROMPT_IDS], rows[S.KL_COMPLETION_IDS], pad_id),
        # Fresh numpy arrays of the column's type (float64, bool): tensors without a copy.
        columns={name: torch.from_numpy(rows[name]) for name in per_row},
        valid=torch.from_numpy(valid),
        ref_token_logps=rows[S.REF_TOKEN_LOGPS].to_list() if with_token_logps else None,
    )


class Prefetcher:
    """Runs `make(key)` for the next key on a background thread while the caller works.

    `get(key, next_key)` returns make(key) (already made when it was the previous call's
    `next_key`) and starts make(next_key). Collation is numpy and pyarrow gathers and the step
    is torch kernels; both release the GIL, so the next step's batches cost the step nothing.
    What is made depends only on the key (the epoch plan is a pure function), so prefetching
    changes no number: exact resume and gradient equality hold as without it.
    """

    def __init__(self, make: Callable[[Hashable], Any]):
        from concurrent.futures import ThreadPoolExecutor

        self.make = make
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="kto-prefetch")
        self.pending = None  # (key, Future)

    def get(self, key: Hashable, next_key: Hashable | None = None) -> Any:
        if self.pending is not None and self.pending[0] == key:
            value = self.pending[1].result()  # re-raises the worker's exception here
        else:
            if self.pending is not None and not self.pending[1].cancel():
                self.pending[1].exception()  # wait: one maker at a time, never two on one cache
            value = self.make(key)
        self.pending = (next_key, self.pool.submit(self.make, next_key)) if next_key is not None else None
        return value

    def close(self) -> None:
        self.pending = None
        self.pool.shutdown(wait=True, cancel_futures=True)
