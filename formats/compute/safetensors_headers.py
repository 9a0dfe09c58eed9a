"""The JSON headers of safetensors files (tensor names, dtypes, shapes, offsets), read without
loading a tensor.

Two readers share them: the weight files' check against config.json (weights_check.py: which
tensor names the files hold) and the model identity (identity.py: the header hash and the
offsets of the small tensors). Both take the header before transformers opens the file, so a
length that does not fit the file is answered with None here, and each caller says why.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path
from typing import BinaryIO

from ..errors import InputError
from ..files import read_json, regular_file


def safetensors_names(directory: Path) -> set[str] | None:
    """The tensor names of the safetensors weights transformers loads from `directory`
    (model.safetensors, else the files model.safetensors.index.json names), read from their headers;
    None where there are none or a header cannot be read (the load says why)."""
    index = directory / "model.safetensors.index.json"
    if (directory / "model.safetensors").is_file():  # transformers' own order: the single file first
        files = {"model.safetensors"}
    elif index.is_file():
        content = read_json(index)
        weight_map = content.get("weight_map") if isinstance(content, dict) else None
        files = set(weight_map.values()) if isinstance(weight_map, dict) and all(isinstance(f, str) for f in weight_map.values()) else set()
    else:
        files = set()
    names: set[str] = set()
    for file in sorted(files):
        if Path(file).name != file or not (directory / file).is_file():
            return None
        header = safetensors_header(regular_file(directory / file))
        if header is None:
            return None
        names |= header.keys() - {"__metadata__"}
    return names or None


def safetensors_header(path: Path) -> dict | None:
    """The parsed JSON header of the safetensors file `path`, or None when it is not one;
    InputError `PATH: unreadable (why)` when it cannot be read, as of an unreadable config.json."""
    try:
        with open(path, "rb") as f:
            raw = header_bytes(f, os.fstat(f.fileno()).st_size, 100 << 20)  # safetensors' own header limit: 100 MB
    except OSError as e:
        raise InputError(f"{path}: unreadable ({e.strerror})") from None
    try:
        header = json.loads(raw) if raw is not None else None
    except (ValueError, RecursionError):
        return None
    return header if isinstance(header, dict) else None


def header_bytes(f: BinaryIO, size: int, limit: int | None = None) -> bytes | None:
    """The JSON header of the safetensors file open as `f` (at its start), `size` bytes long: its
    8-byte little-endian length, then that many bytes. None where the length does not fit the
    file (or `limit`)."""
    head = f.read(8)
    n = struct.unpack("<Q", head)[0] if len(head) == 8 else -1
    if not 0 < n <= min(size - 8, limit if limit is not None else size):
        return None
    return f.read(n)
