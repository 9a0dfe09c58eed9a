"""The two commands' names and the value comparison every table of config keys uses: the bottom
of the config_* modules, so config_keys can consult the tables that import it
(config_unsupported, config_foreign) without an import cycle."""

from __future__ import annotations

from typing import Any

PRECOMPUTE = "kto-precompute"
TRAIN = "kto-train"


def same_value(a: Any, b: Any) -> bool:
    """Equal, or the same number spelt two ways (YAML reads `1e-5` as text, `1.0e-5` as a float)."""
    if a == b:
        return True
    try:
        return not isinstance(a, bool) and not isinstance(b, bool) and float(a) == float(b)
    except (TypeError, ValueError):
        return False
