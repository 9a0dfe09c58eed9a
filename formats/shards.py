"""Arrow IPC shards: write one atomically, open one memory-mapped, check its sha256 once.

Shards are Arrow IPC *files* (random access), so `pl.scan_ipc("DIR/*.arrow")` reads them and a
reader can memory-map them: RAM does not grow with the dataset, the page cache does the work.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.ipc as ipc

from .atomic import atomic_path, write_json_atomic
from .schema import SHARD_SCHEMA, check_schema

# Shard-level schema metadata (string keys and values) records the content fingerprint and the
# layout that produced the shard, so a resumed `kto-precompute` can tell a finished shard of
# *this* configuration from a stale one before the manifest exists.
VERIFIED_NAME = ".verified.json"


def sha256_file(path: str | os.PathLike, block: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(block):
            h.update(chunk)
    return h.hexdigest()


def write_shard(path: Path, table: pa.Table, metadata: dict[str, str]) -> str:
    """Write `table` (cast to the shard schema) to `path` atomically; return its sha256."""
    table = table.select(SHARD_SCHEMA.names).cast(SHARD_SCHEMA)
    table = table.replace_schema_metadata(metadata)
    with atomic_path(path) as tmp:
        # No compression: memory-mapped reads then hand out zero-copy buffers.
        with ipc.new_file(str(tmp), table.schema) as writer:
            writer.write_table(table, max_chunksize=max(1, table.num_rows))
    return sha256_file(path)


def shard_metadata(path: Path) -> dict[str, str]:
    """The string metadata stored in a shard's schema (reads the footer only)."""
    with pa.memory_map(str(path)) as source:
        meta = ipc.open_file(source).schema.metadata or {}
    return {k.decode(): v.decode() for k, v in meta.items()}


def open_shard(path: Path) -> pa.Table:
    """Memory-map a shard and return it as a table (zero-copy; nothing is read eagerly)."""
    source = pa.memory_map(str(path))
    table = ipc.open_file(source).read_all()
    check_schema(table.schema, str(path))
    return table


class ShardVerifier:
    """Checks each shard's sha256 against the manifest the first time it is read, and remembers it.

    The record (`.verified.json` in the cache dir, keyed by name with size and mtime) lets a
    second training run on the same cache start without re-hashing gigabytes. A shard that was
    modified after verification has a new mtime and is hashed again.
    """

    def __init__(self, cache_dir: Path, expected: dict[str, str]):
        self.cache_dir = Path(cache_dir)
        self.expected = expected
        self._record_path = self.cache_dir / VERIFIED_NAME
        self._record = self._load_record()

    def _load_record(self) -> dict:
        try:
            return json.loads(self._record_path.read_text())
        except (OSError, ValueError):
            return {}

    def _stamp(self, path: Path) -> list:
        st = path.stat()
        return [self.expected[path.name], st.st_size, st.st_mtime_ns]

    def verify(self, name: str) -> None:
        path = self.cache_dir / name
        if name not in self.expected:
            raise ValueError(f"{path}: not listed in the manifest")
        if not path.is_file():
            raise ValueError(f"{path}: listed in the manifest but missing")
        if self._record.get(name) == self._stamp(path):
            return
        actual = sha256_file(path)
        if actual != self.expected[name]:
            raise ValueError(
                f"{path}: sha256 {actual[:16]}… does not match the manifest's "
                f"{self.expected[name][:16]}…; the shard was modified or is corrupt"
            )
        self._record[name] = self._stamp(path)
        try:
            write_json_atomic(self._record_path, self._record)
        except OSError:
            pass  # a read-only cache still works; it is just hashed again next time
