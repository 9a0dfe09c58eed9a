"""Arrow IPC shards: write one atomically (journal first), check its sha256 once, check its values (cache.py opens them).

Shards are Arrow IPC *files* (random access), so `pl.scan_ipc("DIR/*.arrow")` reads them and a
reader can memory-map them: RAM does not grow with the dataset, the page cache does the work.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager as ContextManager
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.ipc as ipc

from . import schema as S
from .atomic import atomic_path, names_write_errors, write_json_atomic
from .errors import InputError
from .files import read_json, sha256_file
from .paths import arrow_path

VERIFIED_NAME = ".verified.json"
# Shard-level schema metadata (string keys and values): the content fingerprint and the layout
# that produced the shard. `kto-inspect verify` refuses a shard whose fingerprint tag is not its
# manifest's (a shard copied from another cache with its sha256 patched into the manifest).
FINGERPRINT_TAG = "kto.fingerprint"
LAYOUT_TAG = "kto.layout"
MAX_LINES_PER_CHECK = 10  # a broken shard could otherwise give one line per row


def tree_hashes(folder: Path) -> dict[str, str]:
    """{relative path: sha256} of every file under `folder` (folders themselves are implied):
    the record that precompute's tokenizer/ and kto-train's checkpoints are checked against."""
    folder = Path(folder)
    return {str(p.relative_to(folder)): sha256_file(p) for p in sorted(folder.rglob("*")) if p.is_file()}


def shard_table(values: Mapping[str, Any], *, fill_missing: bool = False) -> pa.Table:
    """A shard's table from each declared column's values (schema.COLUMNS, in shard order):
    list columns as a Ragged or one numpy array per row (None: not stored, all null; Python
    lists, nulls included, also do), the others as one value per row. kto-precompute's writer
    and the tools build shards here. `fill_missing` (tools and tests that build shards by hand):
    a declared column without values gets zeros of its type (empty lists, "", False, 0), so
    such code names only the columns it cares about."""
    n = len(values[S.ID])
    missing = [c for c in S.COLUMNS if c.name not in values]
    if missing and not fill_missing:
        raise ValueError(f"shard_table: no values for declared column(s) {', '.join(c.name for c in missing)}")
    values = {**values, **{c.name: [_zero(c)] * n for c in missing}}
    return pa.table({c.name: _array(c, values[c.name], n) for c in S.COLUMNS}, schema=S.SHARD_SCHEMA)


def _zero(column: S.Column) -> object:
    if column.is_list:
        return []
    return "" if column.is_string else S.numpy_dtype(column.type).type(0).item()


def _array(column: S.Column, values: Any, n: int) -> pa.Array:
    fast = values is None or isinstance(values, S.Ragged) or all(isinstance(v, np.ndarray) for v in values)
    return S.to_arrow(values, column.type, n) if column.is_list and fast else pa.array(values, column.type)


def write_shard(path: Path, table: pa.Table, metadata: dict[str, str], announce: Callable[[str], None] | None = None) -> str:
    """Write `table` (cast to the shard schema) to `path` atomically; return its sha256.
    `announce(sha256)`: called once the bytes under the temp name are complete, before the rename
    makes them visible (the journal records them there). One temp name per write, atomic_path's:
    a kill anywhere leaves `.NAME.tmp-PID-THREAD`, a name the cache's rerun clears."""
    table = table.select(S.SHARD_SCHEMA.names).cast(S.SHARD_SCHEMA)
    table = table.replace_schema_metadata(metadata)
    with atomic_path(path) as tmp:
        # No compression: memory-mapped reads then hand out zero-copy buffers.
        with ipc.new_file(arrow_path(tmp), table.schema) as writer:  # pyarrow expands a leading ~ itself
            writer.write_table(table, max_chunksize=max(1, table.num_rows))
        sha = sha256_file(tmp)
        if announce is not None:
            announce(sha)
    return sha


def shard_tags(fingerprint: str, layout: dict) -> dict[str, str]:
    """The metadata kto-precompute writes into every shard's schema."""
    return {FINGERPRINT_TAG: fingerprint, LAYOUT_TAG: json.dumps(layout, sort_keys=True)}


# ---- the write journal (kto-precompute's shards are written through it) -----------------------

JOURNAL_DIR = ".journal"
NEXT_DIR = ".next"  # where kto-precompute --overwrite builds the new cache, inside OUT, until it swaps it in
RUN = "run.json"
TOKENIZER = "tokenizer.json"


