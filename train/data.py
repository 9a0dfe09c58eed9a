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
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from kto.formats import ragged
from kto.formats import schema as S
from kto.formats.errors import InputError
from kto.formats.logprob import TokenBatch, make_token_batch
from kto.formats.manifest import Manifest, read_manifest
from kto.formats.shards import ShardVerifier, check_shard_values, open_shard, tokenizer_vocab_size

VERIFY_HINT = "kto-inspect verify {} checks the whole cache"


@dataclass(frozen=True)
class KTOBatch:
    """One micro-batch of B rows on one process.

    policy:        prompt + completion (TokenBatch, [B, T])
    kl:            prompt + KL completion (TokenBatch, [B, T'])
    ref_logp:      [B] float64, cached Σ log πref(y|x)
    ref_kl_logp:   [B] float64, cached Σ log πref(y'|x)
    desirable:     [B] bool
    valid:         [B] bool, False on filler rows of an epoch's short last step
    ref_token_logps: per-row float32 arrays (for the step-0 drift check), or None
    """

    policy: TokenBatch
    kl: TokenBatch
    ref_logp: torch.Tensor
    ref_kl_logp: torch.Tensor
    desirable: torch.Tensor
    valid: torch.Tensor
    ref_token_logps: list[np.ndarray] | None = None

    def pin_memory(self) -> KTOBatch:
        """Page-locked copies, so that `to(cuda)` overlaps with compute (CUDA only)."""
        pin = lambda t: t.pin_memory()  # noqa: E731
        tb = lambda b: TokenBatch(pin(b.input_ids), pin(b.attention_mask), pin(b.score_mask))  # noqa: E731
        return KTOBatch(tb(self.policy), tb(self.kl), pin(self.ref_logp), pin(self.ref_kl_logp), pin(self.desirable), pin(self.valid), self.ref_token_logps)

    def to(self, device) -> KTOBatch:
        return KTOBatch(
            self.policy.to(device),
            self.kl.to(device),
            *(t.to(device, non_blocking=True) for t in (self.ref_logp, self.ref_kl_logp, self.desirable, self.valid)),
            self.ref_token_logps,
        )


def _list_lengths(column: pa.ChunkedArray) -> np.ndarray:
    """Per-row list lengths from the offsets buffer alone (no values are touched)."""
    return np.concatenate([np.diff(chunk.offsets.to_numpy()) for chunk in column.chunks]) if column.num_chunks else np.zeros(0, np.int64)


