"""One checked input row, as every reader of precompute/inputs/ returns it, and the label rule.

A module of its own so that examples.py (TRL and LLaMA-Factory shapes) and sharegpt.py (ShareGPT
rows) both build Examples without importing each other; the one unique-id check is here too, for
read_examples' lists and for the staged rows (precompute/staging.py).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from kto.formats.errors import InputError

Message = dict[str, str]  # {"role": ..., "content": ...}

_TRUE = {"true", "1", "yes", "t", "y", "desirable"}
_FALSE = {"false", "0", "no", "f", "n", "undesirable"}


@dataclass(frozen=True)
class Example:
    """One checked example. Messages are normalised to {"role", "content"} with text content."""

    id: str  # str of the id column, else f"{file_name}:{row}"; paired rows add ":chosen"/":rejected"
    prompt: str | tuple[Message, ...]  # text, or messages (conversational)
    completion: str | tuple[Message, ...]  # text, or assistant message(s)
    label: bool  # True = desirable
    source: str  # f"{file_name}: row {row}", for error messages downstream
    tools: tuple[dict, ...] = ()  # tool schemas for the chat template (`tools` column)

    @property
    def conversational(self) -> bool:
        return not isinstance(self.prompt, str)


def parse_label(value: Any, where: str) -> bool:
    """bool, 0/1, or true/false, yes/no, t/f, y/n, 1/0, desirable/undesirable (any case)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    raise InputError(f"{where} {shown(value)} is not boolean-like (expected true/false, 1/0, yes/no)")


def shown(value: Any, limit: int = 60) -> str:
    """repr(value), cut to `limit` characters: every user-facing message stays on one line."""
    text = repr(value)  # repr escapes newlines, keeping the message on one line
    return text if len(text) <= limit else text[: limit - 3] + "..."


def check_unique_ids(keys: np.ndarray, id_at: Callable[[int], str], source_at: Callable[[int], str]) -> None:
    """Every row's id is unique, or InputError `duplicate id 'X': SOURCE and SOURCE`.

    keys[i] stands for row i's id: the id itself (an object array of str), or a 64-bit hash of
    it, which keeps a hundred million ids in 800 MB; equal keys are then confirmed on the ids
    (id_at), since two ids may share a hash. The pair reported is the earliest repeat in row
    order, the one a reader going row by row meets first.
    """
    order = np.argsort(keys, kind="stable")  # stable: equal keys keep their row order
    ordered = keys[order]
    same = ordered[1:] == ordered[:-1]
    starts = np.flatnonzero(~same) + 1  # where a new key begins (after position 0)
    bounds = np.concatenate(([0], starts, [len(order)]))
    repeat = None  # (row of the repeat, row of the first occurrence)
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        if hi - lo < 2:
            continue
        seen: dict[str, int] = {}
        for i in sorted(int(k) for k in order[lo:hi]):
            first = seen.setdefault(id_at(i), i)
            if first != i:
                repeat = min(repeat or (i, first), (i, first))
                break
    if repeat is not None:
        i, first = repeat
        a, b = source_at(first), source_at(i)
        # Ids default to file name + row, so two files with one name collide.
        hint = " (two input files share this name, or one file is given twice)" if a == b else ""
        raise InputError(f"duplicate id {id_at(i)!r}: {a} and {b}{hint}")
