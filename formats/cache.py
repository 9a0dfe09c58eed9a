"""Open a cache: the one reader of a cache's shards, for every command.

`open_cache(dir)` reads and checks manifest.json (formats/manifest.py) and returns a
`ShardedCache`. Each shard is then checked, on first use, by the same code whoever reads it:

- `check_sha256(k)`: the shard's bytes are the manifest's. With `stamps` (kto-train, `kto-inspect
  score`, `kto.formats.scan`) a `.verified.json` stamp of size and mtime spares a second run the
  hashing; `kto-inspect verify` opens with `stamps=False` and always re-hashes, writing nothing.
- `map_shard(k)`: present, Arrow IPC footer readable, the shard schema, sound Arrow arrays (list
  offsets that neither go down nor run past their values: O(rows), no value read); memory-mapped,
  nothing read eagerly, nothing kept (verify maps one shard at a time and lets it go).
- `open_shard(k)`: that, plus the manifest's fingerprint tag (a shard copied from another cache,
  its sha256 patched into the manifest) and row count (kto-train's start-up check).
- `read_shard(k)`: all of the above plus the values every reader refuses (NaN log-probs, token
  ids outside the cache tokenizer's vocabulary, per-token terms not one per token); `table(k)`
  keeps it for random access.

Every failure is one `InputError` line naming the file; readers that train or score add a hint
to run `kto-inspect verify`, which lists every problem at once.

A reader reads the cache it opened, to the end: `open_cache` holds a descriptor of every listed
shard (formats/held_shards.py, which says who holds and why), and every later read of shard k
(sha256, stamp, memory map) goes through it, while messages name `CACHE/shard-k.arrow`; a
`kto-precompute --overwrite` swap unlinks the old inodes, which stay readable. Where they would
not fit the open-files limit, or with `hold=False` (callers of the manifest only), shards are
read by path, and a shard of a rebuilt cache is named as such (`_rebuilt`). Running out of
descriptors is named as such, never as a corrupt shard. A reader writes `.verified.json` stamps
only while manifest.json is still the one it opened: never into a cache swapped in since.
"""

from __future__ import annotations

import contextlib
import functools
import mmap
import os
import shlex
import socket
import stat
import weakref
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import NoReturn

import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc

from . import schema as S
from .errors import InputError
from .files import kind_of, read_json, stat_or_none
from .held_shards import Holding, limit_line, out_of_descriptors, read_holding, still_current
from .lock import LOCK_NAME, holder_of, lock_state
from .manifest import Manifest
from .paths import arrow_path
from .shards import (
    JOURNAL_DIR,
    NEXT_DIR,
    ShardVerifier,
    array_problem,
    check_shard_values,
    fingerprint_problem,
    list_lengths,
    mismatch_line,
    sha256_fd,
    sha256_file,
    tokenizer_vocab_size,
)

# The cache path is shlex-quoted where it is filled in: the hint is a command to paste, and a
# path with a space split into two arguments.
VERIFY_HINT = "kto-inspect verify {} checks the whole cache"


def open_cache(cache_dir: str | Path, *, stamps: bool = True, hint: bool = True, hold: bool = True) -> ShardedCache:
    """The cache in `cache_dir`: manifest read and checked, shards checked as they are used.

    stamps: trust (and write) `.verified.json` for shards hashed before; False re-hashes every
    shard and writes nothing. hint: end each error with the `kto-inspect verify` hint. hold:
    hold every shard open from now on (formats/held_shards.py); False for a caller that wants
    the manifest only, or reads a shard once (then by path)."""
    cache_dir = Path(cache_dir)
    check_cache_dir(cache_dir)
    if not (cache_dir / S.MANIFEST_NAME).is_file() and (writer := _unfinished_by(cache_dir)) is not None:
        raise InputError(f"{cache_dir / S.MANIFEST_NAME}: {writer}")
    return ShardedCache(cache_dir, stamps=stamps, hint=hint, hold=hold)


