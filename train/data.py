"""Stream a cache into KTO micro-batches: memory-mapped shards, seeded plans that follow the
cache's KL cycle and keep a prompt's rows together.

The plan of an epoch is a pure function of (seed, epoch, rows, prompt groups, world size, batch
shape), so a resumed run rebuilds it and skips to its step, and every rank agrees on it without
talking.

- Steps per epoch are fixed: ceil(rows / (batch · accum · world)). The LR schedule is thus
  known up front.
- No row is dropped and none is seen twice: the last step of an epoch may be short, and its
  empty slots are filled with a copy of a real row marked `valid = False`, which adds nothing
  to any loss, count or metric. Every rank therefore runs the same number of micro-batches,
  because a rank that runs dry hangs the collectives.
- Steps follow the KL cycle: rows are stored in cycle order (row k's KL partner is row k+1, see
  precompute/plan.py), and a step is a contiguous segment of that cycle, so all its rows'
  KL partners but one are trained in the same step: z is measured on completions exactly as
  fresh as the rewards, as in the paper. Each epoch the segments start at a seeded random
  shift and the steps run in a seeded random order. Neighbours on the cycle have similar
  lengths, and inside a step rows are sorted by length before being cut into micro-batches,
  so padding stays low. The step's row set depends on rows per step only, not on how they are
  split into ranks × accumulation × batch (gradient equality, tests/train/test_step.py).
- Rows that share a prompt (a paired dataset's chosen and rejected rows: `prompt_groups`) go
  into one micro-batch, so that both passes of the step run their prompt once (prefix
  sharing, train/packing.py). The cycle is then walked group by group (a group where its first
  row is), the two groups kto-precompute interleaves (a1 b1 a2 b2) joined into one unit
  (`step_units`), and cut into steps, and a step's groups, longest first, into micro-batches, a
  group whole wherever it fits (`fill_bins`). A step is then only roughly a segment, but still
  holds 88 % of its rows' partners on 48 real pairs at 8 × 1, as the segment plan did
  (docs/kl_pairing.md, "Prompt groups in one micro-batch"). Nothing needs the partner in the
  step (its KL sequence and ref_kl_logp are in the row's own columns); its freshness is what
  is at stake. Without two rows of one prompt the plan is the segment plan above, slot for slot.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from kto.formats import schema as S
from kto.formats.cache import ShardedCache, column_view
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
    host:     the same micro-batch on the CPU, kept by `to()` (None: this one is on the CPU).
              The step plans from it (lengths, valid rows, prompt groups, packs) so that
              planning never reads a tensor back from the accelerator: each such read waits
              for every queued kernel and leaves the device idle while the CPU plans.

    The per-row columns are a mapping rather than one field each so that a column added to the
    declaration reaches the loss without an edit here (docs/design.md, "Adding a column");
    tests/train/test_data.py keeps `columns` and the declaration in step.
    """

    policy: TokenBatch
    kl: TokenBatch
    columns: dict[str, torch.Tensor]
    valid: torch.Tensor
    ref_token_logps: list[np.ndarray] | None = None
    host: KTOMicroBatch | None = None

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

    @property
    def on_host(self) -> KTOMicroBatch:
        """This micro-batch's CPU copy (itself when it is the CPU one)."""
        return self if self.host is None else self.host

    def to(self, device: torch.device | str) -> KTOMicroBatch:
        return replace(self._map(lambda t: t.to(device, non_blocking=True)), host=self.on_host)


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


def fitted_shape(num_rows: int, shape: MicroBatchShape) -> tuple[MicroBatchShape, list[str]]:
    """The shape a step takes on a cache of `num_rows` rows, and a note for each flag it lowers.
    A step's slots beyond the cache's rows are filler that still runs through the model (and the
    plan is built slot by slot): --batch-size 100000 or --grad-accum 100000000 on a small cache
    would fill memory for nothing, and the default --batch-size 8 would refuse a 5-row trial. As
    a DataLoader that keeps its short last batch runs them (HF Trainer, TRL), a micro-batch holds
    at most the cache's rows, and a step at most as many micro-batches as those rows fill."""
    notes = []
    batch = min(shape.batch_size, num_rows)
    if batch < shape.batch_size:
        notes.append(f"--batch-size {shape.batch_size}: the cache holds {num_rows} rows; micro-batches of {batch}")
    most = math.ceil(num_rows / batch)
    if shape.grad_accum > most:
        notes.append(
            f"--grad-accum {shape.grad_accum}: the cache's {num_rows} rows fill {most} micro-batch{'es' if most > 1 else ''} of {batch}; steps of {most}"
        )
    return replace(shape, batch_size=batch, grad_accum=min(shape.grad_accum, most)), notes


