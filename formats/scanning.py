"""`scan(cache_dir)`: a cache's rows as one polars LazyFrame, for questions nobody wrote a command for.

    import kto.formats, polars as pl
    kto.formats.scan("cache").filter(pl.col("label")).sort("ref_logp").head(20).collect()

The module is called `scanning`, not `scan`: a submodule named like the function would replace
`kto.formats.scan` (the function) with the module as soon as anything imported it, because
Python binds every imported submodule as an attribute of its package.

polars is imported inside the function, so `import kto.formats` never pulls it into the
training import path. Nothing is verified here (that is `kto-inspect verify`); rows are read
lazily and memory-mapped, in manifest order.
"""

from __future__ import annotations

from pathlib import Path

from .errors import InputError
from .manifest import read_manifest
from .schema import SHARD_SCHEMA


def scan(cache_dir: str | Path):
    """All rows of the cache in `cache_dir` (its train split; pass `cache/eval` for eval rows).

    Columns are the shard schema's (see formats/schema.py). Only the shards the manifest lists
    are read, in its order, so a stray `shard-*.arrow` file is never mixed in.
    """
    import polars as pl

    cache_dir = Path(cache_dir)
    if not cache_dir.is_dir():
        raise InputError(f"{cache_dir}: no such cache directory")
    manifest = read_manifest(cache_dir)
    paths = [cache_dir / entry.name for entry in manifest.shards]
    for path in paths:
        if not path.is_file():
            raise InputError(f"{path}: listed in the manifest but missing")
    if not paths:
        return pl.from_arrow(SHARD_SCHEMA.empty_table()).lazy()
    return pl.scan_ipc([str(p) for p in paths])
