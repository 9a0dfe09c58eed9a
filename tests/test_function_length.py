"""No function of the package is longer than 60 lines (shared/STYLE.md: a function should be
readable in one sitting; issue 20 found three that were not). Lines are counted from `def` to
the last line of the body, decorators and docstring included, so a long docstring counts too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from test_boundaries import ALL

MAX_LINES = 60


def long_functions(source: str, path: Path | str = "<source>") -> list[str]:
    """'name (line N): L lines' for each function or method longer than MAX_LINES."""
    found = []
    for node in ast.walk(ast.parse(source, str(path))):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            lines = node.end_lineno - node.lineno + 1
            if lines > MAX_LINES:
                found.append(f"{node.name} (line {node.lineno}): {lines} lines")
    return found


@pytest.mark.parametrize(("module", "path"), [(m, p) for _, m, p in ALL], ids=[m for _, m, _ in ALL])
def test_no_function_is_longer_than_60_lines(module, path):
    assert not long_functions(path.read_text(), path), f"{module}: {long_functions(path.read_text(), path)}; split it"


def test_the_length_check_can_fail():
    """def + 59 body lines is 60 lines and passes; one more line fails."""
    body = [f"    x{i} = {i}" for i in range(MAX_LINES)]
    assert long_functions("\n".join(["def f():", *body])) == [f"f (line 1): {MAX_LINES + 1} lines"]
    assert long_functions("\n".join(["def g():", *body[:-1]])) == []