def check_cache_dir(cache_dir: str | Path, what: str | None = None, *, missing_ok: bool = False) -> None:
    """InputError `WHAT: ...` when `cache_dir` is no folder: missing (unless `missing_ok`), a
    file (`WHAT: a file, not a cache directory`), or a path that cannot be looked at (`WHAT:
    cannot read (why)`: a name too long, a folder above it not searchable, which Path.is_dir()
    raised as a traceback). `what`: the flag and the path (kto-train's `--cache X`); by
    default the path alone, as kto-inspect's CACHE argument is said."""
    what = what or str(cache_dir)
    found = stat_or_none(cache_dir, what)
    if found is None and not missing_ok:
        raise InputError(f"{what}: no such cache directory")
    if found is not None and not stat.S_ISDIR(found.st_mode):
        kind = "a file" if stat.S_ISREG(found.st_mode) else kind_of(found.st_mode)
        raise InputError(f"{what}: {kind}, not a cache directory; give the folder kto-precompute --out wrote")
    if found is not None:
        stat_or_none(Path(cache_dir) / S.MANIFEST_NAME, what)  # a folder that cannot be searched


def _unfinished_by(cache_dir: Path) -> str | None:
    """Why a cache folder has no manifest, where its kto-precompute lock file (formats/lock.py)
    tells: a kto-precompute writes it now (it holds the lock: a first run; `--overwrite` keeps
    the old cache, manifest included, until the new one in `.next/` is complete), or the last
    one stopped before finishing. An eval/ split is written under its
    parent's lock. Only a folder with a precompute journal counts (its own, or that of the
    `--overwrite` build in its `.next/`, which a swap stopped half-way leaves with neither the
    old journal nor the new one in the folder): a kto-train run directory has a lock file too.
    Where `.next/` is there, the command to finish it is an --overwrite. None where nothing
    tells (read_manifest's plain "no manifest")."""
    for folder in (cache_dir, cache_dir.parent) if cache_dir.name == S.EVAL_DIR else (cache_dir,):
        swapping = (folder / NEXT_DIR).is_dir()
        if not (folder / JOURNAL_DIR).is_dir() and not (swapping and (folder / NEXT_DIR / JOURNAL_DIR).is_dir()):
            continue
        held, text = lock_state(folder / LOCK_NAME)
        if held:
            return f"no manifest yet: kto-precompute ({holder_of(text)}) is writing {folder} now; wait for it to finish"
        pid, _, host = text.strip().partition("@")
        if not pid:
            continue
        recorded = f"pid {pid}{f' on host {host}' if host and host != socket.gethostname() else ''}, as its lock file records"
        if held is None:  # a filesystem without locks: flock cannot tell
            return f"no manifest: the kto-precompute that wrote {folder} last ({recorded}) is writing it still or did not finish it"
        again = "again, with --overwrite," if swapping else "again"
        return (
            f"no manifest: the kto-precompute that wrote {folder} last ({recorded}) did not finish it; run the same kto-precompute command {again} to finish it"
        )
    return None


def cache_holding(path: str | Path) -> Path | None:
    """The kto-precompute cache that `path` lies inside (a folder above it with a kto manifest,
    or the journal of a run in progress), or None. Other commands refuse to write into one:
    kto-precompute would take their files for someone else's data and refuse the cache."""
    for folder in Path(path).resolve().parents:
        if _is_kto_manifest(folder / S.MANIFEST_NAME) or (folder / JOURNAL_DIR).is_dir():
            return folder
    return None


def refuse_inside_others(out: Path) -> None:
    """InputError when --out lies inside a kto-precompute cache or a kto-train run: each holds
    only its own files, replaces what it wrote (a cache's eval/, a run's final/ on --resume)
    and refuses the rest, so what another command wrote there would be lost or block it."""
    from .runrecord import run_holding

    cache = cache_holding(out)
    if cache is not None:
        raise InputError(f"--out {out}: inside the kto-precompute cache {cache}, which holds only its own files; choose a directory outside it")
    run = run_holding(out)
    if run is not None:
        raise InputError(f"--out {out}: inside the kto-train run {run}, which holds only its own files; choose a directory outside it")