class ShardedCache:
    """Random access to a cache's rows, shards opened memory-mapped and verified on first read."""

    def __init__(self, cache_dir: Path, manifest: Manifest | None = None):
        self.dir = Path(cache_dir)
        self.manifest = manifest or read_manifest(self.dir)
        self.verifier = ShardVerifier(self.dir, self.manifest.shard_sha256)
        self._tables: dict[int, pa.Table] = {}
        self._views: dict[tuple[int, str], object] = {}
        self.starts = np.cumsum([0] + [s.rows for s in self.manifest.shards])
        self.num_rows = int(self.starts[-1])

    def table(self, k: int) -> pa.Table:
        if k not in self._tables:
            name = self.manifest.shards[k].name
            try:
                self.verifier.verify(name)  # sha256 on first read: a mismatch mid-run is one line too
            except (ValueError, OSError) as exc:
                raise InputError(f"{str(exc).splitlines()[0]}; {VERIFY_HINT.format(self.dir)}") from None
            table = self._open(k)
            check_shard_values(table, self.dir / name, tokenizer_vocab_size(self.dir))  # NaN log-probs, bad token ids
            self._tables[k] = table
        return self._tables[k]

    def _open(self, k: int) -> pa.Table:
        """Shard k memory-mapped: present, footer readable, shard schema, the manifest's row count."""
        entry = self.manifest.shards[k]
        path = self.dir / entry.name
        if not path.is_file():
            raise InputError(f"{path}: listed in the manifest but missing; {VERIFY_HINT.format(self.dir)}")
        try:
            table = open_shard(path)
        except InputError:
            raise
        except (ValueError, OSError, pa.ArrowException) as exc:
            raise InputError(
                f"{path}: not a readable shard, truncated or corrupt ({' '.join(str(exc).split())[:200]}); {VERIFY_HINT.format(self.dir)}"
            ) from None
        if table.num_rows != entry.rows:
            raise InputError(f"{path}: {table.num_rows} rows, the manifest says {entry.rows}; {VERIFY_HINT.format(self.dir)}")
        return table

    def lengths(self) -> np.ndarray:
        """[rows] prompt+completion lengths, from list offsets (cheap: no checksum, no values).

        This is also the start-up check of every shard (present, readable footer, schema, row
        count) before kto-train writes anything; the sha256 is checked on first use of the rows.
        """
        out = []
        for k in range(len(self.manifest.shards)):
            t = self._open(k)
            out.append(_list_lengths(t.column(S.PROMPT_IDS)) + _list_lengths(t.column(S.COMPLETION_IDS)))
        return np.concatenate(out) if out else np.zeros(0, np.int64)

    def rows(self, indices, columns: Sequence[str] = S.SHARD_SCHEMA.names) -> dict[str, ragged.Ragged | np.ndarray | list]:
        """`columns` of the given global rows, in the given order (repeats allowed).

        List columns come back as `Ragged`, gathered with numpy straight from the shards'
        memory-mapped Arrow offsets and values (no Python object per token); numeric and bool
        columns as numpy arrays; string columns as Python lists.
        """
        indices = np.asarray(indices, dtype=np.int64)
        if len(indices) and (indices.min() < 0 or indices.max() >= self.num_rows):
            raise IndexError(f"{self.dir}: row index out of range [0, {self.num_rows})")
        shard_of = np.searchsorted(self.starts, indices, side="right") - 1
        local = indices - self.starts[shard_of]
        touched = np.unique(shard_of).tolist()
        out = {}
        for name in columns:
            views = {k: self._view(k, name) for k in touched}
            if name in _LIST_COLUMNS:
                sources = [views.get(k) for k in range(len(self.manifest.shards))]
                out[name] = ragged.take_many(sources, shard_of, local) if touched else ragged.Ragged(np.zeros(0), np.zeros(1, np.int64))
            elif name in _STRING_COLUMNS:
                out[name] = [None] * len(indices)
                for k in touched:
                    where = np.flatnonzero(shard_of == k)
                    for i, value in zip(where.tolist(), views[k].take(pa.array(local[where])).to_pylist()):
                        out[name][i] = value
            else:
                values = np.empty(len(indices), dtype=views[touched[0]].dtype if touched else np.float64)
                for k in touched:
                    where = shard_of == k
                    values[where] = views[k][local[where]]
                out[name] = values
        return out

    def _view(self, k: int, name: str):
        """Shard k's column `name`: a zero-copy Ragged (lists), numpy array (numbers; bools are
        unpacked once, one byte a row), or the Arrow column (strings)."""
        key = (k, name)
        if key not in self._views:
            column = self.table(k).column(name)
            if name in _LIST_COLUMNS:
                self._views[key] = ragged.from_arrow(column)
            elif name in _STRING_COLUMNS:
                self._views[key] = column
            else:  # one chunk (write_shard writes one): float64 is a zero-copy view
                self._views[key] = column.chunk(0).to_numpy(zero_copy_only=False) if column.num_chunks == 1 else column.to_numpy()
        return self._views[key]


_LIST_COLUMNS = frozenset(f.name for f in S.SHARD_SCHEMA if isinstance(f.type, pa.ListType))
_STRING_COLUMNS = frozenset(f.name for f in S.SHARD_SCHEMA if pa.types.is_string(f.type))


@dataclass(frozen=True)
class BatchShape:
    batch_size: int
    grad_accum: int
    world_size: int

    @property
    def rows_per_step(self) -> int:
        return self.batch_size * self.grad_accum * self.world_size


def steps_per_epoch(num_rows: int, shape: BatchShape) -> int:
    return math.ceil(num_rows / shape.rows_per_step)


def epoch_plan(lengths: np.ndarray, shape: BatchShape, seed: int, epoch: int) -> np.ndarray:
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


COLLATE_COLUMNS = (S.PROMPT_IDS, S.COMPLETION_IDS, S.KL_COMPLETION_IDS, S.REF_LOGP, S.REF_KL_LOGP, S.LABEL)


def collate(cache: ShardedCache, indices: np.ndarray, pad_id: int, with_token_logps: bool = False) -> KTOBatch:
    """Build the micro-batch for `indices` ([B], -1 = filler) straight from the shards' buffers."""
    indices = np.asarray(indices, dtype=np.int64)
    valid = indices >= 0
    fill = int(indices[valid][0]) if valid.any() else 0
    columns = COLLATE_COLUMNS + ((S.REF_TOKEN_LOGPS,) if with_token_logps else ())
    rows = cache.rows(np.where(valid, indices, fill), columns)
    return KTOBatch(
        policy=make_token_batch(rows[S.PROMPT_IDS], rows[S.COMPLETION_IDS], pad_id),
        kl=make_token_batch(rows[S.PROMPT_IDS], rows[S.KL_COMPLETION_IDS], pad_id),
        ref_logp=torch.from_numpy(rows[S.REF_LOGP].astype(np.float64)),
        ref_kl_logp=torch.from_numpy(rows[S.REF_KL_LOGP].astype(np.float64)),
        desirable=torch.from_numpy(rows[S.LABEL].astype(bool)),
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

    def __init__(self, make):
        from concurrent.futures import ThreadPoolExecutor

        self.make = make
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="kto-prefetch")
        self.pending = None  # (key, Future)

    def get(self, key, next_key=None):
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
