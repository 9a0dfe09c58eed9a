"""Who may import whom (shared/ARCHITECTURE.md): formats/ is the contract; precompute/ and train/
depend on it and never on each other; formats/ imports none of the commands.

The package is walked with pkgutil, so a new module is checked without anyone adding it to a list.
Imports are read from the source (ast), including those inside functions, so a lazy import that
crosses a boundary is caught as well.
"""

from __future__ import annotations

import ast
import importlib
import pkgutil
from pathlib import Path

import pytest

PACKAGES = ("kto.formats", "kto.precompute", "kto.train", "kto.inspection")
# package -> the kto packages it must never import
FORBIDDEN = {
    "kto.formats": {"kto.precompute", "kto.train", "kto.inspection"},
    "kto.precompute": {"kto.train", "kto.inspection"},
    "kto.train": {"kto.precompute", "kto.inspection"},
    "kto.inspection": {"kto.precompute"},
}


def modules_of(package: str) -> list[tuple[str, Path]]:
    pkg = importlib.import_module(package)
    found = [(package, Path(pkg.__file__))]
    for info in pkgutil.walk_packages(pkg.__path__, prefix=package + "."):
        spec = importlib.util.find_spec(info.name)
        found.append((info.name, Path(spec.origin)))
    return found


def imported_names(module: str, path: Path) -> set[str]:
    """Absolute names of every import in the module's source, relative ones resolved."""
    names = set()
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{parent}.{base}" if base else parent
            names.add(base)
    return names


ALL = [(pkg, name, path) for pkg in PACKAGES for name, path in modules_of(pkg)]


def test_the_walk_finds_every_module_file():
    """The walk must see every .py file, or the test below would pass on a blind spot."""
    seen = {path.resolve() for _, _, path in ALL}
    for pkg in PACKAGES:
        folder = Path(importlib.import_module(pkg).__file__).parent
        for py in folder.rglob("*.py"):
            assert py.resolve() in seen, f"{py} is not reached by pkgutil.walk_packages"


@pytest.mark.parametrize(("package", "module", "path"), ALL, ids=[m for _, m, _ in ALL])
def test_no_forbidden_import(package, module, path):
    bad = sorted(n for n in imported_names(module, path) if any(n == f or n.startswith(f + ".") for f in FORBIDDEN[package]))
    assert not bad, f"{module} imports {bad}: {package} may not import {sorted(FORBIDDEN[package])}"


def test_the_checker_sees_a_crossing(tmp_path):
    """The property can fail: a lazy relative import that crosses is reported."""
    src = tmp_path / "mod.py"
    src.write_text("def f():\n    from ..train import loop\n    import kto.precompute.cli\n")
    assert {"kto.train", "kto.precompute.cli"} <= imported_names("kto.inspection.mod", src)
