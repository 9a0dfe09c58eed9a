"""Progress bars in a Jupyter notebook (found by a hunt as a Colab user): the kernel's streams
are not terminals, so each bar was drawn "nowhere" and written as a text line every 30 s, while
tqdm.auto, which the bars came from, made it a notebook widget anyway, stuck for 30 s at a time:
two bars, neither live. In a notebook the bar is now tqdm's widget alone, live; elsewhere off a
terminal, text lines alone, and no widget.

tqdm.autonotebook picks its notebook class only inside a kernel with ipywidgets; a stand-in
class in its place is that choice here."""

from __future__ import annotations

import io
import sys

import pytest
import tqdm.autonotebook
import tqdm.std

from kto.formats.bars import new_bar


class NotebookBar(tqdm.std.tqdm):
    """What tqdm.notebook.tqdm is to these bars: a tqdm drawn by itself (a widget)."""

    made: list[NotebookBar] = []

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        NotebookBar.made.append(self)


@pytest.fixture
def notebook(monkeypatch):
    NotebookBar.made.clear()
    monkeypatch.setattr(tqdm.autonotebook, "tqdm", NotebookBar)
    return NotebookBar.made


def test_in_a_notebook_each_bar_is_the_widget_alone(notebook, monkeypatch):
    from kto.precompute.progress import Progress
    from kto.train.progress import EvalProgress, TrainProgress

    stream = io.StringIO()  # the kernel's stderr: not a terminal
    assert new_bar(stream, total=1)[1] is None  # drawn live: no lines to write
    notebook.clear()  # that probe's bar
    monkeypatch.setattr(sys, "stdout", io.StringIO())
    monkeypatch.setattr(sys, "stderr", stream)
    train = TrainProgress(3, 0, enabled=True)
    with train.lines_above():
        for step in range(3):
            train.step()
            train.line(f"step {step + 1}/3 loss 0.5")
        with EvalProgress(2, enabled=True) as evals:
            evals.step()
    with Progress(4, "row", desc="kto-precompute train", stream=stream) as rows:
        rows.update(4, 40)
    assert [type(bar) for bar in notebook] == [NotebookBar] * 3
    assert train.lines is None and evals.lines is None and rows.lines is None
    assert [bar.n for bar in notebook] == [3, 1, 4]
    assert sys.stdout.getvalue() == "step 1/3 loss 0.5\nstep 2/3 loss 0.5\nstep 3/3 loss 0.5\n"


def test_off_a_terminal_and_out_of_a_notebook_the_bar_is_lines_and_no_widget():
    from kto.precompute.progress import Progress

    stream = io.StringIO()
    assert tqdm.autonotebook.tqdm is tqdm.std.tqdm and new_bar(io.StringIO(), total=1)[1] is not None  # this test's own process
    with Progress(4, "row", desc="kto-precompute train", stream=stream) as rows:
        rows.update(4, 40)
    assert stream.getvalue().startswith("kto-precompute train: 100%")
    assert stream.getvalue().count("\n") == 1 and "\r" not in stream.getvalue()
