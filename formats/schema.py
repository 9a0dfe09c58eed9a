"""The shard schema: column names and Arrow types. Every reader and writer goes through here.

Its list columns are held in memory as `Ragged` (flat values + offsets, the layout of an Arrow
list column; end of this module): the one list builder and the one gather of the writer, the
staging file and the cache reader.

One shard row is one example, with its mismatched KL partner already attached. Rows are stored
in the KL pairing's cycle order: row k's `kl_source_id` is normally row k+1's `id` (the last
row's is row 0's), so that kto-train can put a row and its partner in the same step.

The row is declared once, in `COLUMNS`: each column's name, Arrow type, the phase of
kto-precompute that fills it (`Phase`) and whether kto-train reads it. The shard schema, the
shard writer (shards.shard_table), the cache reader's gathers, kto-train's collation
(train/data.py) and the tests' expected schema all come from it; docs/design.md ("Adding a
column") walks through adding one.

When FORMAT_VERSION must change: when a cache written after a change would be refused or read
wrongly by the kto before it, or a cache written before would be read wrongly after it. That is:
- the shard schema: a column added, removed, renamed or retyped, or what a column or the order
  of rows means;
- manifest.json: a key readers need (in `counts`, the shard entries, `layout` keys training reads,
  or a `content` key every cache must carry) added, removed or changed in meaning. `Counts` and
  `CacheContent` refuse keys they do not know, so a new one there is a new version;
- what a stored number means (which positions a log-prob sums, its precision) when nothing in
  `content` records it. A rule that `content` does record (`truncation`, `dtype`, …) changes the
  fingerprint instead: precompute then refuses to resume the old cache, and it stays readable.
Not a new version: an optional `content` key written only when set (manifest.py CacheContent), an `info`
entry, a `layout` entry only precompute reads, a new file beside the shards.

Every reader refuses another version, older or newer, with one line naming both
(manifest.read_manifest, before anything else is read). There is no migration: re-run
kto-precompute.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from .errors import InputError

# When it must change: see the module docstring. History:
# 1: the first format.
# 2: rows stored in KL-cycle order (row k's partner is normally row k+1, the last row's row 0) and
#    prompts cut only when a row's longer sequence does not fit. Version-1 caches are refused.
# 3: a row's own sequence is cut only by its own length (its KL partner no longer cuts its
#    prompt), conversations are cut at turn boundaries, a KL completion may be longer than its
#    source row's stored completion (which was cut behind the source's own prompt), and the
#    manifest counts prompts cut by turns and mid-text. Version-2 caches are refused.
FORMAT_VERSION = 3

ID = "id"
LABEL = "label"
PROMPT_IDS = "prompt_ids"
COMPLETION_IDS = "completion_ids"
REF_LOGP = "ref_logp"
REF_TOKEN_LOGPS = "ref_token_logps"
KL_SOURCE_ID = "kl_source_id"
KL_COMPLETION_IDS = "kl_completion_ids"
REF_KL_LOGP = "ref_kl_logp"
REF_KL_TOKEN_LOGPS = "ref_kl_token_logps"
TRUNCATED = "truncated"


class Phase(enum.Enum):
    """The step of kto-precompute that fills a column."""

    STAGE = "stage"
    """At tokenization (precompute/tokenize.py): the value is an attribute of the tokenized row,
    or of its Example, of the column's name, staged with the row (precompute/staging.py, the staging file)."""
    PAIRING = "pairing"
    """Once the row's KL partner is known (precompute/plan.py), where completions are cut."""
    SCORE = "score"
    """By the reference model (precompute/pipeline.py `score_values`)."""


@dataclass(frozen=True)
class Column:
    """One shard column. `trained`: kto-train collates it into every micro-batch (a list column
    of token ids into the policy or KL TokenBatch; a number or bool into `KTOMicroBatch.columns`
    as a [B] tensor)."""

    name: str
    type: pa.DataType
    phase: Phase
    trained: bool
    doc: str
    nullable: bool = False

    @property
    def is_list(self) -> bool:
        return pa.types.is_list(self.type)

    @property
    def is_string(self) -> bool:
        return pa.types.is_string(self.type)

    def field(self) -> pa.Field:
        return pa.field(self.name, self.type, nullable=self.nullable)


