"""Every public function of formats/ (the contract, issue 11) and of train/ (issue 20) says what
it takes and returns.

Public: a top-level function, or a method of a top-level class, whose name does not start with
`_` (dunders other than __init__ are the data model's, typed by Python). The package is walked
with pkgutil and read with ast, so a new module is checked without anyone listing it.
"""

from __future__ import annotations

import ast

import pytest
from test_boundaries import modules_of


def unannotated(tree: ast.Module) -> list[str]:
    """'name (line): what is missing' for each public function lacking an annotation."""
    found = []

    def check(fn: ast.FunctionDef | ast.AsyncFunctionDef, owner: str = "") -> None:
        if fn.name.startswith("_") and fn.name != "__init__":
            return
        params = [*fn.args.posonlyargs, *fn.args.args, *fn.args.kwonlyargs, fn.args.vararg, fn.args.kwarg]
        bare = [a.arg for a in params if a is not None and a.annotation is None and a.arg not in ("self", "cls")]
        if fn.name != "__init__" and fn.returns is None:
            bare.append("return")
        if bare:
            found.append(f"{owner}{fn.name} (line {fn.lineno}): {', '.join(bare)}")

    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            check(node)
        elif isinstance(node, ast.ClassDef) and not node.name.startswith("_"):
            for item in node.body:
                if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    check(item, f"{node.name}.")
    return found


@pytest.mark.parametrize("package", ["kto.formats", "kto.train"])
def test_every_public_function_is_annotated(package):
    missing = {name: bad for name, path in modules_of(package) if (bad := unannotated(ast.parse(path.read_text())))}
    assert not missing, missing


def test_the_check_can_fail():
    tree = ast.parse("def f(a, b: int): ...\nclass C:\n    def m(self, x) -> None: ...\n    def _private(self, y): ...\nclass _D:\n    def m(self, z): ...\n")
    assert unannotated(tree) == ["f (line 1): a, return", "C.m (line 3): x"]
