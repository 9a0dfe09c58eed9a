"""Who may import whom (shared/ARCHITECTURE.md): formats/ is the contract; precompute/ and train/
depend on it and never on each other; formats/ imports none of the commands; the on-disk part
of formats/ (all but formats/compute/) imports neither torch nor transformers; training and
kto-inspect open shards only through formats/cache.py; and no module imports itself through
others (the import graph is acyclic).

The package is walked with pkgutil, so a new module is checked without anyone adding it to a list.
Imports are read from the source (ast), including those inside functions, so a lazy import that
crosses a boundary is caught as well.
"""

from __future__ import annotations

import ast
import importlib
import json
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGES = ("kto.formats", "kto.precompute", "kto.train", "kto.inspection")
# package -> the kto packages it must never import
FORBIDDEN = {
    "kto.formats": {"kto.precompute", "kto.train", "kto.inspection"},
    "kto.precompute": {"kto.train", "kto.inspection"},
    "kto.train": {"kto.precompute", "kto.inspection"},
    "kto.inspection": {"kto.precompute", "kto.train"},
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


def import_edges(module: str, path: Path, known: set[str]) -> set[str]:
    """The package's modules that `module` imports, at any depth of its source (inside
    functions and `if TYPE_CHECKING:` too). `from pkg import name` counts as pkg.name when that is
    a module, and an imported attribute counts as the module that defines it."""

    def owner(name: str) -> str | None:
        while name and name not in known:
            name = name.rpartition(".")[0]
        return name or None

    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(owner(alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{parent}.{base}" if base else parent
            found.update(owner(f"{base}.{alias.name}") for alias in node.names)
    return found - {None, module}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Each import cycle once, as the path that closes it (depth-first search, colour marks)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []
    found = []

    def visit(node: str) -> None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                found.append([*path[path.index(nxt) :], nxt])
            elif nxt not in state:
                visit(nxt)
        path.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)
    return found


def test_the_import_graph_has_no_cycles():
    """A cycle is closed by an import inside a function and breaks the day someone moves that
    import to the top; it also means two modules that are one concept or one misplaced piece."""
    known = {name for _, name, _ in ALL}
    graph = {name: import_edges(name, path, known) for _, name, path in ALL}
    assert cycles(graph) == []


def test_the_cycle_check_can_fail(tmp_path):
    """The property can fail: a lazy import back from b to a is an edge, and a ↔ b is reported."""
    a, b = tmp_path / "a.py", tmp_path / "b.py"
    a.write_text("from . import b\n")
    b.write_text("def f():\n    from .a import g\n")
    known = {"kto.x.a", "kto.x.b"}
    graph = {"kto.x.a": import_edges("kto.x.a", a, known), "kto.x.b": import_edges("kto.x.b", b, known)}
    assert graph == {"kto.x.a": {"kto.x.b"}, "kto.x.b": {"kto.x.a"}}
    assert cycles(graph) == [["kto.x.a", "kto.x.b", "kto.x.a"]]


# The on-disk contract (formats/ outside formats/compute/) must load without torch or
# transformers: kto-inspect's readers, kto.formats.scan and the cache reader start fast and work
# without a GPU stack. The rule is the folder, not a list: formats/compute/ holds the code that
# produces the numbers (formats/compute/__init__.py), everything else in formats/ is on-disk.
HEAVY = ("torch", "transformers")
ON_DISK = [name for pkg, name, _ in ALL if pkg == "kto.formats" and not (name == "kto.formats.compute" or name.startswith("kto.formats.compute."))]


def heavy_imports(module: str) -> list[str]:
    """The heavy packages importing `module` pulls in, in a fresh interpreter."""
    code = (
        f"import sys, json, importlib; importlib.import_module({module!r}); print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r})))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_the_on_disk_modules_are_the_ones_outside_compute():
    """The rule picks what it should: the cache reader and the manifest are in, scoring is out."""
    assert {"kto.formats.cache", "kto.formats.manifest", "kto.formats.shards", "kto.formats.schema"} <= set(ON_DISK)
    assert not any("compute" in name for name in ON_DISK)
    assert "kto.formats.compute.scoring" in {name for _, name, _ in ALL}


@pytest.mark.parametrize("module", ON_DISK)
def test_on_disk_modules_import_neither_torch_nor_transformers(module):
    assert heavy_imports(module) == [], (
        f"importing {module} imports {heavy_imports(module)}; the on-disk contract must not (move torch code to formats/compute/)"
    )


def test_the_torch_check_can_fail():
    """The property can fail: a compute module does import torch."""
    assert "torch" in heavy_imports("kto.formats.compute.logprob")


# Shards are opened by formats/cache.py only (sha256, schema and row checks in one place): no
# reader of a cache outside formats/ maps or opens an Arrow IPC file itself.
READERS = [(name, path) for pkg, name, path in ALL if pkg in ("kto.train", "kto.inspection")]


@pytest.mark.parametrize(("module", "path"), READERS, ids=[m for m, _ in READERS])
def test_readers_open_shards_through_formats_cache(module, path):
    source = path.read_text()
    for call in ("memory_map(", "ipc.open_file(", "ipc.open_stream(", "read_manifest(", "scan_ipc("):
        assert call not in source, f"{module} calls {call}...): open the cache with kto.formats.cache.open_cache"