_I32, _F32 = pa.list_(pa.int32()), pa.list_(pa.float32())
COLUMNS: tuple[Column, ...] = (
    Column(ID, pa.string(), Phase.STAGE, False, "stable row id (input `id` column, or `file:row`)"),
    Column(LABEL, pa.bool_(), Phase.STAGE, True, "true = desirable"),
    Column(PROMPT_IDS, _I32, Phase.STAGE, True, "prompt tokens (cut only if the row's own sequence is too long)"),
    Column(COMPLETION_IDS, _I32, Phase.PAIRING, True, "completion tokens (truncated from the right)"),
    Column(REF_LOGP, pa.float64(), Phase.SCORE, True, "Σ over completion tokens of log πref(y_t | x, y_<t)"),
    Column(REF_TOKEN_LOGPS, _F32, Phase.SCORE, False, "the per-token terms of that sum (null when not stored; the step-0 check reads them)", True),
    Column(KL_SOURCE_ID, pa.string(), Phase.PAIRING, False, "id of the row whose completion forms the KL sequence"),
    Column(KL_COMPLETION_IDS, _I32, Phase.PAIRING, True, "that row's whole completion, cut to max_length − own prompt"),
    Column(REF_KL_LOGP, pa.float64(), Phase.SCORE, True, "Σ log πref(y'_t | x, y'_<t) over kl_completion_ids"),
    Column(REF_KL_TOKEN_LOGPS, _F32, Phase.SCORE, False, "per-token terms (null when not stored)", True),
    Column(TRUNCATED, pa.bool_(), Phase.PAIRING, False, "prompt or completion was cut to fit the length limits"),
)


def shard_schema(columns: tuple[Column, ...] | None = None) -> pa.Schema:
    """The Arrow schema of `columns` (the declared ones by default)."""
    return pa.schema([c.field() for c in (COLUMNS if columns is None else columns)])


def declared(name: str) -> Column:
    """The declared column `name` (KeyError when there is none)."""
    for c in COLUMNS:
        if c.name == name:
            return c
    raise KeyError(name)


def columns_of(phase: Phase) -> tuple[Column, ...]:
    """The declared columns `phase` fills, in shard order."""
    return tuple(c for c in COLUMNS if c.phase is phase)


# Derived from COLUMNS once; a temporary declaration (tests) replaces both together.
SHARD_SCHEMA = shard_schema()

SHARD_GLOB = "shard-*.arrow"
MANIFEST_NAME = "manifest.json"
TOKENIZER_DIR = "tokenizer"
EVAL_DIR = "eval"


def shard_name(index: int) -> str:
    return f"shard-{index:05d}.arrow"


def check_schema(schema: pa.Schema, where: str) -> None:
    """Raise ValueError naming `where` unless `schema` has exactly the shard columns: the same
    names, in the same order, with the same types. An extra column is not harmless: a shard
    carrying one (its sha256 patched into the manifest) passed as "schema agrees", and a polars
    scan of the cache then fails or shows the column for that shard only."""
    names, expected = schema.names, SHARD_SCHEMA.names
    for name in expected:
        if name not in names:
            raise ValueError(f"{where}: missing column {name!r}")
    extra = [n for n in names if n not in expected]
    if extra:
        raise ValueError(f"{where}: extra column(s) {', '.join(map(repr, extra))}; a shard has exactly the {len(expected)} columns of the shard schema")
    if names != expected:  # same set, so a repeated name or another order
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"{where}: column(s) {', '.join(map(repr, repeated))} appear more than once")
        raise ValueError(f"{where}: columns in the order {', '.join(names)}; the shard schema's is {', '.join(expected)}")
    for field in SHARD_SCHEMA:
        actual = schema.field(field.name).type
        if actual != field.type:
            raise ValueError(f"{where}: column {field.name!r} has type {actual}, expected {field.type}")


# ---- list columns in memory: Ragged -----------------------------------------------------------
# Variable-length rows as one flat array: the layout of an Arrow list column, in numpy.
#
# An Arrow `list<…>` column already is `values` plus `offsets` (row i is
# values[offsets[i]:offsets[i+1]]). A memory-mapped shard hands both out without copying, so a
# batch of rows is gathered with numpy fancy indexing: one index array per batch, no Python
# object per token. Imports numpy and pyarrow only.


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


def numpy_dtype(type: pa.DataType) -> np.dtype:
    """The numpy dtype of an Arrow number or bool type (int32 → int32, float → float32, bool → bool).
    Not `type.to_pandas_dtype()`: pyarrow 15 to 25 import pandas there, which is not a dependency."""
    return pa.array([], type=type).to_numpy(zero_copy_only=False).dtype


def to_arrow(rows: Ragged | Sequence[Sequence] | None, type: pa.ListType, n: int = 0) -> pa.Array:
    """The Arrow list column of `rows` (a Ragged, or one sequence per row), its values cast to
    `type`'s value type and its offsets int32: the one list builder of the package (shards,
    staging, tools). None gives `n` null rows (a column not stored)."""
    if rows is None:
        return pa.nulls(n, type=type)
    dtype = numpy_dtype(type.value_type)
    r = packed(rows) if isinstance(rows, Ragged) else Ragged.from_rows(rows, dtype)
    values = r.values.astype(dtype, copy=False)
    if len(r.offsets) and r.offsets[-1] > np.iinfo(np.int32).max:  # astype would wrap them silently
        # Only a shard of rows near --max-length's 2**31 gets here (4096 rows of 524,288 tokens):
        # refused when that shard is built, before it is written, rather than for every cache
        # whose --rows-per-shard × --max-length could (a large --max-length meaning "no cut").
        raise InputError(
            f"{r.offsets[-1]:,} tokens in one column of a shard: past the 2**31 - 1 its Arrow offsets hold; give a smaller --rows-per-shard (with --overwrite: it lays the shards out)"
        )
    return pa.ListArray.from_arrays(pa.array(r.offsets.astype(np.int32)), pa.array(values))


