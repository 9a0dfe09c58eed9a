"""Reading: each `--data` input -> (1-based row, raw record) -> the record's checked Examples.

Files are parsed here (JSONL, JSON array or JSON Lines in a .json, CSV, Parquet, Arrow IPC) from the bytes they are hashed
from; `datasets` inputs come through hub.py. Each record is sent to its shape: examples.py (TRL,
LLaMA-Factory, paired), sharegpt.py or alpaca.py; what a record means (row shapes, labels,
messages) is theirs. pyarrow, numpy and the standard library only: polars stays out of this path.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import stat
import threading
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pyarrow as pa
import pyarrow.ipc
import pyarrow.parquet as pq

from kto.formats.errors import InputError
from kto.formats.files import regular_file, sha256_file, stat_or_none
from kto.formats.manifest import INPUT_SUFFIXES

from .alpaca import AlpacaMap, alpaca_examples
from .columnar import LABEL_COLUMNS, columnar_reader
from .examples import (
    ColumnMap,
    Example,
    RepeatedKey,
    ShareGPTMap,
    base_id_of,
    check_one_shape,
    check_unique_ids,
    is_present,
    kind_name,
    one_line,
    shaped_examples,
    shown,
    tools_of,
    unique_keys,
    with_system,
)
from .hub import (
    check_dataset_input,
    data_tree,
    dataset_identity,
    dataset_records,
    is_dataset_input,
    parse_spec,
    reading,
)
from .sharegpt import sharegpt_examples

ARROW_SUFFIXES = (".arrow", ".ipc", ".feather")
ROWS_PER_BATCH = 4096  # rows of a Parquet or Arrow input turned into Python objects at a time (_table_rows)
COLUMNAR_SUFFIXES = (".parquet", *ARROW_SUFFIXES)  # the files _read_table reads, whose rows columnar_reader reads
SUFFIXES = INPUT_SUFFIXES  # declared in formats/manifest.py, where kto-train reads them too

T = TypeVar("T")


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks so large inputs never sit in memory whole."""
    regular_file(path)  # a FIFO or /dev/zero would never end the read
    try:
        return sha256_file(path)
    except OSError as e:
        raise InputError(f"{path}: cannot read ({one_line(e.strerror or e)})") from e


# ---- files -> (row, record) ------------------------------------------------------------------


def read_file(path: Path, label_columns: Collection[str] = LABEL_COLUMNS) -> tuple[str, Iterator[tuple[int, Any]]]:
    """(sha256, rows) of one file: its bytes are read once, hashed, and the rows parsed from them.
    `label_columns`: the columns read as labels (a Parquet or Arrow ClassLabel among them reads
    by its names: columnar.columnar_reader).

    Hashing exactly the parsed bytes, in the same read, is what lets the cache's fingerprint name
    its rows: a file that changes while (or after) it is read cannot get a hash of other bytes.
    The file sits in memory whole while its rows are parsed; the parsed rows are held anyway.
    """
    path = Path(path)
    regular_file(path)
    suffix = _known_suffix(path, str(path))
    try:
        data = path.read_bytes()
    except OSError as e:
        raise InputError(f"{path}: cannot read ({one_line(e.strerror or e)})") from e
    return hashlib.sha256(data).hexdigest(), _parse(path, suffix, data, label_columns)


def records(path: Path) -> Iterator[tuple[int, Any]]:
    """Yield (1-based row, record) from one file; JSONL rows are line numbers."""
    return read_file(path)[1]


def _parse(path: Path, suffix: str, data: bytes, label_columns: Collection[str] = LABEL_COLUMNS) -> Iterator[tuple[int, Any]]:
    if suffix == ".jsonl":
        return _jsonl_records(path, data)
    if suffix == ".json":
        if _starts_with_an_object_line(data):
            # JSON Lines under a .json name: what datasets' Dataset.to_json writes by default, and
            # what LLaMA-Factory (through datasets) reads. Rows are line numbers, as in a .jsonl.
            return _jsonl_records(path, data)
        return enumerate(_json_array(path, data), 1)
    if suffix == ".csv":
        return _csv_records(path, data)
    table = _read_table(path, suffix, data)
    _unique_header(table.column_names, f"{path.name}: schema")
    return enumerate(_table_rows(path, table, label_columns), 1)


