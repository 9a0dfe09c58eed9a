"""The staging file: every tokenized row (tokenize.py `tokenize_example`) spilled to one Arrow
IPC file in the output directory, its per-row index read back by plan.py. Moved out of
tokenize.py (2026-12-06, moves only): pipeline.py's stage_rows calls `stage` with tokenize.py's
row function, and nothing here imports tokenize.py (the rows are read by their attributes), so
that tokenize.py can still name this module's index for plan.py's import.
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.ipc

from kto.formats import schema as S
from kto.formats.atomic import atomic_path
from kto.formats.cache import ArrowFile
from kto.formats.errors import InputError, log
from kto.formats.paths import arrow_path
from kto.precompute.inputs.examples import Example, check_unique_ids

from .progress import Progress

# Staging: every tokenized row spilled to one Arrow IPC file in the output directory, so
# precompute's memory does not grow with the number of rows.
#
# - Rows are read and tokenized in blocks of `BLOCK` examples (with several processes each
#   tokenizes every N-th example of the block and the block is gathered), and each block becomes
#   one record batch of `OUT/.staging-KEY.arrow`, written under a temp name and renamed when
#   complete (kto.formats.atomic). KEY hashes everything that decides the token ids, so a resumed
#   run with the same inputs and configuration reuses the file instead of tokenizing again; the
#   cache's last step removes it.
# - What stays in memory is per-row and fixed-size (`StagedIndex`): label, flags, lengths and
#   64-bit keys of the prompt and completion text and of their staged ids (KL pairing compares
#   those, never the texts: plan.py `same_groups`) and of the id (the duplicate-id check). About
#   56 bytes a row.
# - The file is a shard without its later phases: the declared STAGE columns of the shard schema
#   (formats/schema.py `COLUMNS`), then staging's own `BOOKKEEPING`. Shards are filled through
#   the one random-access reader of Arrow rows (formats/cache.py `ArrowFile`, the gathers the
#   cache reader uses), which maps the file for one shard at a time and copies out only the rows
#   that shard needs (its rows and their KL partners). Unmapping after each shard keeps the
#   mapped pages out of the resident set.
#
# Rows are staged with their prompts cut (cutting a conversation by turns needs its messages and
# the chat template, tokenize.py) and their completions whole: a completion is cut behind each
# prompt it is paired with, which needs the KL partner. The staging KEY therefore includes the
# length limits and the truncation rule.
# Dropped rows (empty prompt or completion after tokenization) are staged too, with `kept` false and no
# ids, so their ids still take part in the duplicate check, as they did before staging.

PREFIX = ".staging-"
BLOCK = 2048
WHOLE_COMPLETION = "completion_ids"

# Staging's own columns, after the declared STAGE columns (schema.COLUMNS): what splitting and
# pairing need per row, and the completion whole (it is cut once its KL partner is known).
BOOKKEEPING = (
    pa.field("source", pa.string()),
    pa.field("kept", pa.bool_()),
    pa.field("prefix_split", pa.bool_()),
    pa.field("prompt_cut", pa.int8()),  # PromptCut
    pa.field("id_key", pa.uint64()),
    pa.field("prompt_key", pa.uint64()),
    pa.field("completion_key", pa.uint64()),
    # Keys of the ids as staged (the prompt as cut here, the whole completion): plan.py tells rows
    # apart by what the model sees as well as by their text (`same_groups`).
    pa.field("prompt_ids_key", pa.uint64()),
    pa.field("completion_ids_key", pa.uint64()),
    pa.field(WHOLE_COMPLETION, pa.list_(pa.int32())),
)


def completions_without_eos(path: Path, stops: set[int], decode: Callable[[list[int]], str]) -> tuple[int, int]:
    """(kept rows whose whole completion no stop id closes (`closed_by_stop`), kept rows) of a
    staging file; `decode` is the tokenizer's, for what follows a row's last stop id.

    Text rows always end with EOS (text_ids appends it, as TRL does). A chat row's completion
    ends as the template renders the assistant's turn: a template that closes it without the
    EOS token teaches the policy never to stop, and nothing in the numbers would show it.
    Read batch by batch, memory-mapped."""
    missing = kept_rows = 0
    with pa.memory_map(arrow_path(path)) as source:
        reader = pa.ipc.open_file(source)
        for b in range(reader.num_record_batches):
            batch = reader.get_batch(b)
            kept = batch.column("kept").to_numpy(zero_copy_only=False).astype(bool)
            completions = batch.column(WHOLE_COMPLETION)
            offsets = completions.offsets.to_numpy()
            values = completions.values.to_numpy() if len(completions.values) else np.zeros(0, np.int32)
            # Most rows end in a stop id (looked at all at once); the others are looked at one by one.
            closed, full = np.zeros(len(batch), dtype=bool), np.diff(offsets) > 0
            closed[full] = np.isin(values[offsets[1:][full] - 1], list(stops))
            for i in np.flatnonzero(kept & full & ~closed):
                closed[i] = closed_by_stop(values[offsets[i] : offsets[i + 1]], stops, decode)
            missing += int((kept & ~closed).sum())
            kept_rows += int(kept.sum())
    return missing, kept_rows


def closed_by_stop(ids: np.ndarray, stops: set[int], decode: Callable[[list[int]], str]) -> bool:
    """A stop id closes the completion: it is the last id, or only whitespace follows it (the
    "\n" SmolLM2's and Qwen's templates put after `<|im_end|>`). A stop id inside the text (a
    completion quoting `<|im_end|>`, read as that token) does not: the generation would go on
    after it under a template that closes turns otherwise."""
    if not len(ids):
        return False
    if int(ids[-1]) in stops:
        return True
    at = np.flatnonzero(np.isin(ids, list(stops)))
    return bool(len(at)) and not decode([int(i) for i in ids[at[-1] + 1 :]]).strip()


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


def ids_key(ids: np.ndarray) -> int:
    """64-bit key of a sequence of token ids, as text_key of a text (a dropped row's: of none)."""
    return int.from_bytes(hashlib.blake2b(np.asarray(ids, np.int32).tobytes(), digest_size=8).digest(), "little")


def is_staging_name(name: str) -> bool:
    """A staging file's name (what prepare_out_dir counts as the cache's own)."""
    return re.fullmatch(re.escape(PREFIX) + r"[0-9a-f]{24}\.arrow", name) is not None


def staging_path(out: Path, key: str) -> Path:
    return Path(out) / f"{PREFIX}{key[:24]}.arrow"


def staging_files(out: Path) -> set[Path]:
    """The staging files in `out` (none where it does not exist)."""
    return {p for p in (out.iterdir() if out.is_dir() else ()) if is_staging_name(p.name) and p.is_file() and not p.is_symlink()}


def stage(examples: Iterable, tokenize_one: Callable, path: Path, state=None, keep: Sequence[Path] = (), what: str = "--data") -> Path:
    """Tokenize every example into `path` (the caller looked for a complete one first, and every
    rank took the main process's answer: pipeline.stage_rows). Other staging files are removed
    once every row is staged (bad input leaves an unfinished run's staging as it was), but those
    in `keep` (the train rows', beside --eval-data's). `what`: the flag whose rows these are,
    named by the bar."""
    rank, world = (state.process_index, state.num_processes) if state is not None else (0, 1)
    main = rank == 0
    if main:
        path.parent.mkdir(parents=True, exist_ok=True)
    notes = _RowNotes()
    # The rows read and tokenized so far: 500k chat rows take minutes here, which passed in silence.
    bar = Progress(None, " rows", desc=f"kto-precompute tokenize {what}", enabled=main)  # no total: tqdm writes "16 rows"
    staged = False
    with atomic_path(path) if main else _nowhere() as tmp:
        schema = staging_schema()
        writer = pa.ipc.new_file(arrow_path(tmp), schema) if main else None  # ./~ is no $HOME to pyarrow
        try:
            for block in _blocks(iter(examples), BLOCK):
                rows = _tokenize_block(block, tokenize_one, rank, world)
                notes.add(rows)
                bar.update(len(block), sum(len(r.prompt_ids) + len(r.completion_ids) for r in rows if r is not None))
                if writer is not None:
                    writer.write_batch(_batch(block, rows, schema))
            staged = True
        finally:
            if writer is not None:
                writer.close()
            # Off a terminal its last line only after a line of its own (30 s), so a short staging
            # adds none to a log; and none after a refused row: the error is the log's last line.
            bar.close(finished=staged and bar.lines is not None and bar.lines.drawn_n > 0)
    if main:
        notes.say()
        for old in staging_files(path.parent) - {path, *keep}:
            old.unlink()  # made for another configuration: useless now
    if state is not None:
        state.wait_for_everyone()
    return path


class _RowNotes:
    """What stage()'s notes count over the tokenized rows: a count of each kind and the first
    row, not the rows (memory stays flat as rows grow)."""

    def __init__(self) -> None:
        self.kept, self.short_by_kind, self.first_short = 0, Counter(), None
        self.control, self.first_control = 0, None
        self.from_end, self.first_from_end, self.headers = 0, [], (0, 0)

    def add(self, rows: list) -> None:
        kept = [r for r in rows if r is not None]
        self.kept += len(kept)
        short = [r for r in kept if r.completion_text_dropped]
        self.first_short = self.first_short or (short[0].example if short else None)
        self.short_by_kind.update(r.completion_text_dropped for r in short)
        control = [r for r in kept if r.control_text]
        self.first_control = self.first_control or (control[0] if control else None)
        self.control += len(control)
        from_end = [r.example for r in kept if r.prompt_from_end]
        self.first_from_end += from_end[: 3 - len(self.first_from_end)]
        self.from_end += len(from_end)
        bound = [r.headers_alone for r in kept if r.prompt_from_end and r.headers_alone]
        self.headers = (self.headers[0] + len(bound), max([self.headers[1], *bound]))

    def say(self) -> None:
        _note_dropped_text(self.short_by_kind, self.kept, self.first_short)
        _note_control_text(self.control, self.kept, self.first_control)
        _note_prompt_from_end(self.from_end, self.kept, self.first_from_end, self.headers)


def _note_prompt_from_end(n: int, kept: int, first: list[Example], headers: tuple[int, int]) -> None:
    """One line for the conversations whose prompt kept its ids' end, the last resort of the cut
    (prompt_cut.py): no cut inside a text with its headers kept fitted (the template rewrites the
    texts, there is no fast tokenizer, or the headers alone are too long), so the prompt starts
    inside a text with no turn header. Counted as cut mid-text; only this note tells them apart.
    `headers`: how many of them no cut could fit, their turn headers alone filling the budget,
    and the most ids those took: for those, only a larger --max-prompt-length helps."""
    if not (n and first):
        return
    bound, longest = headers
    if bound == n:
        them = "their" if n > 1 else "its"
        advice = f"{them} turn headers alone (every text left out) take {longest} tokens: raise --max-prompt-length to at least {longest + 1}"
    elif bound:
        advice = (
            f"in {bound} of them the turn headers alone (every text left out) take up to {longest} tokens: raise --max-prompt-length "
            f"to at least {longest + 1}, or shorten the others"
        )
    else:
        advice = f"raise --max-prompt-length, or shorten {'those rows' if n > 1 else 'that row'}"
    log(
        f"note: {n} of {kept} rows: the prompt could not be cut inside a text with its turn headers kept, so it keeps its last "
        f"--max-prompt-length tokens and starts inside a text, with no turn header ({_rows_named(first, n)}); {advice}"
    )


def _rows_named(first: list[Example], n: int) -> str:
    """`data.jsonl: rows 1 (id 'a'), 2 (id 'b') and 5 more`: each file named once."""
    by_file: dict[str, list[str]] = {}
    for ex in first:
        file, _, row = ex.source.rpartition(": row ")
        file, row = (file, row) if file else (ex.source, "")
        by_file.setdefault(file, []).append(f"{row} (id {ex.id!r})" if row else f"(id {ex.id!r})")
    named = "; ".join(f"{file}: row{'s' if len(rows) > 1 else ''} {', '.join(rows)}" for file, rows in by_file.items())
    return named + (f" and {n - len(first)} more" if n > len(first) else "")


def _note_control_text(n: int, kept: int, first: object | None) -> None:
    """One line for the rows whose text holds a special token's string: it is tokenized as that
    token, as TRL and LLaMA-Factory tokenize it (not refused: text a chat template rendered
    beforehand means it; a text that quotes one trains a control token where words stood)."""
    if n and first is not None:
        ex = first.example
        log(
            f"note: {n} of {kept} rows: the text holds a special token's string, tokenized as that token (first {ex.source} (id {ex.id!r}): "
            f"{first.control_text!r}), as TRL and LLaMA-Factory do; where the text only quotes it, remove it from the text"
        )


def _note_dropped_text(by_kind: Counter, kept: int, first: Example | None) -> None:
    """One line for the rows whose completion text the template dropped part of, counted by what
    it dropped (not refused: TRL trains them the same way, and a template that strips reasoning
    means to)."""
    n = sum(by_kind.values())
    if n and first is not None:
        what = ", ".join(f"{kind.words} ({count} row{'s' if count != 1 else ''})" for kind, count in sorted(by_kind.items()))
        log(
            f"note: {n} of {kept} rows: the chat template dropped part of the completion's text (first {first.source} (id {first.id!r})): "
            f"{what}; it is not trained: to train it, pass a --chat-template that renders it"
        )


class _nowhere:
    """Non-main processes write nothing; a context manager standing in for atomic_path."""

    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def _blocks(it: Iterator, size: int) -> Iterator[list]:
    while block := list(islice(it, size)):
        yield block


@dataclass(frozen=True)
class _Refused:
    """The first row of a rank's share that tokenization refused (an InputError), gathered in
    place of the share's rows."""

    position: int
    """The row's index in the block."""
    message: str


def _tokenize_share(block: list, tokenize_one: Callable, rank: int, world: int) -> list | _Refused:
    """This rank's rows of the block (every world-th from `rank`), or the first one refused."""
    rows = []
    for position in range(rank, len(block), world):
        try:
            rows.append(tokenize_one(block[position]))
        except InputError as exc:
            return _Refused(position, str(exc))  # the share's later rows come later in the block
    return rows


def _tokenize_block(block: list, tokenize_one: Callable, rank: int, world: int) -> list:
    """Every row of the block tokenized: each rank tokenizes its share and the shares are gathered.

    A row refused on one rank is refused on all, with the message of the block's earliest
    refused row (the one a single process stops at): a rank that raised alone would leave the
    others waiting in the gather (a hang, or gloo's traceback once its peer is gone)."""
    if world == 1:
        return [tokenize_one(ex) for ex in block]
    import torch.distributed as dist

    parts: list = [None] * world
    dist.all_gather_object(parts, _tokenize_share(block, tokenize_one, rank, world))
    refused = [part for part in parts if isinstance(part, _Refused)]
    if refused:
        # every rank gathered the same parts: the main process says it
        raise InputError(min(refused, key=lambda part: part.position).message, every_rank=True)
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
            pa.array([ids_key(r.prompt_ids if r is not None else empty) for r in rows], pa.uint64()),
            pa.array([ids_key(r.completion_ids if r is not None else empty) for r in rows], pa.uint64()),
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
    prompt_cut: np.ndarray  # int8, PromptCut
    id_key: np.ndarray  # uint64
    prompt_key: np.ndarray
    completion_key: np.ndarray
    prompt_ids_key: np.ndarray  # uint64: ids_key of the staged ids
    completion_ids_key: np.ndarray
    prompt_len: np.ndarray  # int64
    completion_len: np.ndarray
    max_id: np.ndarray  # int64: the row's largest token id (-1 for a dropped row), for the vocabulary check

    @property
    def n(self) -> int:
        return len(self.label)


def read_index(path: Path) -> StagedIndex:
    cols: dict[str, list] = {name: [] for name in StagedIndex.__dataclass_fields__}
    with pa.memory_map(arrow_path(path)) as source:
        reader = pa.ipc.open_file(source)
        for b in range(reader.num_record_batches):
            batch = reader.get_batch(b)
            for name in ("label", "kept", "prefix_split", "prompt_cut", "id_key", "prompt_key", "completion_key", "prompt_ids_key", "completion_ids_key"):
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
