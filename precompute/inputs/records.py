"""Input files -> (1-based row, raw record): JSONL, JSON array, CSV, Parquet, Arrow IPC.

Only the file formats live here; what a record means (row shapes, labels, messages) is
examples.py's business. pyarrow and the standard library only: polars stays out of this path.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.ipc
import pyarrow.parquet as pq

from kto.formats.errors import InputError
from kto.formats.files import regular_file, sha256_file

ARROW_SUFFIXES = (".arrow", ".ipc", ".feather")
SUFFIXES = (".jsonl", ".json", ".parquet", ".csv") + ARROW_SUFFIXES


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks so large inputs never sit in memory whole."""
    regular_file(path)  # a FIFO or /dev/zero would never end the read
    try:
        return sha256_file(path)
    except OSError as e:
        raise InputError(f"{path}: cannot read ({one_line(e.strerror or e)})") from e


# ---- files -> (row, record) ------------------------------------------------------------------


def read_file(path: Path) -> tuple[str, Iterator[tuple[int, Any]]]:
    """(sha256, rows) of one file: its bytes are read once, hashed, and the rows parsed from them.

    Hashing exactly the parsed bytes, in the same read, is what lets the cache's fingerprint name
    its rows: a file that changes while (or after) it is read cannot get a hash of other bytes.
    The file sits in memory whole while its rows are parsed; the parsed rows are held anyway.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    regular_file(path)
    if suffix not in SUFFIXES:
        expected = ", ".join(SUFFIXES)
        raise InputError(f"{path}: unknown file type {suffix or '(none)'!r} (expected {expected})")
    try:
        data = path.read_bytes()
    except OSError as e:
        raise InputError(f"{path}: cannot read ({one_line(e.strerror or e)})") from e
    return hashlib.sha256(data).hexdigest(), _parse(path, suffix, data)


def records(path: Path) -> Iterator[tuple[int, Any]]:
    """Yield (1-based row, record) from one file; JSONL rows are line numbers."""
    return read_file(path)[1]


def _parse(path: Path, suffix: str, data: bytes) -> Iterator[tuple[int, Any]]:
    if suffix == ".jsonl":
        return _jsonl_records(path, data)
    if suffix == ".json":
        return enumerate(_json_array(path, data), 1)
    if suffix == ".csv":
        return _csv_records(path, data)
    return enumerate(_table_rows(_read_table(path, suffix, data)), 1)


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
            yield lineno, json.loads(line)
        except json.JSONDecodeError as e:
            raise InputError(f"{where}: malformed JSON ({e.msg} at column {e.colno})") from None
        except RecursionError:
            raise InputError(f"{where}: JSON nested too deeply to read") from None


def _json_array(path: Path, data: bytes) -> list[Any]:
    try:
        parsed = json.loads(data.decode("utf-8-sig"))
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


def _csv_records(path: Path, data: bytes) -> Iterator[tuple[int, Any]]:
    row = 0
    try:
        text = io.TextIOWrapper(io.BytesIO(data), encoding="utf-8-sig", newline="")
        reader = csv.DictReader(text)
        for row, record in enumerate(reader, 1):
            _check_field_count(record, len(reader.fieldnames or ()), f"{path.name}: row {row}")
            yield row, record
    except UnicodeDecodeError as e:
        raise InputError(f"{path.name}: row {row + 1}: not valid UTF-8 (byte {e.start})") from None
    except csv.Error as e:
        raise InputError(f"{path.name}: row {row + 1}: malformed CSV ({one_line(e)})") from None


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


def _table_rows(table: pa.Table) -> Iterator[dict]:
    # Per batch, so only one batch of Python objects exists at a time.
    for batch in table.to_batches():
        yield from batch.to_pylist()


def kind_name(value: Any) -> str:
    names = {str: "text", list: "a list", dict: "an object", type(None): "null"}
    return names.get(type(value), type(value).__name__)


def one_line(error: Any) -> str:
    return " ".join(str(error).split())
