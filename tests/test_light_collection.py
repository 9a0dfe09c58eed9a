"""Collecting the suite imports no optional heavy package: each xdist worker imports every test
module, whatever `-m` selects, so a module-level `import peft` (or `pytest.importorskip("peft")`)
cost every worker about 6 s (peft pulls bitsandbytes and torch's inductor), `datasets` 1 s and
matplotlib 0.3 s, also in the AVX2 `numerics` pass that runs ten tests. Tests that need them
import them inside the test or an autouse fixture (tests/train/test_adapters.py). torch and
transformers are imported by conftest.py anyway.

hypothesis is the exception: `@given` needs it when the module is imported, so a module that
uses `@given` may import it at the top (tests/inspection/test_verify_truncation.py, 1.7 s).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
HEAVY = {"peft", "bitsandbytes", "datasets", "matplotlib", "hypothesis"}


def run_at_import(nodes: list[ast.stmt]):
    """The statements that run when the module is imported: all but function and class bodies,
    with those inside `if`, `try` and `with` blocks."""
    for node in nodes:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            continue
        yield node
        for field in ("body", "orelse", "finalbody"):
            yield from run_at_import(getattr(node, field, []))
        for handler in getattr(node, "handlers", []):
            yield from run_at_import(handler.body)


def top_level_heavy_imports(source: str) -> set[str]:
    """Heavy packages the module imports when it is imported: `import X`, `from X import ...` and
    `pytest.importorskip("X")` outside any function or class."""
    found = set()
    for node in run_at_import(ast.parse(source).body):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module.split(".")[0])
        elif isinstance(node, (ast.Expr, ast.Assign)):
            for call in (n for n in ast.walk(node) if isinstance(n, ast.Call)):
                if isinstance(call.func, ast.Attribute) and call.func.attr == "importorskip" and call.args and isinstance(call.args[0], ast.Constant):
                    found.add(str(call.args[0].value).split(".")[0])
    return found & HEAVY


def uses_given(source: str) -> bool:
    return any(isinstance(n, ast.Name) and n.id == "given" for n in ast.walk(ast.parse(source)))


MODULES = sorted(TESTS.rglob("*.py"))


@pytest.mark.parametrize("path", MODULES, ids=[str(p.relative_to(TESTS)) for p in MODULES])
def test_no_heavy_import_at_collection(path):
    source = path.read_text()
    heavy = top_level_heavy_imports(source)
    if uses_given(source):
        heavy.discard("hypothesis")
    assert not heavy, f"{path.relative_to(TESTS)} imports {sorted(heavy)} when collected: import it inside the tests (or an autouse fixture) that use it"


def test_the_check_sees_each_form():
    """The property can fail: every way a module imports a package at collection is seen."""
    source = 'import peft\nfrom datasets import Dataset\ntry:\n    import matplotlib.pyplot\nexcept ImportError:\n    pass\nx = pytest.importorskip("bitsandbytes")\n'
    assert top_level_heavy_imports(source) == {"peft", "datasets", "matplotlib", "bitsandbytes"}
    inside = 'def f():\n    import peft\n\n@pytest.fixture(autouse=True)\ndef g():\n    pytest.importorskip("datasets")\n'
    assert top_level_heavy_imports(inside) == set()
