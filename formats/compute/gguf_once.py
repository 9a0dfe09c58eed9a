"""Load a GGUF file with its header parsed once, not three times.

transformers (5.x) reads a GGUF file's header through gguf-py's `GGUFReader` once for the config,
once for the weights and once for the tokenizer, and gguf-py walks every metadata field in Python:
SmolLM2-135M's 49,152-token vocabulary makes that ~8 s a parse. While mapping tensor names it also
rebuilds gguf-py's name table once for every module of the model (~10 s). Dequantizing the weights
themselves takes under 2 s. Inside `parsed_once()` each file is parsed once, for as long as its
size and mtime stay the same, and each name table is built once: the tokenizer and the model of
SmolLM2 load in ~20 s instead of ~55 s (docs/benchmarks.md). The objects are gguf-py's own, so what
transformers builds from them is unchanged.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext

from ..errors import import_or_refuse

GGUF_HINT = "pip install 'kto-offline[gguf]'"

# The last GGUF file parsed, by (real path, size, mtime): a tokenizer load (or --lora-r's config
# check) and the model load that follows it share one parse. One entry, dropped when a block
# opened with `last=True` (the model's load) ends: the parse holds ~150 MB for SmolLM2.
_PARSED: dict[tuple[str, int, int], object] = {}


@contextmanager
def parsed_once(*, last: bool = False) -> Iterator[None]:
    """gguf-py's reader and name table, memoized for the loads inside the block; with `last`, the
    parse is dropped at the end (no later load of this process needs it)."""
    try:
        import gguf
    except ImportError:  # transformers names the package to install; the commands' check of
        gguf = None  # --model names the file and the extra (refuse_without_gguf)
    if gguf is None:
        yield
        return
    reader_class, name_table = gguf.GGUFReader, gguf.get_tensor_name_map

    def reader(path: os.PathLike[str] | str, mode: str = "r") -> object:
        if mode != "r":  # a writable map must not be shared
            return reader_class(path, mode)
        stat = os.stat(path)
        key = (os.path.realpath(path), stat.st_size, stat.st_mtime_ns)
        if key not in _PARSED:
            _PARSED.clear()
            _PARSED[key] = reader_class(path, mode)
        return _PARSED[key]

    gguf.GGUFReader, gguf.get_tensor_name_map = reader, functools.cache(name_table)
    try:
        yield
    finally:
        gguf.GGUFReader, gguf.get_tensor_name_map = reader_class, name_table
        if last:
            _PARSED.clear()


def gguf_loads(gguf_file: str | None, *, last: bool = False) -> AbstractContextManager[None]:
    """`parsed_once` for a load from a GGUF file; a no-op context for any other model."""
    return parsed_once(last=last) if gguf_file else nullcontext()


def refuse_without_gguf(path: os.PathLike[str] | str, flag: str = "--model") -> None:
    """One line naming the .gguf file and the extra to install, where gguf-py is missing; for
    the commands' check of --model, before anything is loaded. Left to transformers, the refusal
    came at the tokenizer's load, on two lines (its logged warning and its ImportError), and named
    the file's folder, not the file."""
    import_or_refuse(
        "gguf",
        missing=f"{flag} {path}: a GGUF file, and reading one needs the gguf package, which is not installed: {GGUF_HINT}",
        broken=f"{flag} {path}: a GGUF file, and the gguf package that reads it is installed but does not import",
    )
