"""kto-inspect summary and rows without polars (an image installed with --no-deps has none):
one line naming polars and how to install it, exit 2, as `run` does for matplotlib."""

import subprocess
import sys

import pytest

# polars imported as None: `import polars` raises ModuleNotFoundError, as where it is not installed.
WITHOUT_POLARS = "import sys; sys.modules['polars'] = None; from kto.inspection.cli import main; main()"


@pytest.mark.parametrize("command", ["summary", "rows"])
def test_without_polars_one_line_names_it_and_how_to_install(tiny_cache, command):
    done = subprocess.run([sys.executable, "-c", WITHOUT_POLARS, command, str(tiny_cache)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith(f"kto-inspect: error: {command} reads the cache with polars, which is not installed: "), lines[0]
    assert "pip install 'polars>=" in lines[0]
    assert done.stdout == ""


def test_the_install_hint_asks_for_the_declared_polars():
    """The hint's lower bound is pyproject's, so that it never asks for a polars the package refuses."""
    import tomllib
    from pathlib import Path

    from kto.inspection.cli import POLARS_HINT

    pyproject = tomllib.loads((Path(__file__).resolve().parents[2] / "pyproject.toml").read_text())
    declared = [d for d in pyproject["project"]["dependencies"] if d.startswith("polars")]
    assert declared and POLARS_HINT == f"pip install '{declared[0]}'"
