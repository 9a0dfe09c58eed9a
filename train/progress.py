"""kto-train's live progress: a tqdm bar on stderr, the per-step lines on stdout (main process).

The bar shows step/total, it/s, elapsed and ETA (tqdm computes them from the step count, so the
bar costs no device sync) and, from each logged window, its tokens/s and loss. Elapsed and ETA
are wall time: s/it is the elapsed time over the steps done (tqdm's smoothing off), evals and
checkpoint saves included, so with evals and saves at regular steps the ETA is the time the rest
of the run takes (a bar that left them out undershot a SLURM time limit ~3x). The window's
tokens/s is the steps' alone (train/loop.py after_step). The per-step and
eval lines go to stdout, one per --log-every, each flushed as it is written: `kto-train … > log`
fills the file as the run goes (stdout to a file is block-buffered, so without the flush it would
fill only at the end), while the bar and the other messages stay on the terminal's stderr.

While the bar is up, every line (stdout's, and stderr's: saves, evals, warnings all go through
formats.errors.log) is written whole. On a terminal it is written above the bar (the bar cleared,
the line, the bar drawn again below it), and the bar redraws up to ten times a second. Elsewhere
(a file, a pipe: `kto-train … > train.log 2>&1`, a batch job's log) the lines are written as they
are, each starting with its own text (`grep '^step' train.log` finds them all), and the bar is a
line of its own at most every 30 s and once more at the end of a run that finishes; after a
stop or an error it is not drawn again, so a stop's `resume with:` line is the log's last.
Redrawing it around every line had made such a log three quarters bar, each line prefixed with
a carriage-return-separated bar. One rule for both commands (formats/bars.py; kto-precompute's
bar, precompute/progress.py, is drawn the same way, on stderr).

An evaluation (in the run, and kto-train --eval-only) has a bar of its own over its batches
(`EvalProgress`), on stderr, never stdout (--eval-only's stdout is its JSON line alone): on a
terminal below the step bar, gone when the evaluation ends; elsewhere a line at most every 30 s.
"""

from __future__ import annotations

import contextlib
import io
import math
import sys
import threading
from collections.abc import Iterator
from typing import TextIO

from kto.formats.bars import BarLines, is_terminal, new_bar, written_to


def number(x: float | None, digits: int = 4) -> str:
    """A metric for a log line: `n/a` where it is undefined (a window without one class has no
    margin: summarize gives NaN there, and metrics.jsonl writes null), never `nan`."""
    return f"{x:.{digits}f}" if x is not None and math.isfinite(x) else "n/a"


class TrainProgress:
    """The bar of one run from step `done` to `total`; `enabled` on the main process only (the
    others print nothing)."""

    def __init__(self, total: int, done: int, enabled: bool, stream: TextIO | None = None):
        self.enabled = enabled
        # A command's sys.stderr drops writes that have nowhere to go (formats/signals.py); tqdm
        # keeps the object it is given, so it is given that one, never sys.__stderr__.
        self.stream = stream or sys.stderr
        self.lock = threading.RLock()  # the prefetch thread may log too
        self.bar = None
        self.lines: BarLines | None = None  # off a terminal
        if enabled and self.stream is not None:  # None: stderr closed (`2>&-`)
            # rate = steps / elapsed (smoothing off): an eval between redraws is no spike nor gap
            self.bar, self.lines = new_bar(self.stream, lambda text: self.above(self.stream, text), total=total, initial=done, desc="kto-train", smoothing=0)

    def step(self) -> None:
        if self.bar is not None:
            self.bar.update(1)
        if self.lines is not None:
            self.lines.tick()

    def window(self, tokens_per_s: float, loss: float) -> None:
        """What the last logged window measured; shown from the next redraw on."""
        if self.bar is not None:
            self.bar.set_postfix_str(f"{tokens_per_s:,.0f} tok/s, loss {number(loss)}", refresh=False)

    def line(self, text: str) -> None:
        """One metrics line on stdout, above the bar, flushed (main process only; none where
        stdout is closed: metrics.jsonl keeps it)."""
        if self.enabled and sys.stdout is not None:
            self.above(sys.stdout, text + "\n")

    def above(self, stream: TextIO, text: str) -> None:
        with self.lock:
            redrawn = self.bar is not None and self.lines is None  # on a terminal
            if redrawn:
                self.bar.clear()
            stream.write(text)
            stream.flush()
            if redrawn:
                self.bar.refresh()

    @contextlib.contextmanager
    def lines_above(self) -> Iterator[None]:
        """Route stderr above the bar for the duration; close the bar at the end: drawn once more
        where the block ends well, not at all where it raises (a stop's resume line stays last;
        on a terminal the bar is cleared)."""
        if self.bar is None:
            yield
            return
        real = sys.stderr
        sys.stderr = _AboveTheBar(self, self.stream)
        try:
            yield
            if self.lines is not None:
                self.lines.last()
        except BaseException:
            self.bar.leave = False
            raise
        finally:
            sys.stderr = real
            self.bar.close()


class EvalProgress:
    """An evaluation's bar over `total` batches, on stderr, `enabled` on the main process only
    (see the module's docstring). Under the step bar (sys.stderr is then _AboveTheBar) it is
    drawn on the step bar's stream: on a terminal tqdm puts it on the line below."""

    def __init__(self, total: int, enabled: bool) -> None:
        self.bar = None
        self.lines: BarLines | None = None
        stream = sys.stderr
        if not enabled or stream is None:
            return
        if isinstance(stream, _AboveTheBar):
            stream = stream.stream
        # Its lines through sys.stderr: the step bar's lock, where that bar is up.
        self.bar, self.lines = new_bar(stream, written_to(sys.stderr), total=total, desc="eval", unit="batch", leave=False)

    def step(self) -> None:
        if self.bar is not None:
            self.bar.update(1)
        if self.lines is not None:
            self.lines.tick()

    def __enter__(self) -> EvalProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.close()


class _AboveTheBar(io.TextIOBase):
    """sys.stderr while the bar is up: each complete line is written above the bar."""

    def __init__(self, progress: TrainProgress, stream: TextIO):
        self.progress, self.stream, self.pending = progress, stream, ""

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        with self.progress.lock:
            self.pending += text
            if "\n" in self.pending:
                lines, self.pending = self.pending.rsplit("\n", 1)
                self.progress.above(self.stream, lines + "\n")
        return len(text)

    def flush(self) -> None:
        self.stream.flush()

    def isatty(self) -> bool:
        return is_terminal(self.stream)
