"""What a "did you mean" (config_names._suggest) adds to a pick that is itself refused or
skipped here: a misspelt key pointed at such a key must not read as if correcting the spelling
would do what it names. Apart from config_unsupported's table, which config_keys consults too."""

from __future__ import annotations

from typing import Any

from .config_commands import same_value
from .config_dumped import DUMPED
from .config_keys import IGNORED
from .config_unsupported import UNSUPPORTED


def _shown(value: Any) -> str:
    return "null" if value is None else "''" if value == "" else str(value).lower()


def _first_clause(text: str) -> str:
    """`text` up to its first '; ' or ': ' outside parentheses: `kto-train keeps every weight in
    fp32 (its default dtype; mixed_precision …), layernorms included` keeps its parentheses whole."""
    depth = 0
    for at, char in enumerate(text):
        depth += {"(": 1, ")": -1}.get(char, 0)
        if depth == 0 and (char == ";" or text.startswith(": ", at)):
            return text[:at]
    return text


def _distinct(values: list[Any]) -> list[Any]:
    """`values` less any equal to an earlier one (0 and 0.0 are said once)."""
    return [v for i, v in enumerate(values) if not any(same_value(v, u) for u in values[:i])]


def what_it_is(name: str, command: str) -> str:
    """What a "did you mean" adds to a pick that is itself refused or skipped here (config_names'
    suggester): ` (refused here unless false: rsLoRA is not supported)`, ` (ignored here: …)`, or
    nothing for a key that is applied. A misspelt key pointed at such a key must not read as if
    correcting the spelling would do what it names."""

    known = UNSUPPORTED[command].get(name)
    if known is not None:
        asked = _distinct([v for v in known.inert if v is not None])
        if asked and set(map(_shown, asked)) >= {"true", "false"}:
            return f" (ignored here: {known.short or _first_clause(known.inert_why)})"
        but = f" unless {' or '.join(map(_shown, asked))}" if asked else ""
        return f" (refused here{but}: {known.short or _first_clause(known.reason)})"
    if name in IGNORED:
        return f" (ignored here: {_first_clause(IGNORED[name])})"
    dumped = DUMPED[command].get(name)
    if dumped is not None:
        at = " or ".join(map(_shown, dumped.defaults))
        return f" (ignored here: {_first_clause(dumped.why)})" if dumped.refused is None else f" (refused here unless {at}: {_first_clause(dumped.why)})"
    return ""