_DECODER = json.JSONDecoder(object_pairs_hook=unique_keys)


def _repeated_key(where: str, key: str) -> InputError:
    return InputError(f"{where}: key {shown(key)} appears twice in one object (JSON keeps the last one silently); keep one")


def _starts_with_an_object_line(data: bytes) -> bool:
    """Is the first non-blank line one whole JSON object that is a row? (A pretty-printed object
    starts with a lone `{`.) An object alone on its only line is a row (what Dataset.to_json
    writes for one row), unless every value is a list: a document of splits, `{"train": [...]}`,
    which keeps the JSON reader and its message."""
    stream = io.BytesIO(data)
    for raw in stream:
        line = raw.strip(b"\xef\xbb\xbf \t\r\n")
        if line:
            try:
                first = json.loads(line) if line.startswith(b"{") else None
            except (ValueError, RecursionError):
                return False
            if not isinstance(first, dict):
                return False
            return bool(stream.read().strip()) or not (first and all(isinstance(v, list) for v in first.values()))
    return False


def _jsonl_records(path: Path, data: bytes) -> Iterator[tuple[int, Any]]:
    # Binary lines, decoded one at a time, so a bad byte is reported with its line number.
    for lineno, raw in enumerate(io.BytesIO(data), 1):
        where = f"{path.name}: row {lineno}"
        try:
            line = raw.decode("utf-8-sig")  # -sig: tolerate a byte-order mark on line 1
        except UnicodeDecodeError as e:
            raise InputError(f"{where}: not valid UTF-8 (byte {e.start})") from None
        if not line.strip():
            continue
        try:
            yield lineno, _DECODER.decode(line)
        except RepeatedKey as e:
            raise _repeated_key(where, e.key) from None
        except json.JSONDecodeError as e:
            raise InputError(f"{where}: malformed JSON ({e.msg} at column {e.colno})") from None
        except RecursionError:
            raise InputError(f"{where}: JSON nested too deeply to read") from None


def _json_array(path: Path, data: bytes) -> list[Any]:
    try:
        parsed = _DECODER.decode(data.decode("utf-8-sig"))
    except RepeatedKey as e:
        raise _repeated_key(f"{path.name}: row {_row_holding(data)}", e.key) from None
    except UnicodeDecodeError as e:
        raise InputError(f"{path.name}: not valid UTF-8 (byte {e.start})") from None
    except json.JSONDecodeError as e:
        at = f"line {e.lineno} column {e.colno}"
        raise InputError(f"{path.name}: malformed JSON ({e.msg} at {at})") from None
    except RecursionError:
        raise InputError(f"{path.name}: JSON nested too deeply to read") from None
    if not isinstance(parsed, list):
        raise InputError(f"{path.name}: expected a JSON array of objects, got {kind_name(parsed)}")
    return parsed


def _row_holding(data: bytes) -> int:
    """The 1-based row of a JSON array whose object repeats a key. Only on that error: the hook
    sees objects, not rows, so the array is read again marking such objects, then searched."""

    class Marked(dict):
        pass

    def mark(pairs: list[tuple[str, Any]]) -> dict:
        obj = dict(pairs)
        return Marked(obj) if len(obj) != len(pairs) else obj

    def holds(value: Any) -> bool:
        items = value.values() if isinstance(value, dict) else value if isinstance(value, list) else ()
        return isinstance(value, Marked) or any(holds(v) for v in items)

    rows = json.loads(data.decode("utf-8-sig"), object_pairs_hook=mark)
    return next((i for i, row in enumerate(rows if isinstance(rows, list) else [rows], 1) if holds(row)), 1)