def from_arrow(column: pa.ChunkedArray | pa.ListArray) -> Ragged:
    """Zero-copy view of a list column (one chunk, as `formats.shards.write_shard` writes).

    A column of several chunks is combined first, which copies it: shards written by this
    package never have more than one.
    """
    if isinstance(column, pa.ChunkedArray):
        if column.num_chunks == 0:
            return Ragged(np.zeros(0, numpy_dtype(column.type.value_type)), np.zeros(1, np.int64))
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


def by_source(source_of: np.ndarray, count: int) -> tuple[np.ndarray, dict[int, tuple[int, int]]]:
    """The positions i grouped by source_of[i]: `order` (one stable argsort, so increasing
    within a source) and, for each of the `count` sources that appears, in source order, the
    span (lo, hi) of `order` that holds its positions. A gather from many sources then costs
    each source the rows taken from it: a mask over every row per source made filling a shard
    from the staging file (whose rows come from every one of its record batches) quadratic in
    the file's rows. A source outside [0, count) is an IndexError, as indexing it was."""
    if len(source_of) and (source_of.min() < 0 or source_of.max() >= count):
        raise IndexError(f"source {int(source_of.max() if source_of.max() >= count else source_of.min())} of {count}")
    order = np.argsort(source_of, kind="stable")
    bounds = np.searchsorted(source_of[order], np.arange(count + 1)).tolist()
    return order, {s: (bounds[s], bounds[s + 1]) for s in range(count) if bounds[s + 1] > bounds[s]}


def take_many(sources: Sequence[Ragged | None], source_of: np.ndarray, rows: np.ndarray) -> Ragged:
    """Output row i is row rows[i] of sources[source_of[i]], gathered in one pass over the
    output: the rows grouped by source once (`by_source`), then per source touched a gather of
    its rows' tokens by index arithmetic over those rows, O(tokens) in all. The arrays sized to
    every token are the output's alone: one over all tokens per step (or one argsort of all
    tokens) cost 2-6x the time and memory on long rows."""
    n = len(rows)
    order, spans = by_source(np.asarray(source_of, dtype=np.int64), len(sources))
    if len(spans) <= 1:
        return _take_one(sources[next(iter(spans))] if spans else None, rows)
    starts, lengths = np.empty(n, dtype=np.int64), np.empty(n, dtype=np.int64)
    for s, (lo, hi) in spans.items():
        mine = order[lo:hi]
        starts[mine] = sources[s].offsets[rows[mine]]
        lengths[mine] = sources[s].offsets[rows[mine] + 1] - starts[mine]
    offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    values = np.empty(offsets[-1], dtype=sources[next(iter(spans))].values.dtype)
    for s, (lo, hi) in spans.items():
        mine = order[lo:hi]
        n_here = lengths[mine]
        first = np.zeros(len(mine), dtype=np.int64)
        np.cumsum(n_here[:-1], out=first[1:])
        step = np.arange(int(n_here.sum()), dtype=np.int64) - np.repeat(first, n_here)
        values[np.repeat(offsets[mine], n_here) + step] = sources[s].values[np.repeat(starts[mine], n_here) + step]
    valid = None
    if any(sources[s].valid is not None for s in spans):
        valid = np.ones(n, dtype=bool)
        for s, (lo, hi) in spans.items():
            if sources[s].valid is not None:
                mine = order[lo:hi]
                valid[mine] = sources[s].valid[rows[mine]]
    return Ragged(values, offsets, valid)


def _take_one(source: Ragged | None, rows: np.ndarray) -> Ragged:
    """take_many from one source (or of no rows): output element j of row i is the source's
    values[starts[i] + j - offsets[i]]."""
    if source is None:
        return Ragged(np.zeros(0, np.int64), np.zeros(1, np.int64))
    starts = source.offsets[rows].astype(np.int64)
    lengths = source.offsets[rows + 1] - starts
    offsets = np.zeros(len(rows) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    position = np.repeat(starts - offsets[:-1], lengths) + np.arange(offsets[-1], dtype=np.int64)
    valid = None if source.valid is None else source.valid[rows]
    return Ragged(source.values[position], offsets, valid)


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
