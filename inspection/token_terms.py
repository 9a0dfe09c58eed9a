"""Exact statistics of every stored per-token term of a cache, in memory that does not grow with it.

kto-inspect summary's count, mean, min, max and linear quantiles of `ref_token_logps` by label,
equal to polars' (float32 quantiles computed in float64 and rounded to float32; the mean the
float64 sum over n, in float32; min and max skip NaN unless every term is NaN): the reference
query exploded the lists in polars, about twice the cache in RAM.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from kto.formats import schema as S

if TYPE_CHECKING:
    import pyarrow as pa

    from kto.formats.cache import ShardedCache

QUANTILES = (0.01, 0.1, 0.5, 0.9, 0.99)
STAT_NAMES = ("count", "mean", "min") + tuple(f"p{round(q * 100)}" for q in QUANTILES) + ("max",)


def blank_stats() -> dict:
    """The stats of nothing: every stat but the count is meaningless."""
    return {stat: (0 if stat == "count" else None) for stat in STAT_NAMES}


# polars' explode + quantile held every stored term of a label at once, with its label: about
# twice the cache in RAM. Here the terms are read from the memory map a slice at a time (at most
# about CHUNK_TOKENS terms), twice: pass 1 keeps count, sum, min, max and a histogram of the top
# 16 bits of an order-preserving key of each float32; pass 2 keeps, for the few bins that hold a
# quantile's rank, a histogram of the low 16 bits. A key's 32 bits are its float, so the value at
# every rank is known exactly: RAM holds 65,536-bin histograms, whatever the cache's size.
CHUNK_TOKENS = 1 << 18  # terms per slice: 1 MB of float32 (a few MB of temporaries at its peak)
KEEP_MAPPED_BYTES = 64 << 20  # the terms are page cache; each kept shard ~5 KB of Arrow objects (3,000: +14 MB)
BINS = 1 << 16


@dataclass
class TokenTerms:
    """One label's per-token terms: pass 1 (`fine_bins` None) keeps count, sum, NaN-ignoring
    min / max (as polars': NaN only when every term is NaN) and the coarse histogram; pass 2 the
    fine histograms of `fine_bins`. Slices wait in `pending` until CHUNK_TOKENS terms: a
    65,536-bin bincount per tiny slice made a cache of 3,000 one-row shards 3× slower."""

    count: int = 0
    total: float = 0.0
    low: float = math.nan
    high: float = math.nan
    coarse: np.ndarray = field(default_factory=lambda: np.zeros(BINS, np.int64))
    fine_bins: set[int] | None = None
    fine: dict[int, np.ndarray] = field(default_factory=dict)
    pending: list[np.ndarray] = field(default_factory=list)
    pending_terms: int = 0

    def add(self, values: np.ndarray) -> None:
        if len(values):
            self.pending.append(values)
            self.pending_terms += len(values)
        if self.pending_terms >= CHUNK_TOKENS:
            self.flush()

    def flush(self) -> None:
        if not self.pending:
            return
        # + 0.0 makes -0.0 +0.0: the two zeros are one value (polars ranks them equal), and keyed
        # apart they would print with either sign at a quantile or the max.
        values = np.concatenate(self.pending) + np.float32(0)
        self.pending, self.pending_terms = [], 0
        keys = _order_keys(values)
        if self.fine_bins is None:
            self.count += len(values)
            self.total += float(np.sum(values, dtype=np.float64))
            self.low = float(np.fmin(self.low, np.fmin.reduce(values)))
            self.high = float(np.fmax(self.high, np.fmax.reduce(values)))
            self.coarse += np.bincount(keys >> 16, minlength=BINS)
            return
        top = keys >> 16
        for b in self.fine_bins:
            self.fine[b] = self.fine.get(b, 0) + np.bincount(keys[top == b] & 0xFFFF, minlength=BINS)

    def start_pass_2(self) -> bool:
        """Pass 1 done: pick the coarse bins the quantiles' ranks fall in; False if none."""
        self.flush()
        self.fine_bins = {b for b, _ in self.ranks().values()} if self.count else set()
        return bool(self.fine_bins)

    def ranks(self) -> dict[int, tuple[int, int]]:
        """{rank: (its coarse bin, its rank inside the bin)} for the ranks the quantiles read."""
        ends = np.cumsum(self.coarse)
        out = {}
        for r in sorted({r for q in QUANTILES for r in _quantile_ranks(self.count, q)}):
            b = int(np.searchsorted(ends, r, side="right"))
            out[r] = (b, r - int(ends[b] - self.coarse[b]))
        return out

    def value(self, bin_and_rank: tuple[int, int]) -> float:
        b, r = bin_and_rank
        low16 = int(np.searchsorted(np.cumsum(self.fine[b]), r, side="right"))
        return _from_key((b << 16) | low16)

    def stats(self) -> dict:
        """The `_describe` aggregations of these terms: polars' float32 results, as Python floats."""
        if not self.count:
            return blank_stats()
        ranks = self.ranks()
        out = {"count": self.count, "mean": float(np.float32(self.total / self.count)), "min": self.low}
        for q in QUANTILES:
            lo, hi = _quantile_ranks(self.count, q)
            out[f"p{round(q * 100)}"] = _linear(self.value(ranks[lo]), self.value(ranks[hi]), (self.count - 1) * q - lo)
        return out | {"max": self.high}


def _order_keys(values: np.ndarray) -> np.ndarray:
    """uint32 keys that sort as the float32 values do (negatives: every bit flipped; the rest:
    the sign bit set), every NaN last, as polars sorts them."""
    bits = values.view(np.uint32)
    keys = np.where(bits >> 31, ~bits, bits | np.uint32(0x80000000))
    keys[np.isnan(values)] = 0xFFFFFFFF
    return keys


def _from_key(key: int) -> float:
    bits = key & 0x7FFFFFFF if key >> 31 else ~key & 0xFFFFFFFF
    return float(np.uint32(bits).view(np.float32))


def _quantile_ranks(n: int, q: float) -> tuple[int, int]:
    """The two sorted positions polars' "linear" quantile reads: floor and ceil of (n - 1) q."""
    at = (n - 1) * q
    return min(int(at), n - 1), min(math.ceil(at), n - 1)


def _linear(lower: float, upper: float, fraction: float) -> float:
    """polars' linear interpolation for a float32 column: in float64, then rounded to float32."""
    if lower == upper:
        return lower
    return float(np.float32(fraction * (upper - lower) + lower))


def token_stats(cache: ShardedCache, terms: dict[bool, TokenTerms], mapped: list[pa.Table] | None) -> dict[bool, dict]:
    """{label: {"token:count": ..., "token:p50": ...}}: pass 2 over the shards (`mapped`, or
    each opened again; pass 1 was `_first_pass`), then every stored term's statistics."""
    if any([t.start_pass_2() for t in terms.values()]):  # a list: every label starts pass 2
        for table in mapped if mapped is not None else map(cache.open_shard, range(cache.num_shards)):  # checked by _first_pass
            for label, values in shard_slices(table):
                terms[label].add(values)
        for t in terms.values():
            t.flush()
    return {label: {f"token:{stat}": v for stat, v in t.stats().items()} for label, t in terms.items()}


def shard_slices(table: pa.Table) -> Iterator[tuple[bool, np.ndarray]]:
    """(label, float32 terms) of every stored ref_token_logps term of a shard, at most
    CHUNK_TOKENS terms a slice, null lists and null terms left out (explode + drop_nulls)."""
    # 1 desirable, 0 undesirable, -1 null (a tampered shard: polars groups it apart, as here)
    labels = np.concatenate([np.where(_valid(a), _bits(a, 1), -1).astype(np.int8) for a in table.column(S.LABEL).chunks] or [np.zeros(0, np.int8)])
    first = 0
    for lists in table.column(S.REF_TOKEN_LOGPS).chunks:
        rows = labels[first : first + len(lists)]
        first += len(lists)
        if lists.null_count < len(lists):  # all null: made with --no-token-logps
            yield from _list_slices(lists, rows)


def _list_slices(lists: pa.ListArray, labels: np.ndarray) -> Iterator[tuple[bool, np.ndarray]]:
    """`shard_slices` of one list array: cut by terms, not rows, so one long row cannot make
    a slice longer than CHUNK_TOKENS."""
    keep_rows = _valid(lists)  # Arrow lets a null list span terms: they are not its
    offsets = np.frombuffer(lists.buffers()[1], np.int32)[lists.offset : lists.offset + len(lists) + 1]
    terms = lists.values  # offsets index it from its own start
    values = np.frombuffer(terms.buffers()[1], np.float32)[terms.offset : terms.offset + len(terms)]  # a view of the map
    keep_terms = _valid(terms) if terms.null_count else None
    for a in range(int(offsets[0]), int(offsets[-1]), CHUNK_TOKENS):
        b = min(a + CHUNK_TOKENS, int(offsets[-1]))
        r0, r1 = int(np.searchsorted(offsets, a, side="right")) - 1, int(np.searchsorted(offsets, b, side="left"))
        counts = np.clip(offsets[r0 + 1 : r1 + 1], a, b) - np.clip(offsets[r0:r1], a, b)  # each row's terms in [a, b)
        for label in (True, False):
            mask = np.repeat(keep_rows[r0:r1] & (labels[r0:r1] == label), counts)
            if keep_terms is not None:
                mask &= keep_terms[a:b]
            yield label, values[a:b][mask]


# numpy views of Arrow buffers, not pyarrow's to_numpy: that imports pandas (+27 MB of RSS).
def _bits(array: pa.Array, buffer: int) -> np.ndarray:
    """Bitmap `buffer` of `array` (0: validity, 1: a bool array's values), one bool per slot."""
    n, bitmap = len(array), array.buffers()[buffer]
    return np.unpackbits(np.frombuffer(bitmap, np.uint8), count=array.offset + n, bitorder="little")[array.offset :].astype(bool)


def _valid(array: pa.Array) -> np.ndarray:
    return _bits(array, 0) if array.null_count else np.ones(len(array), bool)
