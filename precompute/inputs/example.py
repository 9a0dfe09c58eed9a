"""One checked input row, as every reader of precompute/inputs/ returns it, and the label rule.

A module of its own so that examples.py (TRL and LLaMA-Factory shapes) and sharegpt.py (ShareGPT
rows) both build Examples without importing each other.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

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