def _csv_records(path: Path, data: bytes) -> Iterator[tuple[int, Any]]:
    row = 0
    try:
        text = io.TextIOWrapper(io.BytesIO(data), encoding="utf-8-sig", newline="")
        reader = csv.DictReader(text)
        fieldnames = _within_field_limit(len(data), lambda: reader.fieldnames) or []
        _unique_header(fieldnames, f"{path.name}: header")
        while (record := _within_field_limit(len(data), lambda: next(reader, None))) is not None:
            row += 1
            _check_field_count(record, len(fieldnames), f"{path.name}: row {row}")
            yield row, record
    except UnicodeDecodeError as e:
        raise InputError(f"{path.name}: row {row + 1}: not valid UTF-8 (byte {e.start})") from None
    except csv.Error as e:
        raise InputError(f"{path.name}: row {row + 1}: malformed CSV ({one_line(e)})") from None


def _within_field_limit(size: int, read: Callable[[], T]) -> T:
    """`read()` with csv's field limit (default 131,072 characters) raised to `size`, the file's
    bytes: the file is in memory whole already, so no field of it is too large to hold. The
    limit is process-wide, so it is put back after each read, under a lock (reads on several
    threads would otherwise restore one another's limits out of order); a suspended generator of
    this file then cannot leave it raised, or lower it under another CSV being read."""
    with _FIELD_LIMIT:
        previous = csv.field_size_limit(max(size, csv.field_size_limit()))
        try:
            return read()
        finally:
            csv.field_size_limit(previous)


_FIELD_LIMIT = threading.Lock()


def _unique_header(names: Sequence[str], where: str) -> None:
    """A column named twice (a CSV header, a Parquet or Arrow schema) is refused: a row's dict
    keeps the last one silently, and either could be the one meant."""
    first: dict[str, int] = {}
    for i, name in enumerate(names, 1):
        if not name:
            continue  # unnamed (a spreadsheet's trailing `,,`): no column map can read it
        if first.setdefault(name, i) != i:
            raise InputError(f"{where}: column {shown(name)} appears twice (columns {first[name]} and {i}); rename or drop one")


def _check_field_count(record: dict, expected: int, where: str) -> None:
    # DictReader files surplus fields under the key None and fills missing ones with None: a
    # shifted row would otherwise silently read the wrong column as the label.
    extra = record.get(None) or []
    missing = sum(value is None for key, value in record.items() if key is not None)
    if extra or missing:
        found = expected + len(extra) - missing
        raise InputError(f"{where}: {found} fields, but the header has {expected}")


def _read_table(path: Path, suffix: str, data: bytes) -> pa.Table:
    """Parquet, or Arrow IPC: the file format first, then the stream format."""
    try:
        if suffix == ".parquet":
            return pq.read_table(pa.BufferReader(data))
        try:
            return pa.ipc.open_file(pa.BufferReader(data)).read_all()
        except pa.ArrowInvalid:  # not the IPC file format; it may be the stream format
            return pa.ipc.open_stream(pa.BufferReader(data)).read_all()
    except (pa.ArrowException, OSError) as e:
        kind = "Parquet" if suffix == ".parquet" else "an Arrow IPC file or stream"
        raise InputError(f"{path}: cannot read as {kind} ({one_line(e)})") from None


def _table_rows(path: Path, table: pa.Table, label_columns: Collection[str] = LABEL_COLUMNS) -> Iterator[dict]:
    """The table's rows as their JSON Lines would read (columnar.columnar_reader: merged structs
    without their added nulls, `Json` columns parsed, a ClassLabel label by its names)."""
    read = columnar_reader(table.schema, label_columns, decode_json=True)
    # Per batch, so only one batch of Python objects exists at a time; a batch of at most
    # ROWS_PER_BATCH rows: a Parquet row group is one batch, 131,072 rows as pyarrow writes it
    # (225 MB of Python objects for 200k chat rows, 120 MB of them still held while scoring).
    start = 0
    for batch in table.to_batches(max_chunksize=ROWS_PER_BATCH):
        try:
            rows = batch.to_pylist()
        except UnicodeDecodeError:
            # Neither Parquet nor Arrow IPC reading checks string bytes (a binary column viewed
            # as string passes), so the first check is this conversion's; it names no row.
            raise _invalid_utf8(path, batch, start) from None
        if read is None:
            yield from rows
        else:
            yield from (_read_row(read, row, f"{path.name}: row {start + i}") for i, row in enumerate(rows, 1))
        start += batch.num_rows


