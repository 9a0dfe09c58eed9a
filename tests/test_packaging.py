"""What an install from the wheel or the sdist holds, against the checkout.

pyproject's `[tool.setuptools] packages` is written by hand: a subpackage missing from it works in
an editable install (the folder is on the path) and is silently left out of the wheel. And the
sdist holds what MANIFEST.in adds: the docs and examples README.md links to, the tools, LICENSE."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tarfile
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Top-level folders that are not the package's (tests/tools hold scripts, never imported as kto.*).
NOT_PACKAGES = {"tests", "tools", "docs", "examples", "demo", "build", "dist", "shared"}
IGNORED = shutil.ignore_patterns("__pycache__", "*.py[cod]", "*.egg-info", "build", "dist")


def setuptools_table(root: Path) -> dict:
    return tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]


def package_of(folder: Path, root: Path, package_dir: dict[str, str]) -> str | None:
    """The import name package-dir gives `folder` (its own entry, or its nearest mapped parent's
    plus the rest of the path), None where no entry covers it."""
    rel = folder.relative_to(root)
    for parents in range(len(rel.parts)):
        base = Path(*rel.parts[: len(rel.parts) - parents]).as_posix()
        names = [name for name, path in package_dir.items() if path == base]
        if names:
            return ".".join([names[0], *rel.parts[len(rel.parts) - parents :]])
    return None


def code_folders(root: Path) -> list[Path]:
    """Every folder of Python code that belongs to the package: a top-level folder holding an
    __init__.py (outside NOT_PACKAGES, hidden ones and *.egg-info), and each folder below one
    that holds a .py file, __init__.py or not (one without is still a package setuptools must be
    told about)."""
    found = []
    for top in sorted(p for p in root.iterdir() if p.is_dir()):
        if top.name in NOT_PACKAGES or top.name.startswith(".") or top.name.endswith(".egg-info") or not (top / "__init__.py").is_file():
            continue
        found += [d for d in [top, *sorted(top.rglob("*"))] if d.is_dir() and d.name != "__pycache__" and any(d.glob("*.py"))]
    return found


def divergence(root: Path) -> tuple[set[str], set[str]]:
    """(folders of code the wheel leaves out, named by their import name or path;
    listed packages that no folder of code gives)."""
    table = setuptools_table(root)
    package_dir = table.get("package-dir", {})
    found = {package_of(d, root, package_dir) or f"{d.relative_to(root).as_posix()}/ (no package-dir entry)" for d in code_folders(root)}
    listed = set(table["packages"])
    return found - listed, listed - found


def test_the_wheels_package_list_is_every_folder_of_code():
    missing, stale = divergence(ROOT)
    assert not missing, f"folders of code the wheel leaves out; add them to pyproject's [tool.setuptools] packages and package-dir: {sorted(missing)}"
    assert not stale, f"listed in pyproject's [tool.setuptools] packages, but no folder of code gives them: {sorted(stale)}"


def skeleton(tmp_path: Path) -> Path:
    """pyproject.toml and an empty file for every .py of the package folders: what divergence reads."""
    copy = tmp_path / "checkout"
    copy.mkdir()
    shutil.copy(ROOT / "pyproject.toml", copy)
    for folder in code_folders(ROOT):
        for py in folder.glob("*.py"):
            target = copy / py.relative_to(ROOT)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.touch()
    return copy


@pytest.mark.parametrize(
    ("new_file", "reported"),
    [
        ("formats/extra/__init__.py", "kto.formats.extra"),  # a new subpackage
        ("train/parts/helpers.py", "kto.train.parts"),  # a folder of modules without __init__.py
        ("serve/__init__.py", "serve/ (no package-dir entry)"),  # a new top-level package
    ],
)
def test_a_folder_missing_from_the_list_is_reported(tmp_path, new_file, reported):
    copy = skeleton(tmp_path)
    assert divergence(copy) == (set(), set())
    (copy / new_file).parent.mkdir(parents=True)
    (copy / new_file).touch()
    assert divergence(copy) == ({reported}, set())


def test_a_listed_package_without_a_folder_is_reported(tmp_path):
    copy = skeleton(tmp_path)
    shutil.rmtree(copy / "precompute" / "inputs")
    assert divergence(copy) == (set(), {"kto.precompute.inputs"})


# ---- the built sdist and wheel -------------------------------------------------------------------


def build(source: Path, out: Path, what: str) -> Path:
    """setuptools' PEP 517 hook run in `source` (a copy: no egg-info or build/ left in the checkout)."""
    code = f"from setuptools import build_meta; print(build_meta.build_{what}({str(out)!r}))"
    done = subprocess.run([sys.executable, "-c", code], cwd=source, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    return out / done.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[list[str], list[str]]:
    """(the sdist's file names, the names in the wheel built from the unpacked sdist), as pip
    builds a wheel from an sdist."""
    tmp = tmp_path_factory.mktemp("packaging")
    source = tmp / "source"
    source.mkdir()
    for path in ROOT.iterdir():
        if path.name.startswith(".") or path.name in {"demo", "build", "dist"} or path.name.endswith(".egg-info"):
            continue
        if path.is_dir():
            shutil.copytree(path, source / path.name, ignore=IGNORED)
        else:
            shutil.copy(path, source)
    sdist = build(source, tmp, "sdist")
    with tarfile.open(sdist) as tar:
        tar.extractall(tmp / "unpacked", filter="data")
        names = [m.name.split("/", 1)[1] for m in tar.getmembers() if m.isfile()]
    (unpacked,) = (tmp / "unpacked").iterdir()
    wheel = build(unpacked, tmp, "wheel")
    with zipfile.ZipFile(wheel) as whl:
        return names, whl.namelist()


def test_the_sdist_holds_what_readme_links_and_no_partial_tests(built):
    sdist, _ = built
    linked = {m for m in re.findall(r"\]\(((?:docs|examples|tools)/[^)#\s]+)", (ROOT / "README.md").read_text())}
    assert linked and linked <= set(sdist), sorted(linked - set(sdist))
    for name in ("LICENSE", "README.md", "MANIFEST.in", "examples/quickstart.sh", "tools/gpu_check.py"):
        assert name in sdist
    every_doc = {p.relative_to(ROOT).as_posix() for p in (ROOT / "docs").iterdir() if p.is_file()}
    assert every_doc <= set(sdist)
    assert not [n for n in sdist if n.startswith("tests/")]  # pruned whole, not 11 files of them


def test_the_wheel_from_the_sdist_holds_every_module_and_the_license(built):
    _, wheel = built
    package_dir = setuptools_table(ROOT)["package-dir"]
    modules = {f"{package_of(py.parent, ROOT, package_dir).replace('.', '/')}/{py.name}" for folder in code_folders(ROOT) for py in folder.glob("*.py")}
    assert modules <= set(wheel), sorted(modules - set(wheel))
    assert any(n.endswith(".dist-info/licenses/LICENSE") or n.endswith(".dist-info/LICENSE") for n in wheel)


def test_the_license_is_apache_2_as_the_metadata_says():
    text = (ROOT / "LICENSE").read_text()
    assert text.split()[:5] == ["Apache", "License", "Version", "2.0,", "January"]
    assert "TERMS AND CONDITIONS FOR USE, REPRODUCTION, AND DISTRIBUTION" in text and "END OF TERMS AND CONDITIONS" in text
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["license"] == {"text": "Apache-2.0"}
    assert "License :: OSI Approved :: Apache Software License" in project["classifiers"]


def test_the_build_backend_builds_wheels_without_the_wheel_package():
    """`pip install --no-build-isolation .` (the GPU install) uses the setuptools installed: before
    70.1 it needs the `wheel` package for bdist_wheel ("invalid command 'bdist_wheel'")."""
    from packaging.requirements import Requirement
    from packaging.version import Version

    system = tomllib.loads((ROOT / "pyproject.toml").read_text())["build-system"]
    (setuptools,) = [Requirement(r) for r in system["requires"] if Requirement(r).name == "setuptools"]
    assert not setuptools.specifier.contains(Version("70.0")) and setuptools.specifier.contains(Version("70.1"))


def test_the_dev_extra_brings_what_these_tests_build_with():
    """The tests above run setuptools' build backend and packaging in the test environment: a
    Python 3.12+ venv has no setuptools, an older one may have one before 70.1 (no bdist_wheel
    without the wheel package). `pip install -e '.[dev]'` must bring both."""
    from packaging.requirements import Requirement
    from packaging.version import Version

    dev = {r.name: r for r in map(Requirement, tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["dev"])}
    assert "packaging" in dev
    assert not dev["setuptools"].specifier.contains(Version("70.0")) and dev["setuptools"].specifier.contains(Version("70.1"))
