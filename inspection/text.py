"""Plain-text tables and numbers for the readable (non --json) output of every command."""

from __future__ import annotations

import math
from collections.abc import Sequence

from kto.formats.errors import one_line


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
    return one_line(str(text))  # the same escapes as every error line (formats/errors.py)


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