def _read_row(read: Callable[[dict], dict], row: dict, where: str) -> dict:
    try:
        return read(row)
    except json.JSONDecodeError as e:
        raise InputError(f"{where}: a column the schema declares JSON holds text that is not JSON ({e.msg} at column {e.colno})") from None
    except RecursionError:
        raise InputError(f"{where}: JSON nested too deeply to read") from None


def _invalid_utf8(path: Path, batch: pa.RecordBatch, start: int) -> InputError:
    """The InputError naming a row and column of `batch` (rows `start`+1...) whose strings are
    not valid UTF-8 (the first bad row of the first column that has one). Only on that error: each column is converted again, then,
    in the failing one, each row."""
    for name, column in zip(batch.schema.names, batch.columns):
        try:
            column.to_pylist()
            continue
        except UnicodeDecodeError:
            pass
        for i in range(len(column)):
            try:
                column[i].as_py()
            except UnicodeDecodeError as e:
                return InputError(f"{path.name}: row {start + i + 1}: column {shown(name)} is not valid UTF-8 (byte {e.start})")
    return InputError(f"{path.name}: rows {start + 1} to {start + batch.num_rows}: not valid UTF-8")


# ---- inputs -> records -> each row's Examples -----------------------------------------------------


def input_names(paths: Sequence[str | Path]) -> list[str | None]:
    """The name each file's rows go by (ids FILE:ROW, messages): its file name, or, where files
    share one (train/data.json, eval/data.json), the shortest end of their paths that tells them
    apart, so that their ids differ. None for a `datasets` input, which names itself."""
    files = {i: Path(p).absolute().parts for i, p in enumerate(paths) if not is_dataset_input(p)}
    by_name: dict[str, list[int]] = {}
    for i, parts in files.items():
        by_name.setdefault(parts[-1], []).append(i)
    names: list[str | None] = [None] * len(paths)
    for group in by_name.values():
        k, longest = 1, max(len(files[i]) for i in group)
        while len({files[i][-k:] for i in group}) < len(group) and k < longest:
            k += 1  # distinct files have distinct absolute paths (one path twice is refused elsewhere)
        for i in group:
            names[i] = "/".join(files[i][-k:]).replace("//", "/")
    return names


def input_records(path: str | Path, name: str | None = None, label_columns: Collection[str] = LABEL_COLUMNS) -> tuple[str, dict, Iterator[tuple[int, Any]]]:
    """(name for messages and row ids, identity for the manifest, (1-based row, record) pairs).
    `name`: input_names' name for this file among the others read with it; `label_columns`:
    the columns read as labels (label_columns_of)."""
    if is_dataset_input(path):
        spec = parse_spec(path)
        return spec.name, input_identity(spec.text), dataset_records(spec, label_columns)
    path = Path(path)
    _not_a_directory(path)
    if not path.name.isascii():  # a non-UTF-8 name decodes to lone surrogates; ids carry it
        try:
            path.name.encode("utf-8")
        except UnicodeEncodeError:
            raise InputError(f"{ascii(str(path))}: the file name is not valid UTF-8 (rows are named after it); rename the file") from None
    sha256, rows = read_file(path, label_columns)
    return name or path.name, _file_identity(path, sha256), rows


def _not_a_directory(path: Path, flag: str = "--data") -> None:
    """A directory that `datasets` did not write is refused with how to read it, before
    regular_file's "a directory, not a regular file" can say less. `flag`: the one that named
    it (--data, --eval-data)."""
    found = stat_or_none(path, f"{flag} {path}")
    if found is not None and stat.S_ISDIR(found.st_mode):
        raise InputError(f"{flag} {path}: a directory, but not one written by save_to_disk; write hf:{path}:SPLIT to read its data files through datasets")


def _known_suffix(path: Path, where: str) -> str:
    """The file's suffix (lower case), or a refusal naming `where` (the flag and the path)."""
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise InputError(f"{where}: unknown file type {suffix or '(none)'!r} (expected {', '.join(SUFFIXES)})")
    return suffix


