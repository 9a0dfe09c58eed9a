"""Stream a cache into KTO micro-batches: memory-mapped shards, seeded length-grouped plans.

The plan of an epoch is a pure function of (seed, epoch, rows, world size, batch shape), so a
resumed run rebuilds it and skips to its step, and every rank agrees on it without talking.

- Steps per epoch are fixed: ceil(rows / (batch · accum · world)). The LR schedule is thus
  known up front.
- No row is dropped and none is seen twice: the last step of an epoch may be short, and its
  empty slots are filled with a copy of a real row marked `valid = False`, which adds nothing
  to any loss, count or metric. Every rank therefore runs the same number of micro-batches,
  because a rank that runs dry hangs the collectives.
- Length grouping: rows are shuffled, cut into mega-batches of 16 steps, sorted by length inside
  each, cut into micro-batches, and the steps shuffled again, so padding stays low without a
  length curriculum.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from kto.formats import schema as S
from kto.formats.errors import InputError
from kto.formats.logprob import TokenBatch, make_token_batch
from kto.formats.manifest import Manifest, read_manifest
from kto.formats.shards import ShardVerifier, check_shard_values, open_shard, tokenizer_vocab_size

MEGABATCH_STEPS = 16
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

    def to(self, device) -> "KTOBatch":
        return KTOBatch(
            self.policy.to(device), self.kl.to(device), self.ref_logp.to(device), self.ref_kl_logp.to(device),
            self.desirable.to(device), self.valid.to(device), self.ref_token_logps,
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
            raise InputError(f"{path}: not a readable shard, truncated or corrupt ({' '.join(str(exc).split())[:200]}); "
                             f"{VERIFY_HINT.format(self.dir)}") from None
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

    def rows(self, indices: list[int]) -> dict[str, list]:
        """Columns of the given global rows, in order, as Python lists (ids as int lists)."""
        indices = np.asarray(indices, dtype=np.int64)
        shard_of = np.searchsorted(self.starts, indices, side="right") - 1
        parts, order = [], []
        for k in np.unique(shard_of):
            where = np.flatnonzero(shard_of == k)
            parts.append(self.table(int(k)).take(pa.array(indices[where] - self.starts[k])))
            order.append(where)
        # One `take` per shard touched, then back into the requested order.
        table = pa.concat_tables(parts).take(pa.array(np.argsort(np.concatenate(order), kind="stable")))
        return {name: table.column(name).to_pylist() for name in S.SHARD_SCHEMA.names}


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
    """[steps, world, accum, batch] global row indices; -1 marks an empty (filler) slot."""
    n, G = len(lengths), shape.rows_per_step
    steps = steps_per_epoch(n, shape)
    rng = np.random.default_rng([seed, epoch])
    perm = rng.permutation(n)
    mega = G * MEGABATCH_STEPS
    grouped = []
    for a in range(0, n, mega):
        block = perm[a:a + mega]
        # Stable sort by length (descending) so equal lengths keep their shuffled order.
        grouped.append(block[np.argsort(-lengths[block], kind="stable")])
    order = np.concatenate(grouped) if grouped else np.zeros(0, np.int64)
    padded = np.full(steps * G, -1, dtype=np.int64)
    padded[:n] = order
    # Consecutive rows (similar lengths) form a micro-batch; micro-batches go round-robin to
    # (rank, accumulation slot), so a short last step spreads its rows over every rank.
    micro = padded.reshape(steps, shape.grad_accum * shape.world_size, shape.batch_size)
    plan = micro.reshape(steps, shape.grad_accum, shape.world_size, shape.batch_size).transpose(0, 2, 1, 3)
    return plan[rng.permutation(steps)] if steps > 1 else plan


def collate(cache: ShardedCache, indices: np.ndarray, pad_id: int, with_token_logps: bool = False) -> KTOBatch:
    """Build the micro-batch for `indices` ([B], -1 = filler)."""
    valid = indices >= 0
    real = indices[valid]
    fill = int(real[0]) if len(real) else 0
    rows = cache.rows([int(i) if i >= 0 else fill for i in indices])
    return KTOBatch(
        policy=make_token_batch(rows[S.PROMPT_IDS], rows[S.COMPLETION_IDS], pad_id),
        kl=make_token_batch(rows[S.PROMPT_IDS], rows[S.KL_COMPLETION_IDS], pad_id),
        ref_logp=torch.tensor(rows[S.REF_LOGP], dtype=torch.float64),
        ref_kl_logp=torch.tensor(rows[S.REF_KL_LOGP], dtype=torch.float64),
        desirable=torch.tensor(rows[S.LABEL], dtype=torch.bool),
        valid=torch.as_tensor(valid),
        ref_token_logps=[np.asarray(x, np.float32) if x is not None else None for x in rows[S.REF_TOKEN_LOGPS]] if with_token_logps else None,
    )
