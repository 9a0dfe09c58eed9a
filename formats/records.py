"""Input files -> (1-based row, raw record): JSONL, JSON array, CSV, Parquet, Arrow IPC.

Only the file formats live here; what a record means (row shapes, labels, messages) is
examples.py's business. pyarrow and the standard library only: polars stays out of this path.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any, Iterator

import pyarrow as pa
import pyarrow.ipc
import pyarrow.parquet as pq

from .errors import InputError
from .shards import sha256_file

ARROW_SUFFIXES = (".arrow", ".ipc", ".feather")
SUFFIXES = (".jsonl", ".json", ".parquet", ".csv") + ARROW_SUFFIXES


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks so large inputs never sit in memory whole."""
    try:
        return sha256_file(path)
    except OSError as e:
        raise InputError(f"{path}: cannot read ({one_line(e.strerror or e)})") from e


# ---- files -> (row, record) ------------------------------------------------------------------


def records(path: Path) -> Iterator[tuple[int, Any]]:
    """Yield (1-based row, record) from one file; JSONL rows are line numbers."""
    suffix = path.suffix.lower()
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    if suffix not in SUFFIXES:
        expected = ", ".join(SUFFIXES)
        raise InputError(f"{path}: unknown file type {suffix or '(none)'!r} (expected {expected})")
    if suffix == ".jsonl":
        return _jsonl_records(path)
    if suffix == ".json":
        return enumerate(_json_array(path), 1)
    if suffix == ".csv":
        return _csv_records(path)
    return enumerate(_table_rows(_read_table(path, suffix)), 1)


def _jsonl_records(path: Path) -> Iterator[tuple[int, Any]]:
    # Binary lines, decoded one at a time, so a bad byte is reported with its line number.
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
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


def _json_array(path: Path) -> list[Any]:
    try:
        data = json.loads(path.read_bytes().decode("utf-8-sig"))
    except UnicodeDecodeError as e:
        raise InputError(f"{path.name}: not valid UTF-8 (byte {e.start})") from None
    except json.JSONDecodeError as e:
        at = f"line {e.lineno} column {e.colno}"
        raise InputError(f"{path.name}: malformed JSON ({e.msg} at {at})") from None
    if not isinstance(data, list):
        raise InputError(f"{path.name}: expected a JSON array of objects, got {kind_name(data)}")
    return data


def _csv_records(path: Path) -> Iterator[tuple[int, Any]]:
    row = 0
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:
            for row, record in enumerate(csv.DictReader(f), 1):
                yield row, record
    except UnicodeDecodeError as e:
        raise InputError(f"{path.name}: row {row + 1}: not valid UTF-8 (byte {e.start})") from None
    except csv.Error as e:
        raise InputError(f"{path.name}: row {row + 1}: malformed CSV ({one_line(e)})") from None


def _read_table(path: Path, suffix: str) -> pa.Table:
    """Parquet, or Arrow IPC: the file format first, then the stream format."""
    try:
        if suffix == ".parquet":
            return pq.read_table(path)
        try:
            return _read_ipc(path, pa.ipc.open_file)
        except pa.ArrowInvalid:  # not the IPC file format; it may be the stream format
            return _read_ipc(path, pa.ipc.open_stream)
    except (pa.ArrowException, OSError) as e:
        kind = "Parquet" if suffix == ".parquet" else "an Arrow IPC file or stream"
        raise InputError(f"{path}: cannot read as {kind} ({one_line(e)})") from None


def _read_ipc(path: Path, open_reader) -> pa.Table:
    # OSFile reads into memory; a memory map would be unmapped when the `with` closes it.
    with pa.OSFile(str(path), "rb") as f:
        return open_reader(f).read_all()


def _table_rows(table: pa.Table) -> Iterator[dict]:
    # Per batch, so only one batch of Python objects exists at a time.
    for batch in table.to_batches():
        yield from batch.to_pylist()


def kind_name(value: Any) -> str:
    names = {str: "text", list: "a list", dict: "an object", type(None): "null"}
    return names.get(type(value), type(value).__name__)


def one_line(error: Any) -> str:
    return " ".join(str(error).split())
