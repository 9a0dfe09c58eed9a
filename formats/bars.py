"""How kto's own progress bars (kto-precompute's rows, kto-train's steps) redraw.

On a terminal a bar redraws in place, up to ten times a second. Elsewhere (a file, a pipe: a
batch job's log) the bar is a line of its own (`BarLines`), at most one every
REDRAW_OFF_TERMINAL_S, so that a log holds the printed lines and an occasional bar, each starting
with its own text: tqdm's carriage-return redraws there had put 219 copies of kto-precompute's
bar on one line of a job's log in 61 s, and prefixed kto-train's step lines with bars. In a
Jupyter notebook (a kernel with ipywidgets) the bar is tqdm's widget, drawn live, and no line is
written. One rule for both commands, kept here since precompute/ and train/ never import each other.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any, TextIO

REDRAW_OFF_TERMINAL_S = 30.0


def is_terminal(stream: TextIO) -> bool:
    """Whether `stream` is a terminal; a notebook's or a caller's stream without isatty, None
    (a closed standard stream) and a closed file are not."""
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def redraw_intervals(stream: TextIO) -> dict[str, float]:
    """tqdm's mininterval and maxinterval for a bar drawn on `stream`."""
    terminal = is_terminal(stream)
    return {"mininterval": 0.1 if terminal else REDRAW_OFF_TERMINAL_S, "maxinterval": 10.0 if terminal else REDRAW_OFF_TERMINAL_S}


def _notebook_bar() -> type | None:
    """tqdm's notebook bar (a widget) where this process is a Jupyter kernel with ipywidgets, as
    tqdm.autonotebook chooses; None elsewhere."""
    import warnings

    from tqdm import std

    with warnings.catch_warnings():  # "Using tqdm.autonotebook.tqdm in notebook mode", as tqdm.auto silences it
        warnings.simplefilter("ignore", std.TqdmExperimentalWarning)
        from tqdm import autonotebook
    return None if autonotebook.tqdm is std.tqdm else autonotebook.tqdm


def new_bar(stream: TextIO, write: Callable[[str], None] | None = None, **kwargs: Any) -> tuple[Any, BarLines | None]:
    """A tqdm bar for `stream`, and the `BarLines` that write it where tqdm does not draw it live.
    On a terminal tqdm draws it, in a notebook as a widget (lines: None); elsewhere tqdm draws
    nowhere and the lines go through `write` (default: to `stream`, flushed). In a notebook the
    stream is not a terminal, and a bar drawn nowhere there was still a widget (tqdm.auto's),
    stuck for 30 s at a time, beside the text lines."""
    notebook = _notebook_bar()
    if notebook is not None:
        return notebook(file=stream, **kwargs), None
    from tqdm.std import tqdm

    terminal = is_terminal(stream)
    bar = tqdm(file=stream if terminal else _Nowhere(stream), dynamic_ncols=terminal, **redraw_intervals(stream), **kwargs)
    return bar, None if terminal else BarLines(bar, write or written_to(stream))


class _Nowhere(io.TextIOBase):
    """Where tqdm draws a bar off a terminal: nowhere (`BarLines` writes what is shown). Its
    encoding is the stream's: tqdm draws the bar in blocks where that is UTF-8, else in `#`."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream

    @property
    def encoding(self) -> str | None:
        return getattr(self.stream, "encoding", None)

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        return len(text)


class BarLines:
    """A bar off a terminal: a line of its own, at most every REDRAW_OFF_TERMINAL_S of the bar's
    clock (read when asked: a test may set it), through `write`."""

    def __init__(self, bar: Any, write: Callable[[str], None]) -> None:
        self.bar, self.write = bar, write
        self.drawn_at, self.drawn_n = 0.0, bar.n

    def tick(self) -> None:
        if self.bar.format_dict["elapsed"] - self.drawn_at >= REDRAW_OFF_TERMINAL_S:
            self.draw()

    def last(self) -> None:
        """The bar at its end, unless it was drawn there already."""
        if self.bar.n != self.drawn_n:
            self.draw()

    def draw(self) -> None:
        self.drawn_at, self.drawn_n = self.bar.format_dict["elapsed"], self.bar.n
        self.write(f"{self.bar}\n")


def written_to(stream: TextIO) -> Callable[[str], None]:
    """A BarLines writer: `text` on `stream`, flushed (a log shows each bar line as it comes)."""

    def write(text: str) -> None:
        stream.write(text)
        stream.flush()

    return write