class Journal:
    """The write journal: what this cache's own runs wrote, recorded as they wrote it.

    `OUT/.journal/` (and `OUT/eval/.journal/`) holds small JSON files, each written atomically:

    - `run.json`: the content (fingerprint, inputs) and layout of the run that owns the directory,
      written before anything else, so a resumed run can say what changed since;
    - `shard-NNNNN.arrow.json`: fingerprint, layout, row count and sha256 of one shard, written
      *after* the shard's bytes are complete but *before* they are renamed into place, so every
      shard that appears in the directory was announced first;
    - `tokenizer.json`: the sha256 of each file of `tokenizer/`, likewise written before the rename.

    The journal is the proof of ownership and of integrity: a resumed run keeps a shard only when
    its sha256 equals the one recorded when it was written (a shard corrupted since is rebuilt, not
    re-hashed into a new manifest), the manifest takes its sha256s from here, and `--overwrite`
    removes only what the journal or the manifest names.
    """

    def __init__(self, out: Path):
        self.out = Path(out)
        self.dir = self.out / JOURNAL_DIR

    def _read(self, name: str) -> dict | None:
        try:
            obj = read_json(self.dir / name)
        except InputError:
            return None  # missing or unreadable (even nested too deeply): nothing is proven by it
        return obj if isinstance(obj, dict) else None

    def _write(self, name: str, obj: dict) -> None:
        # Inside the write's own handling: on a full ext4 disk a new folder needs a block, where
        # the empty temp file that the write makes first needs none.
        with names_write_errors(self.dir / name):
            self.dir.mkdir(parents=True, exist_ok=True)
        write_json_atomic(self.dir / name, obj)

    # ---- the run ----------------------------------------------------------------------------

    def run(self) -> dict | None:
        return self._read(RUN)

    def start(self, fingerprint: str, layout: dict, content: dict) -> None:
        if self.run() != {"fingerprint": fingerprint, "layout": layout, "content": content}:
            self._write(RUN, {"fingerprint": fingerprint, "layout": layout, "content": content})

    # ---- shards ------------------------------------------------------------------------------

    def shard(self, name: str) -> dict | None:
        return self._read(f"{name}.json")

    def shard_names(self) -> set[str]:
        if not self.dir.is_dir():
            return set()
        return {p.name.removesuffix(".json") for p in self.dir.glob("shard-*.arrow.json")}

    def recorded_sha(self, name: str, fingerprint: str, layout: dict) -> str | None:
        """The sha256 this configuration recorded for shard `name`, or None."""
        entry = self.shard(name)
        if entry and entry.get("fingerprint") == fingerprint and entry.get("layout") == layout:
            return entry.get("sha256")
        return None

    def is_done(self, name: str, fingerprint: str, layout: dict) -> bool:
        """The shard on disk is byte for byte the one this configuration recorded."""
        path = self.out / name
        sha = self.recorded_sha(name, fingerprint, layout)
        return sha is not None and path.is_file() and sha256_file(path) == sha

    def write_shard(self, name: str, table: pa.Table, tags: dict, fingerprint: str, layout: dict) -> str:
        """Write a shard: complete bytes under a temp name, record them, then rename into place.
        The one temp name is write_shard's (atomic_path's): a temp of a temp, which an earlier
        version made here, left `..NAME.tmp-P-T.tmp-P-T` behind a kill."""

        def record(sha: str) -> None:
            self._write(f"{name}.json", {"fingerprint": fingerprint, "layout": layout, "rows": table.num_rows, "sha256": sha})

        return write_shard(self.out / name, table, tags, announce=record)

    # ---- tokenizer/ --------------------------------------------------------------------------

    def record_tokenizer(self, folder: Path) -> None:
        self._write(TOKENIZER, {"files": tree_hashes(folder)})

    def owns_tokenizer(self, folder: Path) -> bool:
        """`folder` holds exactly the files, with exactly the bytes, that this cache wrote there."""
        entry = self._read(TOKENIZER)
        return bool(entry) and folder.is_dir() and not folder.is_symlink() and tree_hashes(folder) == entry.get("files")


def shard_fingerprint(table: pa.Table) -> str | None:
    """The fingerprint a shard was made for (its FINGERPRINT_TAG), or None when it has none."""
    tag = (table.schema.metadata or {}).get(FINGERPRINT_TAG.encode())
    return None if tag is None else tag.decode(errors="replace")


def fingerprint_problem(table: pa.Table, where: str | os.PathLike, fingerprint: str) -> str | None:
    """The line refusing a shard whose FINGERPRINT_TAG is not `fingerprint` (its manifest's): a
    shard copied from another cache, its sha256 patched into the manifest. Metadata only."""
    tag = shard_fingerprint(table)
    if tag == fingerprint:
        return None
    why = f"was made for fingerprint {tag[:16]}…" if tag else f"has no {FINGERPRINT_TAG} tag"
    return f"{where}: {why}, the manifest's is {fingerprint[:16]}…; the shard is not from this cache"


