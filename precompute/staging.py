"""Staging: every tokenized row spilled to one Arrow IPC file in the output directory, so
precompute's memory does not grow with the number of rows.

- Rows are read and tokenized in blocks of `BLOCK` examples (with several processes each
  tokenizes every N-th example of the block and the block is gathered), and each block becomes
  one record batch of `OUT/.staging-KEY.arrow`, written under a temp name and renamed when
  complete (kto.formats.atomic). KEY hashes everything that decides the token ids, so a resumed
  run with the same inputs and configuration reuses the file instead of tokenizing again; the
  cache's last step removes it.
- What stays in memory is per-row and fixed-size (`StagedIndex`): label, flags, lengths and
  64-bit keys of the prompt and completion text (KL pairing compares those, never the texts)
  and of the id (the duplicate-id check). About 40 bytes a row.
- Shards are filled by `StagingReader`, which memory-maps the file for one shard at a time and
  copies out only the rows that shard needs (its rows and their KL partners). Unmapping after
  each shard keeps the mapped pages out of the resident set (nanoGPT rebuilds its np.memmap per
  batch for the same reason).

Rows are staged with their prompts cut (cutting a conversation by turns needs its messages and
the chat template, tokenize.py) and their completions whole: a completion is cut behind each
prompt it is paired with, which needs the KL partner. The staging KEY therefore includes the
length limits and the truncation rule.
Dropped rows (empty prompt or completion after tokenization) are staged too, with `kept` false and no
ids, so their ids still take part in the duplicate check, as they did before staging.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.ipc

from kto.formats.atomic import atomic_path

from .inputs.example import check_unique_ids

PREFIX = ".staging-"
BLOCK = 2048

SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("source", pa.string()),
        ("label", pa.bool_()),
        ("kept", pa.bool_()),
        ("prefix_split", pa.bool_()),
        ("prompt_cut", pa.int8()),  # tokenize.PromptCut
        ("id_key", pa.uint64()),
        ("prompt_key", pa.uint64()),
        ("completion_key", pa.uint64()),
        ("prompt_ids", pa.list_(pa.int32())),
        ("completion_ids", pa.list_(pa.int32())),
    ]
)


def text_key(value, tools: tuple = ()) -> int:
    """64-bit key of a text, or of a message list (its repr, as the pairing compared before).
    Equal keys stand for equal texts: a collision among a million rows has odds of ~3e-8."""
    text = value if isinstance(value, str) else repr(value)
    if tools:  # the same messages with other tools render to another prompt
        text = repr((text, tools))
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little")


def is_staging_name(name: str) -> bool:
    """A staging file's name (what prepare_out_dir counts as the cache's own)."""
    return re.fullmatch(re.escape(PREFIX) + r"[0-9a-f]{24}\.arrow", name) is not None


def staging_path(out: Path, key: str) -> Path:
    return Path(out) / f"{PREFIX}{key[:24]}.arrow"


def stage(examples: Iterable, tokenize_one: Callable, path: Path, state=None) -> Path:
    """Tokenize every example into `path`, unless a complete staging file is already there."""
    rank, world = (state.process_index, state.num_processes) if state is not None else (0, 1)
    main = rank == 0
    if path.is_file():
        return path
    if main:
        path.parent.mkdir(parents=True, exist_ok=True)
        for old in path.parent.glob(f"{PREFIX}*.arrow"):
            old.unlink()  # made for another configuration: useless now
    with atomic_path(path) if main else _nowhere() as tmp:
        writer = pa.ipc.new_file(str(tmp), SCHEMA) if main else None
        try:
            for block in _blocks(iter(examples), BLOCK):
                rows = _tokenize_block(block, tokenize_one, rank, world)
                if writer is not None:
                    writer.write_batch(_batch(block, rows))
        finally:
            if writer is not None:
                writer.close()
    if state is not None:
        state.wait_for_everyone()
    return path


class _nowhere:
    """Non-main processes write nothing; a context manager standing in for atomic_path."""

    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def _blocks(it: Iterator, size: int) -> Iterator[list]:
    while block := list(islice(it, size)):
        yield block


def _tokenize_block(block: list, tokenize_one: Callable, rank: int, world: int) -> list:
    mine = [tokenize_one(ex) for ex in block[rank::world]]
    if world == 1:
        return mine
    import torch.distributed as dist

    parts: list = [None] * world
    dist.all_gather_object(parts, mine)
    rows: list = [None] * len(block)
    for r, part in enumerate(parts):
        rows[r::world] = part
    return rows


def _int_lists(arrays: list[np.ndarray]) -> pa.Array:
    offsets = np.zeros(len(arrays) + 1, dtype=np.int32)
    np.cumsum([len(a) for a in arrays], out=offsets[1:])
    values = np.concatenate(arrays).astype(np.int32) if arrays else np.zeros(0, np.int32)
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(values))


def _batch(block: list, rows: list) -> pa.RecordBatch:
    empty = np.zeros(0, np.int32)
    kept = [r is not None for r in rows]
    return pa.record_batch(
        [
            pa.array([ex.id for ex in block], pa.string()),
            pa.array([ex.source for ex in block], pa.string()),
            pa.array([ex.label for ex in block], pa.bool_()),
            pa.array(kept, pa.bool_()),
            pa.array([r is not None and r.prefix_split for r in rows], pa.bool_()),
            pa.array([int(r.prompt_cut) if r is not None else 0 for r in rows], pa.int8()),
            pa.array([text_key(ex.id) for ex in block], pa.uint64()),
            pa.array([text_key(ex.prompt, ex.tools) for ex in block], pa.uint64()),
            pa.array([text_key(ex.completion) for ex in block], pa.uint64()),
            _int_lists([r.prompt_ids if r is not None else empty for r in rows]),
            _int_lists([r.completion_ids if r is not None else empty for r in rows]),
        ],
        schema=SCHEMA,
    )


# ---- reading ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class StagedIndex:
    """Fixed-size per-row columns of the staging file, in memory (staged row order)."""

    label: np.ndarray  # bool
    kept: np.ndarray
    prefix_split: np.ndarray
    prompt_cut: np.ndarray  # int8, tokenize.PromptCut
    id_key: np.ndarray  # uint64
    prompt_key: np.ndarray
    completion_key: np.ndarray
    prompt_len: np.ndarray  # int64
    completion_len: np.ndarray
    max_id: np.ndarray  # int64: the row's largest token id (-1 for a dropped row), for the vocabulary check

    @property
    def n(self) -> int:
        return len(self.label)


def read_index(path: Path) -> StagedIndex:
    cols: dict[str, list] = {name: [] for name in StagedIndex.__dataclass_fields__}
    with pa.memory_map(str(path)) as source:
        reader = pa.ipc.open_file(source)
        for b in range(reader.num_record_batches):
            batch = reader.get_batch(b)
            for name in ("label", "kept", "prefix_split", "prompt_cut", "id_key", "prompt_key", "completion_key"):
                cols[name].append(batch.column(name).to_numpy(zero_copy_only=False).copy())
            top = np.full(batch.num_rows, -1, dtype=np.int64)
            for name in ("prompt", "completion"):
                arr = batch.column(f"{name}_ids")
                offsets, values = arr.offsets.to_numpy(), arr.values.to_numpy()
                lengths = np.diff(offsets).astype(np.int64)
                cols[f"{name}_len"].append(lengths)
                full = lengths > 0
                if full.any():  # reduceat over the non-empty rows' starts
                    top[full] = np.maximum(top[full], np.maximum.reduceat(values, offsets[:-1][full]))
            cols["max_id"].append(top)
    return StagedIndex(**{k: np.concatenate(v) if v else np.zeros(0) for k, v in cols.items()})


class StagingReader:
    """Random access to staged rows by global index; map the file only while in a `with`."""

    def __init__(self, path: Path):
        self.path = path
        self._source = None

    def __enter__(self) -> StagingReader:
        self._source = pa.memory_map(str(self.path))
        self._reader = pa.ipc.open_file(self._source)
        sizes = [self._reader.get_batch(b).num_rows for b in range(self._reader.num_record_batches)]
        self._starts = np.concatenate([[0], np.cumsum(sizes)])
        self._batches: dict[int, dict] = {}
        return self

    def __exit__(self, *exc) -> None:
        self._batches.clear()
        self._reader = None
        self._source.close()
        self._source = None

    def _locate(self, i: int) -> tuple[dict, int]:
        b = int(np.searchsorted(self._starts, i, side="right")) - 1
        if b not in self._batches:
            batch = self._reader.get_batch(b)
            # numpy views into the map (no copy), made once per batch: per-row access is then
            # a slice, not a pyarrow scalar.
            views: dict = {"batch": batch}
            for name in ("prompt_ids", "completion_ids"):
                arr = batch.column(name)
                views[name] = (arr.offsets.to_numpy(), arr.values.to_numpy())
            for name in ("label",):
                views[name] = batch.column(name).to_numpy(zero_copy_only=False)
            self._batches[b] = views
        return self._batches[b], i - int(self._starts[b])

    def value(self, column: str, i: int):
        views, o = self._locate(i)
        if column == "label":
            return bool(views[column][o])
        return views["batch"].column(column)[o].as_py()

    def take(self, indices: np.ndarray, column: str) -> list:
        """Column values of rows `indices`, in that order: token ids as int32 copies, others as
        Python values. One pyarrow take per record batch touched, not one call per row."""
        indices = np.asarray(indices, dtype=np.int64)
        b = np.searchsorted(self._starts, indices, side="right") - 1
        o = indices - self._starts[b]
        out: list = [None] * len(indices)
        order = np.argsort(b, kind="stable")
        bounds = np.flatnonzero(np.diff(b[order])) + 1
        for group in np.split(order, bounds):
            if not len(group):
                continue
            views, _ = self._locate(int(self._starts[b[group[0]]]))
            rows = o[group]
            if column.endswith("_ids"):
                offsets, values = views[column]
                got = [values[offsets[r] : offsets[r + 1]].copy() for r in rows.tolist()]
            else:
                got = views["batch"].column(column).take(pa.array(rows)).to_pylist()
            for k, v in zip(group.tolist(), got):
                out[k] = v
        return out

    def ids(self, column: str, i: int) -> np.ndarray:
        """A copy (int32) of row i's token ids, so nothing keeps the map alive."""
        views, o = self._locate(i)
        offsets, values = views[column]
        return values[offsets[o] : offsets[o + 1]].copy()


def check_staged_ids(index: StagedIndex, path: Path) -> None:
    """Ids must be unique over every staged row (dropped ones too), as read_examples required:
    the one check (inputs/example.py), on the 64-bit id hashes of the index."""
    with StagingReader(path) as reader:
        check_unique_ids(index.id_key, lambda i: reader.value("id", i), lambda i: reader.value("source", i))