def _is_kto_manifest(path: Path) -> bool:
    """A manifest.json of ours (format_version, content, shards): other tools use the name too."""
    import json

    try:
        obj = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
    except (OSError, UnicodeDecodeError, ValueError):
        return False
    return isinstance(obj, dict) and {"format_version", "content", "shards"} <= set(obj)


class _Unhinted(InputError):
    """A refusal that is not the cache's fault, so no verify hint: a shard that is not the
    manifest's because the cache was rebuilt since (verify checks the new cache, and says it is
    sound), or the open-files limit."""


class ShardedCache:
    """Random access to a cache's rows, shards opened memory-mapped and verified on first read.

    Holds a descriptor of each shard from its creation (open_cache) until `close()` (or a `with`
    block's end, or its garbage collection): see the module's docstring."""

    def __init__(self, cache_dir: Path, manifest: Manifest | None = None, *, stamps: bool = True, hint: bool = True, hold: bool = True):
        self.dir = Path(cache_dir)
        holding, identity = Holding(None), None
        if manifest is None:
            manifest, holding, identity = read_holding(self.dir, hold=hold)
        self.manifest = manifest
        self._held = holding.fds  # None: shards are read by path
        self._closer = weakref.finalize(self, holding.close)
        self._vocab: list[int | None] = []  # the tokenizer's size, once asked: a swap replaces tokenizer/ too
        self.stamps = stamps
        self.hint = hint
        # Stamps are written only into the cache this reader opened, never into one swapped in since.
        current = None if identity is None else functools.partial(still_current, self.dir / S.MANIFEST_NAME, identity)  # no cycle through self
        self.verifier = ShardVerifier(self.dir, self.manifest.shard_sha256, current=current) if stamps else None
        self._tables: dict[int, pa.Table] = {}
        self._views: dict[tuple[int, str], object] = {}
        self.starts = np.cumsum([0] + [s.rows for s in self.manifest.shards])
        self.num_rows = int(self.starts[-1])

    @property
    def num_shards(self) -> int:
        return len(self.manifest.shards)

    def path(self, k: int) -> Path:
        return self.dir / self.manifest.shards[k].name

    def close(self) -> None:
        """Let go of the shards' descriptors; later reads are by path (tables already read stay
        mapped)."""
        self._held = None
        self._closer()

    def __enter__(self) -> ShardedCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _fd(self, k: int) -> int | None:
        """Shard k's held descriptor; None where shards are read by path. InputError for one
        missing when the cache was opened, or one that could not be opened (EACCES: named as
        such, not as a corrupt shard)."""
        if self._held is None:
            if not self.path(k).is_file():
                self._refuse(k, f"{self.path(k)}: listed in the manifest but missing")
            return None
        fd = self._held[k]
        if fd is None:
            raise InputError(f"{self.path(k)}: listed in the manifest but missing")
        if isinstance(fd, OSError):  # not the shard's bytes: say what stopped the open
            raise _Unhinted(f"{self.path(k)}: cannot open ({fd.strerror or fd})")
        return fd

    @contextlib.contextmanager
    def _hinted(self) -> Iterator[None]:
        try:
            yield
        except _Unhinted:
            raise
        except InputError as exc:
            if not self.hint:
                raise
            raise InputError(f"{exc}; {VERIFY_HINT.format(shlex.quote(str(self.dir)))}") from None

    def _refuse(self, k: int, line: str) -> NoReturn:
        """Raise InputError(`line`), or the rebuild's line where the cache was rebuilt since."""
        rebuilt = self._rebuilt()
        if rebuilt is not None:
            raise _Unhinted(f"{self.path(k)}: {rebuilt}") from None
        raise InputError(line) from None

    def _refuse_read(self, k: int, exc: BaseException, line: str) -> NoReturn:
        """`_refuse(k, line)` for a failed read, unless the process ran out of descriptors."""
        if out_of_descriptors(exc):
            raise _Unhinted(limit_line(self.path(k))) from None
        self._refuse(k, line)

    def _rebuilt(self) -> str | None:
        """Why a shard read by path is not the manifest's, where that is knowable: manifest.json on
        disk now carries another fingerprint (a kto-precompute --overwrite swapped a new cache in
        since this process read it, over a read by path or from another machine over NFS)."""
        try:
            now = read_json(self.dir / S.MANIFEST_NAME)
        except InputError:
            return None
        fingerprint = now.get("fingerprint") if isinstance(now, dict) else None
        if not isinstance(fingerprint, str) or fingerprint == self.manifest.fingerprint:
            return None
        return (
            f"{self.dir} was rebuilt since this process read its manifest (fingerprint {self.manifest.fingerprint[:16]}… then,"
            f" {fingerprint[:16]}… now: kto-precompute --overwrite?); the cache this process began on is gone: start again on the new one"
            " (kto-train: a new --out)"
        )

    def check_sha256(self, k: int) -> None:
        """InputError unless shard k is present and its sha256 is the manifest's."""
        path, expected = self.path(k), self.manifest.shards[k].sha256
        with self._hinted():
            try:
                fd = self._fd(k)
                if self.verifier is not None and self.verifier.stamped(path.name, fd):
                    return
                actual = sha256_file(path) if fd is None else sha256_fd(fd)
            except InputError:
                raise
            except (ValueError, OSError) as exc:  # ESTALE: over NFS, a file another machine's swap unlinked
                self._refuse_read(k, exc, str(exc).splitlines()[0])
            if actual != expected:
                self._refuse(k, mismatch_line(path, actual, expected))
            if self.verifier is not None:
                with contextlib.suppress(OSError):  # gone by path since it was hashed: hashed again next time
                    self.verifier.record(path.name, fd)

    def _mapped(self, k: int) -> pa.NativeFile:
        """Shard k's bytes memory-mapped, through its held descriptor where there is one."""
        fd = self._fd(k)
        if fd is None:
            return pa.memory_map(arrow_path(self.path(k)))
        # mmap of an empty file raises; pyarrow then says what it says of any too-short file.
        data = mmap.mmap(fd, 0, access=mmap.ACCESS_READ) if os.fstat(fd).st_size else b""
        return pa.BufferReader(pa.py_buffer(data))

    def map_shard(self, k: int) -> pa.Table:
        """Shard k memory-mapped: present, footer readable, shard schema, sound list offsets (not
        kept by the cache)."""
        path = self.path(k)
        with self._hinted():
            try:
                # Memory-mapped, not read: the pages belong to the page cache and leave this
                # process's RSS when the table is dropped. Zero-copy (shards are uncompressed).
                table = ipc.open_file(self._mapped(k)).read_all()
            except InputError:
                raise
            except (ValueError, OSError, pa.ArrowException) as exc:
                self._refuse_read(k, exc, f"{path}: not a readable shard, truncated or corrupt ({' '.join(str(exc).split())[:200]})")
            try:
                S.check_schema(table.schema, str(path))
            except ValueError as exc:
                raise InputError(str(exc)) from None
            problem = array_problem(table, path)  # offsets that go down or past their values: O(rows)
        if problem is not None:
            # Bytes changed since they were written (a flipped byte, not a forgery) are named by
            # their checksum first: only a shard found unsound is hashed here.
            self.check_sha256(k)
            with self._hinted():
                raise InputError(problem)
        return table

    def open_shard(self, k: int) -> pa.Table:
        """`map_shard(k)`, the manifest's fingerprint tag (a shard copied from another cache) and
        row count: the cheap check (no hashing, no values)."""
        table, entry = self.map_shard(k), self.manifest.shards[k]
        problem = fingerprint_problem(table, self.path(k), self.manifest.fingerprint)
        if problem is None and table.num_rows != entry.rows:
            problem = f"{self.path(k)}: {table.num_rows} rows, the manifest says {entry.rows}"
        if problem is not None:
            with self._hinted():
                self._refuse(k, problem)
        return table

    def read_shard(self, k: int, *, values: bool = True) -> pa.Table:
        """Shard k with every check: sha256 (first, so a mismatch mid-run is one line too), footer,
        schema, row count and, with `values`, the values every reader refuses."""
        self.check_sha256(k)
        table = self.open_shard(k)
        if values:
            vocab_size = self.vocab_size()
            with self._hinted():
                check_shard_values(table, self.path(k), vocab_size)
        return table

    def vocab_size(self) -> int | None:
        """Token ids the cache's tokenizer/ can produce (None without one); InputError when its
        file is unreadable. kto-train asks at start-up, so that stops it before --out is touched."""
        if not self._vocab:  # asked once: a swap replaces tokenizer/ too, and the shards read are the old ones
            with self._hinted():
                self._vocab.append(tokenizer_vocab_size(self.dir))
        return self._vocab[0]

    def table(self, k: int) -> pa.Table:
        """`read_shard(k)`, kept for random access (training reads rows from any shard)."""
        if k not in self._tables:
            self._tables[k] = self.read_shard(k)
            # The value check's pyarrow.compute temporaries are freed into Arrow's pool, which kept
            # their pages: ~0.45 MB a shard, up to ~20 MB over a run (docs/benchmarks.md). Handed back.
            pa.default_memory_pool().release_unused()
        return self._tables[k]

    def lengths(self) -> np.ndarray:
        """[rows] prompt+completion lengths, from list offsets (cheap: no checksum, no values).

        This is also the start-up check of every shard (present, readable footer, schema, row
        count) before kto-train writes anything; the sha256 is checked on first use of the rows.
        """
        out = []
        for k in range(self.num_shards):
            t = self.open_shard(k)
            out.append(list_lengths(t.column(S.PROMPT_IDS)) + list_lengths(t.column(S.COMPLETION_IDS)))
        return np.concatenate(out) if out else np.zeros(0, np.int64)

    def longest_sequences(self) -> np.ndarray:
        """[rows] the longer of prompt + completion and prompt + KL completion, from list offsets
        as `lengths` (no checksum, no values): what a position table must hold."""
        out = []
        for k in range(self.num_shards):
            t = self.open_shard(k)
            completion = np.maximum(list_lengths(t.column(S.COMPLETION_IDS)), list_lengths(t.column(S.KL_COMPLETION_IDS)))
            out.append(list_lengths(t.column(S.PROMPT_IDS)) + completion)
        return np.concatenate(out) if out else np.zeros(0, np.int64)

    def rows(self, indices: np.ndarray | Sequence[int], columns: Sequence[str] | None = None) -> dict[str, S.Ragged | np.ndarray | list]:
        """`columns` of the given global rows (every declared column by default): `gather_rows`."""
        indices = np.asarray(indices, dtype=np.int64)
        if len(indices) and (indices.min() < 0 or indices.max() >= self.num_rows):
            raise IndexError(f"{self.dir}: row index out of range [0, {self.num_rows})")
        return gather_rows(self.starts, self._view, indices, S.SHARD_SCHEMA.names if columns is None else columns)

    def _view(self, k: int, name: str) -> S.Ragged | np.ndarray | pa.ChunkedArray:
        key = (k, name)
        if key not in self._views:
            self._views[key] = column_view(self.table(k).column(name))
        return self._views[key]