def array_problem(table: pa.Table, where: str | os.PathLike) -> str | None:
    """One line naming `where` unless every array of a mapped shard is sound Arrow (None when it
    is): list offsets that go down or run past their values, which pyarrow reads without
    complaint and which later crash a slice or a numpy repeat. `validate(full=True)` reads the
    offsets, validity bitmaps and string bytes: O(rows), no token or log-prob value is touched."""
    try:
        table.validate(full=True)
    except pa.ArrowException as exc:
        return offsets_problem(table, str(where)) or f"{where}: not a readable shard, corrupt ({' '.join(str(exc).split())[:200]})"
    return None


def offsets_problem(table: pa.Table, where: str) -> str | None:
    """The first row whose list offsets are unsound (negative start, negative length, past the
    column's values), as one line naming `where`, the row and the column; None when the
    offsets are sound. Vectorized with numpy over each list column's offsets."""
    for field in table.schema:
        if not pa.types.is_list(field.type):
            continue
        start = 0
        for chunk in table.column(field.name).chunks:
            offsets, n = chunk.offsets.to_numpy().astype(np.int64), len(chunk.values)
            a, b = offsets[:-1], offsets[1:]
            bad = np.flatnonzero((a < 0) | (b < a) | (b > n))
            if len(bad):
                i = int(bad[0])
                why = "starts before its values" if a[i] < 0 else "a negative length" if b[i] < a[i] else f"past its {n} values"
                return f"{_row(table, where, start + i)}: {field.name} spans offsets {a[i]}..{b[i]}, {why}; the shard is corrupt"
            start += len(chunk)
    return None


def _row(table: pa.Table, where: str, i: int) -> str:
    """`where row N (id ...)`; without the id when the id column is itself unsound."""
    ids = table.column(S.ID)
    try:
        ids.validate(full=True)
        return f"{where} row {i + 1} (id {ids[i].as_py()!r})"
    except (pa.ArrowException, IndexError):
        return f"{where} row {i + 1}"


def list_lengths(column: pa.ChunkedArray) -> np.ndarray:
    """Per-row list lengths from the offsets buffer alone (no values are touched)."""
    return np.concatenate([np.diff(chunk.offsets.to_numpy()) for chunk in column.chunks]) if column.num_chunks else np.zeros(0, np.int64)


def shard_metadata(path: Path) -> dict[str, str]:
    """The string metadata stored in a shard's schema (reads the footer only)."""
    with pa.memory_map(arrow_path(path)) as source:
        meta = ipc.open_file(source).schema.metadata or {}
    return {k.decode(): v.decode() for k, v in meta.items()}


class ShardVerifier:
    """Checks each shard's sha256 against the manifest the first time it is read, and remembers it.

    The record (`.verified.json` in the cache dir, keyed by name) lets a second training run on
    the same cache start without re-hashing gigabytes. Its stamp is the file's size, mtime,
    ctime and inode: a shard written in place or replaced after verification is hashed again,
    even when its old mtime was put back (`os.utime` sets the ctime to now, and no call sets it
    back). Damage below the file system, which leaves every stamp alone, is what
    `kto-inspect verify` (always hashing) is for.
    """

    def __init__(self, cache_dir: Path, expected: dict[str, str], *, current: Callable[[], ContextManager[bool]] | None = None):
        """current: a context manager that says, for its block, whether the cache on disk is
        still the one these stamps are of (formats/held_shards.py still_current); none are
        written where it is not (a reader of the old cache after a --overwrite swap)."""
        self.cache_dir = Path(cache_dir)
        self.expected = expected
        self._current = current
        self._record_path = self.cache_dir / VERIFIED_NAME
        self._record = self._load_record()

    def _load_record(self) -> dict:
        # Only a stamp: missing, unreadable (even nested too deeply to parse) or not a mapping,
        # it is ignored and the shards are simply hashed again.
        if not self._record_path.exists():
            return {}
        try:
            record = read_json(self._record_path)
        except InputError:
            return {}
        return record if isinstance(record, dict) else {}

    def _stamp(self, name: str, fd: int | None) -> list:
        st = os.stat(self.cache_dir / name) if fd is None else os.fstat(fd)
        return [self.expected[name], st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]

    def stamped(self, name: str, fd: int | None = None) -> bool:
        """Shard `name` (read through `fd`, a descriptor of it, where given) was hashed before
        and its stamp still holds."""
        return self._record.get(name) == self._stamp(name, fd)

    def record(self, name: str, fd: int | None = None) -> None:
        """Remember that shard `name` (through `fd`) hashed to the manifest's sha256."""
        self._record[name] = self._stamp(name, fd)
        with self._current() if self._current is not None else contextlib.nullcontext(True) as current:
            if not current:
                return  # another cache now: its stamps are not ours to write
            try:
                write_json_atomic(self._record_path, self._record)
            except OSError:
                pass  # a read-only cache still works; it is just hashed again next time

    def verify(self, name: str) -> None:
        path = self.cache_dir / name
        if name not in self.expected:
            raise ValueError(f"{path}: not listed in the manifest")
        if not path.is_file():
            raise ValueError(f"{path}: listed in the manifest but missing")
        if self.stamped(name):
            return
        actual = sha256_file(path)
        if actual != self.expected[name]:
            raise ValueError(mismatch_line(path, actual, self.expected[name]))
        self.record(name)


