"""Plain-text tables and numbers for the readable (non --json) output of every command."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

# What a terminal acts on instead of showing: C0 and C1 controls (newline, carriage return, ESC,
# BEL, ...), DEL, the Unicode line and paragraph separators, and the bidi marks, embeddings,
# overrides and isolates that reorder what follows them on screen.
_UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def num(value, digits: int = 4) -> str:
    """A number for a table cell: ints as ints, floats with `digits` significant digits."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int):
        return str(value)
    if not math.isfinite(value):
        return str(value)
    return f"{value:.{digits}g}"


def printable(text: object) -> str:
    """User text (a row id, a metric name, a warning naming a path) safe to print on one line:
    each character a terminal would act on is written as its escape (\\n, \\x1b, \\u202e); all
    other text, CJK and emoji included, is kept as it is. Rows' texts go through `shown`."""
    return _UNPRINTABLE.sub(lambda m: _NAMED.get(m[0]) or (f"\\x{ord(m[0]):02x}" if ord(m[0]) < 0x100 else f"\\u{ord(m[0]):04x}"), str(text))


def table(headers: Sequence[str], rows: Sequence[Sequence], indent: str = "  ") -> str:
    """Left-aligned first column, right-aligned numbers, columns two spaces apart."""
    cells = [list(headers)] + [[c if isinstance(c, str) else num(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = []
    for r in cells:
        parts = [r[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(r[1:], widths[1:])]
        lines.append(indent + "  ".join(parts).rstrip())
    return "\n".join(lines)


def shown(text: str, limit: int | None = None) -> str:
    """A decoded text as one line: newlines and tabs escaped, quoted, optionally shortened."""
    if limit is not None and len(text) > limit:
        text = text[: limit - 1] + "…"
    return repr(text)
