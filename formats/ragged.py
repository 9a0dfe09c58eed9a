"""Variable-length rows as one flat array: the layout of an Arrow list column, in numpy.

An Arrow `list<…>` column already is `values` plus `offsets` (row i is
values[offsets[i]:offsets[i+1]]). A memory-mapped shard hands both out without copying, so a
batch of rows is gathered with numpy fancy indexing: one index array per batch, no Python
object per token. Imports numpy and pyarrow only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa


@dataclass(frozen=True)
class Ragged:
    """n rows of variable length.

    values:  [Σ lengths] the rows' elements, back to back
    offsets: [n + 1] int64, offsets[0] == 0; row i is values[offsets[i]:offsets[i + 1]]
    valid:   [n] bool, False on null rows (stored as empty), or None when no row is null
    """

    values: np.ndarray
    offsets: np.ndarray
    valid: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def to_list(self) -> list[np.ndarray | None]:
        """One array per row (a view into `values`), None for null rows."""
        r = packed(self)
        rows = np.split(r.values, r.offsets[1:-1]) if len(r) else []
        if self.valid is None:
            return rows
        return [r if ok else None for r, ok in zip(rows, self.valid.tolist())]

    @classmethod
    def from_rows(cls, rows: Sequence[Sequence], dtype: np.dtype | type = np.int64) -> Ragged:
        """From Python sequences or arrays (one np.concatenate; nothing per element in Python)."""
        offsets = np.zeros(len(rows) + 1, dtype=np.int64)
        np.cumsum([len(r) for r in rows], out=offsets[1:])
        values = np.concatenate([np.asarray(r, dtype=dtype) for r in rows]) if len(rows) else np.zeros(0, dtype)
        return cls(values.astype(dtype, copy=False), offsets)


def to_arrow(rows: Ragged | Sequence[Sequence] | None, type: pa.ListType, n: int = 0) -> pa.Array:
    """The Arrow list column of `rows` (a Ragged, or one sequence per row), its values cast to
    `type`'s value type and its offsets int32: the one list builder of the package (shards,
    staging, tools). None gives `n` null rows (a column not stored)."""
    if rows is None:
        return pa.nulls(n, type=type)
    r = packed(rows) if isinstance(rows, Ragged) else Ragged.from_rows(rows, type.value_type.to_pandas_dtype())
    values = r.values.astype(type.value_type.to_pandas_dtype(), copy=False)
    return pa.ListArray.from_arrays(pa.array(r.offsets.astype(np.int32)), pa.array(values))


def from_arrow(column: pa.ChunkedArray | pa.ListArray) -> Ragged:
    """Zero-copy view of a list column (one chunk, as `formats.shards.write_shard` writes).

    A column of several chunks is combined first, which copies it: shards written by this
    package never have more than one.
    """
    if isinstance(column, pa.ChunkedArray):
        if column.num_chunks == 0:
            return Ragged(np.zeros(0, column.type.value_type.to_pandas_dtype()), np.zeros(1, np.int64))
        column = column.chunk(0) if column.num_chunks == 1 else column.combine_chunks()
    # `offsets` honours a slice's start and `values` ignores it, so they index each other.
    offsets = column.offsets.to_numpy()
    values = column.values.to_numpy(zero_copy_only=column.values.null_count == 0)
    valid = None
    if column.null_count:
        valid = column.is_valid().to_numpy(zero_copy_only=False)
    # Offsets stay int32 (zero-copy); `take` widens the few it reads.
    return Ragged(values, offsets, valid)


def take(r: Ragged, rows: np.ndarray) -> Ragged:
    """Rows `rows` of `r`, in that order (repeats allowed), gathered into fresh arrays."""
    rows = np.asarray(rows, dtype=np.int64)
    return take_many([r], np.zeros(len(rows), dtype=np.int64), rows)


def take_many(sources: Sequence[Ragged | None], source_of: np.ndarray, rows: np.ndarray) -> Ragged:
    """Output row i is row rows[i] of sources[source_of[i]], gathered in one pass over the
    output: index arithmetic once for all rows, then one masked gather per source touched."""
    n = len(rows)
    touched = np.unique(source_of).tolist()
    starts, lengths = np.empty(n, dtype=np.int64), np.empty(n, dtype=np.int64)
    masks = {}
    for s in touched:
        masks[s] = where = source_of == s
        starts[where] = sources[s].offsets[rows[where]]
        lengths[where] = sources[s].offsets[rows[where] + 1] - starts[where]
    offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    dtype = sources[touched[0]].values.dtype if touched else np.int64
    if len(touched) <= 1:
        # Output element j of row i comes from its source's values[starts[i] + j - offsets[i]].
        position = np.repeat(starts - offsets[:-1], lengths) + np.arange(offsets[-1], dtype=np.int64)
        values = sources[touched[0]].values[position] if touched else np.zeros(0, dtype)
    else:
        values = np.empty(offsets[-1], dtype=dtype)
        # Per source, the output positions of its rows' tokens by index arithmetic over those
        # rows: O(tokens) in all. A mask over every token per source (or one argsort of all
        # tokens) cost 3x the per-row copies it replaced on a staging file, whose shard touches
        # all of its record batches (25 for 50k rows).
        for s in touched:
            mine = np.flatnonzero(masks[s])
            n_here = lengths[mine]
            first = np.zeros(len(mine), dtype=np.int64)
            np.cumsum(n_here[:-1], out=first[1:])
            step = np.arange(int(n_here.sum()), dtype=np.int64) - np.repeat(first, n_here)
            values[np.repeat(offsets[mine], n_here) + step] = sources[s].values[np.repeat(starts[mine], n_here) + step]
    valid = None
    if any(sources[s].valid is not None for s in touched):
        valid = np.ones(n, dtype=bool)
        for s in touched:
            if sources[s].valid is not None:
                valid[masks[s]] = sources[s].valid[rows[masks[s]]]
    return Ragged(values, offsets, valid)


def heads(r: Ragged, keep: np.ndarray) -> Ragged:
    """Row i's first keep[i] elements (at most its length), gathered into fresh arrays."""
    keep = np.asarray(keep, dtype=np.int64)
    offsets = np.zeros(len(keep) + 1, dtype=np.int64)
    np.cumsum(keep, out=offsets[1:])
    position = np.repeat(r.offsets[:-1].astype(np.int64) - offsets[:-1], keep) + np.arange(offsets[-1], dtype=np.int64)
    return Ragged(r.values[position], offsets)


def packed(r: Ragged) -> Ragged:
    """`r` with offsets[0] == 0 and no values outside its rows (a copy only when needed)."""
    if r.offsets[0] == 0 and len(r.values) == r.offsets[-1]:
        return r
    return take(r, np.arange(len(r)))