def check_input_kind(path: str | Path, flag: str = "--data") -> None:
    """What one input's name and kind tell, refused naming `flag` (--data, --eval-data), without
    reading it: a directory `datasets` did not write, a file of a type no reader takes. Made
    when the configuration is built, so that an --eval-data input is named as one (the run's
    own reading names --data) and a .txt is refused before the model loads."""
    if is_dataset_input(path, flag):
        check_dataset_input(path, flag)
        return
    path = Path(path)
    _not_a_directory(path, flag)
    found = stat_or_none(path, f"{flag} {path}")
    if found is None and str(path) == "-":
        raise InputError(f"{flag} -: standard input is not read; write the rows to a file and give its path")
    if found is not None and stat.S_ISFIFO(found.st_mode):  # `--data /dev/stdin` from a pipe: no suffix to refuse
        raise InputError(f"{flag} {path}: a FIFO, not a regular file; write the rows to a file and give its path")
    if found is not None:
        _known_suffix(path, f"{flag} {path}")


def input_identity(path: str | Path) -> dict:
    """What the manifest records of one `--data` input (files: name and sha256, as before)."""
    if not is_dataset_input(path):
        _not_a_directory(Path(path))
        return _file_identity(Path(path), file_sha256(path))
    return dataset_identity(path)


def _file_identity(path: Path, sha256: str) -> dict:
    """A file's name and sha256; a Parquet or Arrow file's `reading` too (hub.COLUMNAR_READING:
    a cache of its rows as an earlier kto read them is not reused). JSON Lines, JSON and CSV
    files are recorded exactly as before."""
    identity = {"name": path.name, "sha256": sha256}
    return {**identity, **reading()} if path.suffix.lower() in COLUMNAR_SUFFIXES else identity


def check_input_path(path: str | Path, flag: str = "--data") -> None:
    """input_identity's refusals of `path` without its hashing: a file must be a regular file,
    a local `datasets` directory must hold only regular files and folders (hub.dataset_identity)."""
    if not is_dataset_input(path, flag):
        check_input_kind(path, flag)
        regular_file(path, f"{flag} {path}")
        return
    spec = parse_spec(path)
    if spec.local:
        root = Path(spec.source)
        data_tree(root, f"--data {root}")


def read_examples(
    paths: Sequence[str | Path], columns: ColumnMap = ColumnMap(), sharegpt: ShareGPTMap = ShareGPTMap(), alpaca: AlpacaMap | None = None
) -> list[Example]:
    """Read every file (order kept: files in the given order, rows in file order), check every row."""
    return read_inputs(paths, columns, sharegpt, alpaca)[0]


def read_inputs(
    paths: Sequence[str | Path], columns: ColumnMap = ColumnMap(), sharegpt: ShareGPTMap = ShareGPTMap(), alpaca: AlpacaMap | None = None
) -> tuple[list[Example], list[dict]]:
    """`read_examples`, plus each file's `{"name", "sha256"}` of exactly the bytes its rows came from."""
    # A lone path would otherwise be iterated per character.
    paths = [paths] if isinstance(paths, (str, Path)) else list(paths)
    inputs: list[dict] = []
    examples = list(iter_examples(paths, columns, sharegpt, inputs, alpaca))
    check_unique_ids(np.array([ex.id for ex in examples], dtype=object), lambda i: examples[i].id, lambda i: examples[i].source)
    if len(examples) < 2:
        files = ", ".join(str(p) for p in paths) or "no input files"
        raise InputError(f"need at least 2 examples, got {len(examples)} (from {files})")
    return examples, inputs


