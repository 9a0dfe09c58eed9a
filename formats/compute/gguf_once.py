"""Load a GGUF file with its header parsed once, not three times.

transformers (5.x) reads a GGUF file's header through gguf-py's `GGUFReader` once for the config,
once for the weights and once for the tokenizer, and gguf-py walks every metadata field in Python:
SmolLM2-135M's 49,152-token vocabulary makes that ~8 s a parse. While mapping tensor names it also
rebuilds gguf-py's name table once for every module of the model (~10 s). Dequantizing the weights
themselves takes under 2 s. Inside `parsed_once()` each file is parsed once per process, for as long
as its size and mtime stay the same, and each name table is built once: a 30 s load takes ~6 s.
The objects are gguf-py's own, so what transformers builds from them is unchanged.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterator
from contextlib import contextmanager

# The last GGUF file parsed, by (real path, size, mtime): a tokenizer load and the model load that
# follows it share one parse. One entry, so a process never keeps more than one file's header.
_PARSED: dict[tuple[str, int, int], object] = {}


@contextmanager
def parsed_once() -> Iterator[None]:
    try:
        import gguf
    except ImportError:  # transformers names the package to install
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
