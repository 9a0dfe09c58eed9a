"""`scan(cache_dir)`: a cache's rows as one polars LazyFrame, for questions nobody wrote a command for.

    import kto.formats, polars as pl
    kto.formats.scan("cache").filter(pl.col("label")).sort("ref_logp").head(20).collect()

The module is called `scanning`, not `scan`: a submodule named like the function would replace
`kto.formats.scan` (the function) with the module as soon as anything imported it, because
Python binds every imported submodule as an attribute of its package.

polars is imported inside the function, so `import kto.formats` never pulls it into the
training import path. The cache is opened as every reader opens it (formats/cache.py): each
listed shard is present, has the manifest's sha256 (hashed once, then remembered by the
`.verified.json` stamp), the shard schema and the manifest's row count. Values are not
checked here (that is `kto-inspect verify`); rows are read lazily, in manifest order.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from .cache import open_cache
from .paths import arrow_path
from .schema import SHARD_SCHEMA

if TYPE_CHECKING:
    import polars as pl


def scan(cache_dir: str | Path) -> pl.LazyFrame:
    """All rows of the cache in `cache_dir` (its train split; pass `cache/eval` for eval rows).

    Columns are the shard schema's (see formats/schema.py). Only the shards the manifest lists
    are read, in its order, so a stray `shard-*.arrow` file is never mixed in.
    """
    import polars as pl

    cache = open_cache(cache_dir)
    paths = []
    for k in range(cache.num_shards):
        cache.check_sha256(k)
        cache.open_shard(k)
        paths.append(cache.path(k))
    if not paths:
        return pl.from_arrow(SHARD_SCHEMA.empty_table()).lazy()
    return pl.scan_ipc([arrow_path(p) for p in paths])