def epoch_plan(lengths: np.ndarray, shape: MicroBatchShape, seed: int, epoch: int, groups: np.ndarray | None = None) -> np.ndarray:
    """[steps, world, accum, batch] global row indices; -1 marks an empty (filler) slot.

    `lengths` are in the cache's (cycle) order; `groups` gives rows that share a prompt one
    number (`prompt_groups`), None every row its own. See the module docstring.
    """
    n, G = len(lengths), shape.rows_per_step
    steps = steps_per_epoch(n, shape)
    rng = np.random.default_rng([seed, epoch])
    shift = int(rng.integers(n)) if n else 0
    cycle = (np.arange(n) + shift) % n
    if groups is None or len(np.unique(groups)) == n:
        segments = row_segments(cycle, lengths, steps, G)
    else:
        segments = group_segments(step_units(prompt_units(cycle, groups), cycle, G), lengths, steps, shape, groups)
    # Consecutive rows (similar lengths) form a micro-batch; micro-batches go round-robin to
    # (rank, accumulation slot), so a short last step spreads its rows over every rank.
    plan = segments.reshape(steps, shape.grad_accum, shape.world_size, shape.batch_size).transpose(0, 2, 1, 3)
    return plan[rng.permutation(steps)] if steps > 1 else plan


def row_segments(cycle: np.ndarray, lengths: np.ndarray, steps: int, G: int) -> np.ndarray:
    """[steps, G]: the cycle cut into segments of G rows, each sorted longest first (filler, -1,
    last). What `group_segments` gives when no two rows share a prompt, vectorized."""
    padded = np.full(steps * G, -1, dtype=np.int64)
    padded[: len(cycle)] = cycle
    segments = padded.reshape(steps, G)
    for seg in segments:
        # Longest first, filler (-1) last; a stable sort keeps equal lengths in cycle order.
        key = np.where(seg >= 0, -lengths[np.maximum(seg, 0)], 1)
        seg[:] = seg[np.argsort(key, kind="stable")]
    return segments


