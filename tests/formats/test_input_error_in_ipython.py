"""An InputError raised in a Jupyter cell (found by a hunt as a notebook user): IPython showed 73
lines of kto's own frames above the one line that says what to change. IPython shows an
exception through its `_render_traceback_` where it has one: the line alone."""

import io
from contextlib import redirect_stdout

import pytest

from kto.formats.errors import InputError


def test_ipython_shows_the_one_line():
    pytest.importorskip("IPython")
    from IPython.core.interactiveshell import InteractiveShell

    shell = InteractiveShell.instance()
    out = io.StringIO()
    with redirect_stdout(out):
        result = shell.run_cell(
            "from kto.formats.errors import InputError\ndef deep(n):\n    return deep(n - 1) if n else (_ for _ in ()).throw(InputError('--out run: holds an earlier run; pass --resume to continue it'))\ndeep(20)"
        )
    assert isinstance(result.error_in_exec, InputError)
    assert out.getvalue().strip() == "InputError: --out run: holds an earlier run; pass --resume to continue it", out.getvalue()


def test_a_subclass_names_itself():
    class DiskFull(InputError):
        pass

    assert DiskFull("no space left on out/x")._render_traceback_() == ["DiskFull: no space left on out/x"]


def test_its_notes_are_shown_too():
    exc = InputError("--cache c: no such cache directory")
    exc.add_note("a note added on its way out")
    assert exc._render_traceback_() == ["InputError: --cache c: no such cache directory", "a note added on its way out"]