def iter_examples(
    paths: Sequence[str | Path],
    columns: ColumnMap = ColumnMap(),
    sharegpt: ShareGPTMap = ShareGPTMap(),
    inputs: list[dict] | None = None,
    alpaca: AlpacaMap | None = None,
    sample: RowSample | None = None,
    names: Sequence[str | None] | None = None,
) -> Iterator[Example]:
    """Every row's examples, one input after another, without holding them: ids are not checked
    for uniqueness here (read_examples does; precompute checks its staged ids). `inputs`, when
    given, receives each input's identity (input_records): for a file, the sha256 of exactly
    the bytes its rows were parsed from. `sample`: only a seeded sample of each input's rows.
    `names`: input_names of these paths among all a cache reads (default: of these alone)."""
    check_distinct_files(paths)
    names = input_names(paths) if names is None else names
    watch = _ColumnWatch(given_columns(columns, sharegpt))
    labels = label_columns_of(columns, sharegpt, alpaca)
    read: dict[str, str] = {}  # each input's identity (its sha256, ...), as read -> its path
    groups = sample.groups(len(paths)) if sample is not None else [range(i, i + 1) for i in range(len(paths))]
    for group in groups:
        identities: list[dict] = []
        rows = _group_rows(paths, group, names, read, identities, watch, labels)
        if sample is not None:
            rows = sample.rows(rows, group.start)
        for (_, row), (name, record) in rows:
            yield from _row_examples(record, name, row, columns, sharegpt, alpaca)
        if inputs is not None:
            inputs.extend(identities)
    watch.check()


def _group_rows(
    paths: Sequence[str | Path],
    group: range,
    names: Sequence[str | None],
    read: dict[str, str],
    identities: list[dict],
    watch: _ColumnWatch | None = None,
    label_columns: Collection[str] = LABEL_COLUMNS,
) -> Iterator[tuple[tuple[int, int], tuple[str, Any]]]:
    """((input index, 1-based row), (input's name, record)) of the group's inputs, one after
    another, each opened when reached; `identities` receives each input's identity once its
    rows are all read. `watch` sees every row, for the given columns (given_columns) that some
    row of these inputs must hold, checked once all are read (iter_examples)."""
    for index in group:
        name, identity, rows = input_records(paths[index], names[index], label_columns)
        _distinct_input(identity, str(paths[index]), read)
        watch = watch or _ColumnWatch({})
        watch.inputs.append(name)
        for row, record in rows:
            watch.see(record)
            yield (index, row), (name, record)
        identities.append(identity)


def label_columns_of(columns: ColumnMap, sharegpt: ShareGPTMap, alpaca: AlpacaMap | None = None) -> tuple[str, ...]:
    """The columns some shape reads a label from (examples.py, sharegpt.py, alpaca.py): a
    ClassLabel among them is read by its class names (columnar.columnar_reader); another keeps its
    indices."""
    # examples._label: (columns.label, kto_tag); sharegpt and alpaca: their kto_tag, then columns.label.
    # Not `label` itself when --label-column names another: no shape reads it then.
    kto_tags = ("kto_tag", sharegpt.kto_tag, alpaca.kto_tag if alpaca is not None else "")
    return tuple(n for n in dict.fromkeys((columns.label, *kto_tags)) if n)


def given_columns(columns: ColumnMap, sharegpt: ShareGPTMap) -> dict[str, str]:
    """The columns every row of every shape is read for (id, system, tools: _row_examples,
    sharegpt.py, alpaca.py) that the user named, flag -> name: a name other than the default
    (whose absence means no ids, no system prompts, as documented) and other than '' (reads
    none). A name no row of an input holds would be dropped without a word (--system-column
    nope changed the numbers), so it is refused. The shapes' own columns (--prompt-column,
    --chosen-column, ...) are not: a row of another shape does not read them, and pointing one
    at a column the file lacks is how check_one_shape's message says to pick a shape."""
    entry = " (or the entry's columns.{})" if sharegpt.entry else ""  # a dataset_info.json entry names them too
    names = {
        "--id-column": (columns.id, ColumnMap().id, ""),
        "--system-column": (sharegpt.system, ShareGPTMap().system, entry.format("system")),
        "--tools-column": (sharegpt.tools, ShareGPTMap().tools, entry.format("tools")),
    }
    return {f"{flag} {name}{also}": name for flag, (name, default, also) in names.items() if name not in ("", default)}