def column_view(column: pa.ChunkedArray | pa.Array) -> S.Ragged | np.ndarray | pa.ChunkedArray | pa.Array:
    """A column as `gather_rows` reads it: a zero-copy Ragged (lists), a numpy array (numbers;
    bools are unpacked once, one byte a row), or the Arrow column itself (strings)."""
    if pa.types.is_list(column.type):
        return S.from_arrow(column)
    if pa.types.is_string(column.type):
        return column
    if isinstance(column, pa.ChunkedArray):  # one chunk (write_shard writes one): float64 is a zero-copy view
        return column.chunk(0).to_numpy(zero_copy_only=False) if column.num_chunks == 1 else column.to_numpy()
    return column.to_numpy(zero_copy_only=False)


def gather_rows(starts: np.ndarray, view: Callable[[int, str], object], indices: np.ndarray, columns: Sequence[str]) -> dict[str, S.Ragged | np.ndarray | list]:
    """`columns` of global rows `indices` (any order, repeats allowed) of tables laid end to end,
    table k holding rows starts[k]..starts[k+1]; `view(k, name)` is table k's `column_view`.

    The one random-access read of Arrow rows, for cache shards and precompute's staging file
    alike: list columns come back as `Ragged`, gathered with numpy straight from the mapped
    offsets and values (one masked gather per table, no Python object per token); numeric and
    bool columns as numpy arrays; string columns as Python lists. Nothing returned refers to
    the mapped buffers, so the file may be unmapped afterwards.
    """
    indices = np.asarray(indices, dtype=np.int64)
    source_of = np.searchsorted(starts, indices, side="right") - 1
    local = indices - starts[source_of]
    # Grouped by table once: each table then costs the rows taken from it, where a mask over
    # all `indices` per table made a shard's fill from the staging file (every record batch
    # touched) quadratic in the file's rows.
    order, spans = S.by_source(source_of, len(starts) - 1)
    mine = {k: order[lo:hi] for k, (lo, hi) in spans.items()}
    out: dict[str, S.Ragged | np.ndarray | list] = {}
    for name in columns:
        views = {k: view(k, name) for k in mine}
        sample = next(iter(views.values()), None)
        if isinstance(sample, S.Ragged):
            sources = [views.get(k) for k in range(len(starts) - 1)]
            out[name] = S.take_many(sources, source_of, local)
        elif isinstance(sample, np.ndarray):
            values = np.empty(len(indices), dtype=sample.dtype)
            for k, at in mine.items():
                values[at] = views[k][local[at]]
            out[name] = values
        elif sample is not None:
            out[name] = _gather_strings(views, mine, local, len(indices))
        else:  # no rows
            out[name] = _empty(name)
    return out