def mismatch_line(path: Path, actual: str, expected: str) -> str:
    """The refusal of a shard whose sha256 is not its manifest's."""
    return f"{path}: sha256 {actual[:16]}… does not match the manifest's {expected[:16]}…; the shard was modified or is corrupt"


def sha256_fd(fd: int, block: int = 1 << 20) -> str:
    """Hex sha256 of the whole file open as `fd`, read with pread: the descriptor's offset is
    neither used nor moved, so one descriptor serves every reader of it."""
    h, offset = hashlib.sha256(), 0
    while chunk := os.pread(fd, block, offset):
        h.update(chunk)
        offset += len(chunk)
    return h.hexdigest()


def tokenizer_vocab_size(cache_dir: str | os.PathLike) -> int | None:
    """Token ids the cache's own tokenizer (CACHE/tokenizer) can produce: ids lie in [0, size).

    None when the cache has no tokenizer/ (verify reports that on its own). Read once per
    tokenizer file version (the answer is remembered by path, size and mtime).
    """
    tok_dir = Path(cache_dir) / S.TOKENIZER_DIR
    if not tok_dir.is_dir():
        return None
    key = tuple((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(tok_dir.iterdir()) if p.is_file())
    return _vocab_size(tok_dir, key)


@functools.lru_cache(maxsize=16)
def _vocab_size(tok_dir: Path, key: tuple) -> int:
    path = tok_dir / "tokenizer.json"
    if path.is_file():
        # A fast tokenizer's file lists every id: reading it costs a JSON parse, not a
        # transformers import (kto-train pays this once per cache).
        obj = read_json(path)
        try:
            vocab = obj["model"]["vocab"]
            ids = list(vocab.values()) if isinstance(vocab, dict) else list(range(len(vocab)))  # Unigram: a list
            ids += [t["id"] for t in obj.get("added_tokens") or []]
            return max(ids) + 1 if ids else 0
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise InputError(f"{path}: unreadable tokenizer file ({type(exc).__name__}: {exc})") from None
    # A slow-only tokenizer: ask transformers (imported here only, never by formats/ at import).
    from .compute.loading import load_tokenizer
    from .compute.sources import ModelSource

    return len(load_tokenizer(ModelSource(tok_dir), flag="tokenizer"))


def _capped(lines: list[str], total: int, what: str) -> list[str]:
    """`lines` (the first MAX_LINES_PER_CHECK of `total` problems), then a count of the rest."""
    if total > MAX_LINES_PER_CHECK:
        return lines + [f"… and {total - MAX_LINES_PER_CHECK} more rows with {what}"]
    return lines


def _bad_mask(values: pa.Array, bad) -> np.ndarray:
    """bool numpy mask of `bad(values)`; a null counts as bad."""
    return pc.fill_null(bad(values), True).to_numpy(zero_copy_only=False)


def _bad_elements(column: pa.Array, bad) -> tuple[np.ndarray, np.ndarray, list]:
    """(rows, positions, values) of the first bad element of each row of a list column, vectorized.

    `flatten()` skips the contents of null lists, and `list_parent_indices` is aligned with it.
    """
    flat = column.flatten()
    idx = np.flatnonzero(_bad_mask(flat, bad))
    if not len(idx):
        return np.zeros(0, np.int64), np.zeros(0, np.int64), []
    parents = pc.list_parent_indices(column).to_numpy()
    rows, first = np.unique(parents[idx], return_index=True)
    positions = idx[first] - np.searchsorted(parents, rows)
    # Values of the first MAX_LINES_PER_CHECK rows only: those are all a message shows.
    return rows, positions, flat.take(pa.array(idx[first][:MAX_LINES_PER_CHECK])).to_pylist()


def shard_value_problems(table: pa.Table, where: str, vocab_size: int | None) -> list[str]:
    """Values no shard may hold, each as one line naming `where` (the shard), the row and its id:

    - ref_logp / ref_kl_logp that are null, NaN, infinite or positive;
    - a NaN, infinite, null or positive term in ref_token_logps / ref_kl_token_logps (when stored);
    - token ids (prompt_ids, completion_ids, kl_completion_ids) that are null, negative, or at
      least `vocab_size` (the cache tokenizer's size; None checks only the sign).

    Vectorized with pyarrow.compute: no Python loop touches a token. At most
    MAX_LINES_PER_CHECK lines per column, then a count of the rest.
    """
    ids = table.column(S.ID)

    def at(i: int) -> str:
        return f"{where} row {i + 1} (id {ids[int(i)].as_py()!r})"

    def not_a_logp(a: pa.Array) -> pa.Array:
        # Finite and ≤ 0: log softmax is ≤ 0 in fp32 too (its log-sum-exp is at least the largest
        # logit), so a positive value was written by hand, not by kto-precompute.
        return pc.or_(pc.invert(pc.is_finite(a)), pc.greater(a, 0))

    out = []
    for name in (S.REF_LOGP, S.REF_KL_LOGP):
        column = table.column(name).combine_chunks()
        rows = np.flatnonzero(_bad_mask(column, not_a_logp))
        lines = [f"{at(i)}: {name} is {_shown(column[int(i)].as_py())}" for i in rows[:MAX_LINES_PER_CHECK]]
        out += _capped(lines, len(rows), f"a bad {name}")
    for name in (S.REF_TOKEN_LOGPS, S.REF_KL_TOKEN_LOGPS):
        rows, positions, values = _bad_elements(table.column(name).combine_chunks(), not_a_logp)
        lines = [f"{at(i)}: {name} has {_shown(v)} at token {k + 1}" for i, k, v in zip(rows, positions, values)]
        out += _capped(lines, len(rows), f"a bad term in {name}")

    def bad_id(a: pa.Array) -> pa.Array:
        return pc.less(a, 0) if vocab_size is None else pc.or_(pc.less(a, 0), pc.greater_equal(a, vocab_size))

    if vocab_size is None:
        limit = "ids must be >= 0"
    else:
        limit = f"ids must lie in [0, {vocab_size}), the cache tokenizer's vocabulary"
    for name in (S.PROMPT_IDS, S.COMPLETION_IDS, S.KL_COMPLETION_IDS):
        rows, positions, values = _bad_elements(table.column(name).combine_chunks(), bad_id)
        lines = [f"{at(i)}: {name} holds token id {_shown(v)} at position {k + 1}; {limit}" for i, k, v in zip(rows, positions, values)]
        out += _capped(lines, len(rows), f"bad token ids in {name}")
    return out


def _shown(value) -> str:
    if isinstance(value, float) and 0 < value < float("inf"):
        return f"{value} (positive: no log-prob is)"
    return "null" if value is None else str(value)


def check_shard_values(table: pa.Table, where: str | os.PathLike, vocab_size: int | None) -> None:
    """Raise InputError (one line: the first problem, and how many more) unless the values are sound."""
    problems = shard_value_problems(table, str(where), vocab_size) + term_count_problems(table, str(where))
    if problems:
        more = " (and more; `kto-inspect verify` lists them)" if len(problems) > 1 else ""
        raise InputError(problems[0] + more)


def term_count_problems(table: pa.Table, where: str) -> list[str]:
    """Stored per-token terms that are not one per token: ref_token_logps per completion_ids
    token, ref_kl_token_logps per kl_completion_ids token (a null list: not stored). The step-0
    check pairs them token by token. From list offsets alone (numpy, no loop over rows); one
    line per row as `kto-inspect verify` words it, at most MAX_LINES_PER_CHECK per column."""
    out = []
    for terms, tokens in ((S.REF_TOKEN_LOGPS, S.COMPLETION_IDS), (S.REF_KL_TOKEN_LOGPS, S.KL_COMPLETION_IDS)):
        column = table.column(terms)
        stored = column.is_valid().to_numpy(zero_copy_only=False)
        n_terms, n_ids = list_lengths(column), list_lengths(table.column(tokens))
        rows = np.flatnonzero(stored & (n_terms != n_ids))
        lines = [f"{_row(table, where, int(i))}: {n_terms[i]} {terms} for {n_ids[i]} {tokens}" for i in rows[:MAX_LINES_PER_CHECK]]
        out += _capped(lines, len(rows), f"{terms} not one per {tokens} token")
    return out