class _ColumnWatch:
    """The inputs' rows, watched for the given columns (label -> name) no row held yet. Over all
    the inputs of one read, not each: a dataset with system prompts beside one without them is
    a mix users make; a name no row of any input holds is the misspelling. Inputs are read
    streaming: rows before the refusal are staged already, and removed with --out as a bad
    row's are."""

    _SHOWN = 20  # columns listed in the refusal, at most: it stays one line

    def __init__(self, given: dict[str, str]) -> None:
        self.missing = dict(given)
        self.held: dict[Any, None] = {}  # the columns seen, in first-seen order
        self.rows = 0
        self.inputs: list[str] = []

    def see(self, record: Any) -> None:
        self.rows += 1
        if self.missing and isinstance(record, dict):  # a row of another kind is refused by _row_examples
            self.held.update(dict.fromkeys(record))
            self.missing = {label: name for label, name in self.missing.items() if name not in record}

    def check(self) -> None:
        """Refuse a given column no row held (inputs of no rows misread nothing: not refused)."""
        if not (self.missing and self.rows):
            return
        label = next(iter(self.missing))
        held = [str(k) for k in self.held]
        listed = ", ".join(held[: self._SHOWN]) + (f", … ({len(held)} in all)" if len(held) > self._SHOWN else "")
        whose = "its" if len(self.inputs) == 1 else "their"
        raise InputError(f"{label}: no row of {', '.join(self.inputs)} has that column ({whose} columns: {listed or 'none'})")


def check_distinct_files(paths: Sequence[str | Path], flags: Sequence[str] | None = None) -> None:
    """One file given twice through a link or another spelling of its path would double every
    row, its ids (FILE:ROW, after the name given) all distinct: refused before any row is read.
    `flags`: the flag of each path (--data, --eval-data), for the message."""
    seen: dict[Path, str] = {}
    for path, flag in zip(paths, flags or ["--data"] * len(paths)):
        if is_dataset_input(path):
            continue
        real = Path(path).resolve()
        if real in seen:
            first = seen[real]
            raise InputError(f"{flag} {path}: the same file as {first} ({real}); one file given twice would read every row twice; give it once")
        seen[real] = f"{flag} {path}"


def same_rows_key(identity: dict) -> str:
    """An input's identity without its name: equal for a byte-identical copy, or the same
    `datasets` split, however it is named."""
    return json.dumps({k: v for k, v in identity.items() if k != "name"}, sort_keys=True)


def _distinct_input(identity: dict, path: str, read: dict[str, str]) -> None:
    """A byte-identical copy (or the same `datasets` split) doubles every row as a link does.
    The sha256 is the one read_file computed from the bytes just read: nothing is hashed again."""
    key = same_rows_key(identity)
    if key in read:
        first = read[key]
        what = f"the same bytes (sha256 {identity['sha256'][:16]}…)" if "sha256" in identity else "the same rows"
        raise InputError(f"--data {path}: {what} as --data {first}; one input given twice would read every row twice; give it once")
    read[key] = path