def group_segments(units: list[list[list[int]]], lengths: np.ndarray, steps: int, shape: MicroBatchShape, groups: np.ndarray) -> np.ndarray:
    """[steps, G]: the units (`step_units`: each one or more prompt groups), in cycle order,
    filled into steps of G rows, and each step's prompt groups (`groups`, a number per row),
    longest first, into micro-batches, a group whole wherever it fits (then both passes run its
    prompt once). A step's rows depend on G alone, not on the split into ranks × accumulation ×
    batch."""
    G, B = shape.rows_per_step, shape.batch_size
    segments = np.full((steps, G), -1, dtype=np.int64)
    rows_of = [[r for group in unit for r in group] for unit in units]
    for s, pieces in enumerate(fill_bins(rows_of, G, steps, parts=units)):
        by_group: dict[int, list[int]] = {}  # the step's rows, back to their prompt groups
        for r in (r for piece in pieces for r in piece):
            by_group.setdefault(int(groups[r]), []).append(r)
        # A group ranks by its longest row; the stable sort keeps ties in cycle order.
        pieces = sorted(by_group.values(), key=lambda u: -int(lengths[u].max()))
        for m, micro in enumerate(fill_bins(pieces, B, G // B)):
            rows = [r for piece in micro for r in piece]
            segments[s, m * B : m * B + len(rows)] = rows
    return segments


def prompt_units(cycle: np.ndarray, groups: np.ndarray) -> list[list[int]]:
    """The rows of `cycle` gathered by prompt group: a group sits where its first row is on the
    cycle, its rows in cycle order (kto-precompute keeps a group's rows side by side, with the
    neighbouring group's rows between them: a1 b1 a2 b2)."""
    units: dict[int, list[int]] = {}
    for r, g in zip(cycle.tolist(), groups[cycle].tolist()):
        units.setdefault(g, []).append(r)
    return list(units.values())  # insertion order: by first row


def step_units(units: list[list[int]], cycle: np.ndarray, capacity: int) -> list[list[list[int]]]:
    """Join neighbouring prompt groups (`units`) that the KL chain weaves together, up to
    `capacity` rows: each unit returned is a list of groups.

    Row r's KL partner is row r + 1 (the cache's cycle). kto-precompute puts a group's rows next
    to each other and swaps the next group's first row between them, so two neighbouring pairs
    chain a1 → b1 → a2 → b2 → c1: a step cut between a and b leaves three of their four rows'
    partners in another step, one cut between b and c only one. So two neighbouring units
    linked more than once are joined, as long as they fit a step. Links between units further
    apart (a group the epoch's shift cut in two, one row at each end of the cycle) cross every
    cut alike and decide nothing."""
    if len(units) < 2:
        return [[u] for u in units]
    rank = np.empty(len(cycle), dtype=np.int64)
    for u, rows in enumerate(units):
        rank[rows] = u
    here, there = rank[cycle], rank[(cycle + 1) % len(cycle)]  # each link r → r + 1, as unit ranks
    lo = np.minimum(here, there)[np.abs(here - there) == 1]
    links = np.bincount(lo, minlength=len(units))  # links[u]: between units u and u + 1
    joined, current = [], [units[0]]
    for u in range(1, len(units)):
        if links[u - 1] > 1 and sum(map(len, current)) + len(units[u]) <= capacity:
            current.append(units[u])
        else:
            joined.append(current)
            current = [units[u]]
    return joined + [current]


# How far ahead `fill_bins` looks for a unit that fits the room left in a bin.
FILL_SCAN = 64


def fill_bins(units: list[list[int]], capacity: int, most: int, parts: list[list[list[int]]] | None = None) -> list[list[list[int]]]:
    """Cut `units` (rows, in order) into at most `most` bins of `capacity` rows, each a list of
    pieces. For the room left in the current bin, in this order:
    1. the nearest of the next FILL_SCAN units that fits goes in whole;
    2. else, with `parts` (unit k's prompt groups, where `step_units` joined several), the
       nearest of those units with a part that fits is broken into its parts, which count as
       units from then on;
    3. else, if the bins after this one can hold every row left, the room stays empty (filler);
    4. else the next unit is broken into its parts, or, having none, split by rows to fill the
       room (as a unit larger than a bin always is).
    Units of one row therefore fill the bins in order, full. Breaking a unit moves its later
    parts down the queue, so a part may fall out of the look-ahead window: a step then cuts a
    group by rows where a wider look would not have (no row is lost either way)."""
    if parts is not None and [sum(map(len, p)) for p in parts] != [len(u) for u in units]:
        raise ValueError("parts must hold each unit's rows")
    breakable = [p if parts is not None and len(p) > 1 else None for p in (parts or units)]
    # Each pending entry is (unit, start, parts): the unit's rows from `start` on are still to
    # place. A unit split by rows advances `start` instead of copying the rest of the unit at
    # every bin, which made a prompt group of n rows cost O(n² / capacity).
    pending = [(u, 0, b) for u, b in zip(units, breakable)][::-1]  # the next unit last
    left = sum(len(u) for u in units)
    bins: list[list[list[int]]] = []
    current: list[list[int]] = []
    room = capacity

    def size(k: int) -> int:
        return len(pending[k][0]) - pending[k][1]

    def break_up(k: int) -> None:
        pending[k : k + 1] = [(p, 0, None) for p in pending[k][2][::-1]]

    while pending:
        last = len(pending) - 1
        window = range(last, max(last - FILL_SCAN, -1), -1)
        fits = next((k for k in window if size(k) <= room), None)
        if fits is None:
            part_fits = next((k for k in window if pending[k][2] and min(map(len, pending[k][2])) <= room), None)
            if part_fits is not None:
                break_up(part_fits)
                continue
            if size(last) <= capacity and left <= (most - len(bins) - 1) * capacity:
                room = 0
            elif pending[last][2] is not None:
                break_up(last)
                continue
        if room > 0:
            unit, start, _ = pending.pop(last if fits is None else fits)
            end = min(len(unit), start + room)
            piece = unit if start == 0 and end == len(unit) else unit[start:end]
            if end < len(unit):
                pending.append((unit, end, None))
            current.append(piece)
            room, left = room - len(piece), left - len(piece)
        if room == 0:
            bins.append(current)
            current, room = [], capacity
    return bins + [current] if current else bins


def prompt_groups(cache: ShardedCache) -> np.ndarray:
    """[rows] int64: the first row (global index) with the same prompt ids, for every row; read
    from the shards' prompt offsets and values, memory-mapped (no checksum: a wrong number only
    places rows, and the step packs by the ids themselves)."""
    keys = [prompt_keys(column_view(cache.open_shard(k).column(S.PROMPT_IDS))) for k in range(cache.num_shards)]
    keys = np.concatenate(keys) if keys else np.zeros(0, np.uint64)
    _, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
    return first[inverse].astype(np.int64)


def prompt_keys(prompts: S.Ragged) -> np.ndarray:
    """[rows] uint64 hash of each row's token ids (Σ f(id)·Bᵖᵒˢ mod 2⁶⁴, and the length): equal
    prompts get equal keys; unequal ones differ but with negligible odds (a collision only puts
    two rows in one micro-batch)."""
    lengths = prompts.lengths
    positions = np.arange(len(prompts.values)) - np.repeat(prompts.offsets[:-1], lengths)
    with np.errstate(over="ignore"):
        powers = np.cumprod(np.full(int(lengths.max(initial=0)) + 1, _HASH_BASE, dtype=np.uint64))
        terms = (prompts.values.astype(np.uint64) * _HASH_MIX + np.uint64(1)) * powers[positions]
        sums = np.concatenate([np.zeros(1, np.uint64), np.cumsum(terms, dtype=np.uint64)])
        return (sums[prompts.offsets[1:]] - sums[prompts.offsets[:-1]]) ^ (lengths.astype(np.uint64) * _HASH_MIX)


# Odd 64-bit constants (from the golden ratio and sqrt(3)) for `prompt_keys`.
_HASH_BASE = np.uint64(0x9E3779B97F4A7C15)
_HASH_MIX = np.uint64(0xBB67AE8584CAA73B)


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