def _gather_strings(views: dict[int, pa.Array | pa.ChunkedArray], mine: dict[int, np.ndarray], local: np.ndarray, n: int) -> list:
    """A string column's values as Python objects, output row i from table k where i is in
    mine[k] (`by_source`): one Arrow take per table, then each value put in its place."""
    out: list = [None] * n
    for k, at in mine.items():
        for i, value in zip(at.tolist(), views[k].take(pa.array(local[at])).to_pylist()):
            out[i] = value
    return out


def _empty(name: str) -> S.Ragged | np.ndarray | list:
    """What `gather_rows` returns for no rows (declared columns keep their kind)."""
    try:
        column = S.declared(name)
    except KeyError:
        return []
    if column.is_list:
        return S.Ragged(np.zeros(0), np.zeros(1, np.int64))
    return [] if column.is_string else np.zeros(0, dtype=np.float64)


class ArrowFile:
    """Random access to the rows of one Arrow IPC file of several record batches (precompute's
    staging file), through `gather_rows`; mapped only inside a `with`, so that the pages a
    caller touched leave the resident set when it exits (nanoGPT rebuilds its np.memmap per
    batch for the same reason)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._reader: ipc.RecordBatchFileReader | None = None

    def __enter__(self) -> ArrowFile:
        self._source = pa.memory_map(arrow_path(self.path))
        self._reader = ipc.open_file(self._source)
        # Kept: a shard's rows come from every record batch, and get_batch (which reads the
        # batch's metadata) once per column and batch was most of a shard's fill.
        self._batches = [self._reader.get_batch(b) for b in range(self._reader.num_record_batches)]
        self.starts = np.concatenate([[0], np.cumsum([b.num_rows for b in self._batches], dtype=np.int64)])
        self._views: dict[tuple[int, str], object] = {}
        return self

    def __exit__(self, *exc: object) -> None:
        self._views.clear()
        self._batches = []
        self._reader = None
        self._source.close()

    @property
    def num_rows(self) -> int:
        return int(self.starts[-1])

    def rows(self, indices: np.ndarray | Sequence[int], columns: Sequence[str]) -> dict[str, S.Ragged | np.ndarray | list]:
        """`columns` of rows `indices` (`gather_rows`)."""
        return gather_rows(self.starts, self._view, np.asarray(indices, dtype=np.int64), columns)

    def _view(self, b: int, name: str) -> S.Ragged | np.ndarray | pa.Array:
        if (b, name) not in self._views:
            self._views[(b, name)] = column_view(self._batches[b].column(name))
        return self._views[(b, name)]
