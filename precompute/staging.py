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
- The file is a shard without its later phases: the declared STAGE columns of the shard schema
  (formats/schema.py `COLUMNS`), then staging's own `BOOKKEEPING`. Shards are filled through
  the one random-access reader of Arrow rows (formats/cache.py `ArrowFile`, the gathers the
  cache reader uses), which maps the file for one shard at a time and copies out only the rows
  that shard needs (its rows and their KL partners). Unmapping after each shard keeps the
  mapped pages out of the resident set.

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

from kto.formats import schema as S
from kto.formats.atomic import atomic_path
from kto.formats.cache import ArrowFile

from .inputs.examples import check_unique_ids

PREFIX = ".staging-"
BLOCK = 2048
WHOLE_COMPLETION = "completion_ids"

# Staging's own columns, after the declared STAGE columns (schema.COLUMNS): what splitting and
# pairing need per row, and the completion whole (it is cut once its KL partner is known).
BOOKKEEPING = (
    pa.field("source", pa.string()),
    pa.field("kept", pa.bool_()),
    pa.field("prefix_split", pa.bool_()),
    pa.field("prompt_cut", pa.int8()),  # plan.PromptCut
    pa.field("id_key", pa.uint64()),
    pa.field("prompt_key", pa.uint64()),
    pa.field("completion_key", pa.uint64()),
    pa.field(WHOLE_COMPLETION, pa.list_(pa.int32())),
)


def staging_schema() -> pa.Schema:
    """A shard without its later phases: the declared STAGE columns, then BOOKKEEPING."""
    return pa.schema([*(c.field().with_nullable(True) for c in S.columns_of(S.Phase.STAGE)), *BOOKKEEPING])


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
        schema = staging_schema()
        writer = pa.ipc.new_file(str(tmp), schema) if main else None
        try:
            for block in _blocks(iter(examples), BLOCK):
                rows = _tokenize_block(block, tokenize_one, rank, world)
                if writer is not None:
                    writer.write_batch(_batch(block, rows, schema))
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


def stage_value(column: S.Column, example, row) -> object:
    """A declared STAGE column's value for one row: the tokenized row's attribute of that name,
    else its Example's (a dropped row, None, has no token ids)."""
    if row is not None and hasattr(row, column.name):
        return getattr(row, column.name)
    if hasattr(example, column.name):
        return getattr(example, column.name)
    return np.zeros(0, np.int32) if column.is_list else None


def _batch(block: list, rows: list, schema: pa.Schema) -> pa.RecordBatch:
    empty = np.zeros(0, np.int32)
    declared = [
        S.to_arrow([stage_value(c, ex, r) for ex, r in zip(block, rows)], c.type)
        if c.is_list
        else pa.array([stage_value(c, ex, r) for ex, r in zip(block, rows)], c.type)
        for c in S.columns_of(S.Phase.STAGE)
    ]
    return pa.record_batch(
        [
            *declared,
            pa.array([ex.source for ex in block], pa.string()),
            pa.array([r is not None for r in rows], pa.bool_()),
            pa.array([r is not None and r.prefix_split for r in rows], pa.bool_()),
            pa.array([int(r.prompt_cut) if r is not None else 0 for r in rows], pa.int8()),
            pa.array([text_key(ex.id) for ex in block], pa.uint64()),
            pa.array([text_key(ex.prompt, ex.tools) for ex in block], pa.uint64()),
            pa.array([text_key(ex.completion) for ex in block], pa.uint64()),
            S.to_arrow([r.completion_ids if r is not None else empty for r in rows], pa.list_(pa.int32())),
        ],
        schema=schema,
    )


# ---- reading ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class StagedIndex:
    """Fixed-size per-row columns of the staging file, in memory (staged row order)."""

    label: np.ndarray  # bool
    kept: np.ndarray
    prefix_split: np.ndarray
    prompt_cut: np.ndarray  # int8, plan.PromptCut
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


def check_staged_ids(index: StagedIndex, path: Path) -> None:
    """Ids must be unique over every staged row (dropped ones too), as read_examples required:
    the one check (inputs/examples.py), on the 64-bit id hashes of the index."""
    with ArrowFile(path) as reader:
        check_unique_ids(index.id_key, lambda i: reader.rows([i], ["id"])["id"][0], lambda i: reader.rows([i], ["source"])["source"][0])