@dataclass(frozen=True)
class RowSample:
    """--max-samples N: at most N rows of each dataset (as LLaMA-Factory's max_samples applies to
    each dataset), drawn uniformly with the seed, kept in the order the dataset's rows come. A
    row is a row of the file: a paired row stays one row here and becomes its two examples
    afterwards. A dataset is one input, or the files of a dataset_info.json entry whose
    file_name is a folder (`spans`): LLaMA-Factory loads such a folder as one dataset, its files
    concatenated, and keeps N rows of the whole, not N of each file."""

    size: int
    seed: int
    spans: tuple[int, ...] = ()
    """How many consecutive inputs each dataset is, in input order (DatasetEntry.spans, after a
    1 for each input given before the entries); inputs past them are one dataset each."""
    held_out: bool = False
    """--eval-data's inputs: their own random stream. Numbered from 0 as --data's are, they drew
    the same row numbers as the --data input of the same place (aligned train and test files
    kept the same positions)."""

    def __post_init__(self) -> None:
        if any(not isinstance(n, int) or n < 1 for n in self.spans):
            raise ValueError(f"RowSample spans must be positive counts of inputs, got {self.spans!r}")

    def groups(self, count: int) -> list[range]:
        """The input indices of each dataset, for `count` inputs."""
        if sum(self.spans) > count:
            raise ValueError(f"RowSample spans {self.spans!r} cover {sum(self.spans)} inputs, but there are {count}")
        sizes = [*self.spans, *[1] * (count - sum(self.spans))]
        starts = np.cumsum([0, *sizes])
        return [range(int(a), int(b)) for a, b in zip(starts[:-1], starts[1:])]

    def rows(self, rows: Iterator[tuple[Any, Any]], input_index: int) -> list[tuple[Any, Any]]:
        """Reservoir sampling (Algorithm R) over one pass: holds N rows, never the whole input,
        and reads every row, so the input's sha256 still covers all of its bytes. Which rows
        are kept depends on (seed, the dataset's first input's place in --data, N) and the rows'
        order only: a dataset of one input draws what it drew before spans existed. Kept rows
        are sorted by their keys: a row number, or (input index, row) across a folder's files."""
        rng = np.random.default_rng([self.seed, input_index, 1] if self.held_out else [self.seed, input_index])
        kept: list[tuple[Any, Any]] = []
        for seen, item in enumerate(rows):
            if seen < self.size:
                kept.append(item)
            else:
                slot = int(rng.integers(0, seen + 1))
                if slot < self.size:
                    kept[slot] = item
        return sorted(kept, key=lambda item: item[0])


def entry_names(sharegpt: ShareGPTMap) -> set[str]:
    """The columns a dataset_info.json entry reads (a row holding one is the entry's)."""
    return {sharegpt.messages, sharegpt.chosen, sharegpt.rejected, sharegpt.kto_tag, sharegpt.system, sharegpt.tools} - {""}


def _row_examples(
    record: Any, file_name: str, row: int, columns: ColumnMap, sharegpt: ShareGPTMap = ShareGPTMap(), alpaca: AlpacaMap | None = None
) -> list[Example]:
    """Detect the row's shape and build its one (or, for paired rows, two) examples; with an
    `alpaca` map (a --dataset entry of that formatting) every row holding one of its columns, or
    none of a plain shape's, is read as alpaca (a file of another shape beside the entry is read
    by its own)."""
    source = f"{file_name}: row {row}"
    if not isinstance(record, dict):
        raise InputError(f"{source}: expected an object of named columns, got {kind_name(record)}")
    base_id = base_id_of(record, columns.id, f"{file_name}:{row}", source)
    present = {key for key in record if is_present(record, key)}
    plain = present & {columns.prompt, columns.messages}  # a plain shape's own columns
    if alpaca is not None and (present & set(filter(None, alpaca.as_dict().values())) or not plain):
        return alpaca_examples(record, alpaca, sharegpt, columns.label, base_id, source)
    if sharegpt.entry and (present & entry_names(sharegpt) or not plain):
        # A dataset_info.json entry's map reads its rows whatever its names (a `messages` column
        # too). A row with none of the entry's columns but a plain shape's own is of another file
        # given beside the entry (--data, --eval-data): read by its shape, as without an entry.
        return sharegpt_examples(record, sharegpt, columns.label, base_id, source)
    check_one_shape(present, columns, sharegpt.messages, source)
    # A map built without an entry (the API's ShareGPTMap(messages="messages")): a paired row
    # is its ShareGPT shape too, not a `messages` row waiting for its own assistant turn.
    paired = sharegpt.messages == columns.messages and sharegpt.chosen in present and sharegpt.rejected in present
    if sharegpt.messages in present and (columns.messages not in present or paired):
        return sharegpt_examples(record, sharegpt, columns.label, base_id, source)
    examples = shaped_examples(record, columns, base_id, source, present)
    tools = tools_of(record, sharegpt, source)
    if tools and not examples[0].conversational:
        raise InputError(f"{source}: column '{sharegpt.tools}': tools need a conversational prompt (a list of messages)")
    if not (tools or (sharegpt.system and is_present(record, sharegpt.system))):
        return examples
    prompt = with_system(examples[0].prompt, record, sharegpt, source)
    return [Example(e.id, prompt, e.completion, e.label, e.source, tools) for e in examples]
