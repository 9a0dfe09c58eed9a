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
formats.errors.log) is written above it, whole: a terminal never shows a line torn by a redraw.
On a terminal the bar redraws up to ten times a second; elsewhere (a file, a pipe) at most once
every 30 s, so that a log file holds the lines and an occasional bar, not a redraw per step
(formats/bars.py, kto-precompute's rule too: its bar, precompute/progress.py, is the same tqdm,
on stderr too).
"""

from __future__ import annotations

import contextlib
import io
import math
import sys
import threading
from collections.abc import Iterator
from typing import TextIO

from kto.formats.bars import redraw_intervals


def number(x: float | None, digits: int = 4) -> str:
    """A metric for a log line: `n/a` where it is undefined (a window without one class has no
    margin: summarize gives NaN there, and metrics.jsonl writes null), never `nan`."""
    return f"{x:.{digits}f}" if x is not None and math.isfinite(x) else "n/a"


class TrainProgress:
    """The bar of one run from step `done` to `total`; `enabled` on the main process only (the
    others print nothing)."""

    def __init__(self, total: int, done: int, enabled: bool, stream: TextIO | None = None):
        self.enabled = enabled
        # A command's sys.stderr drops writes that fail after a hangup (formats/signals.py); tqdm
        # keeps the object it is given, so it is given that one, never sys.__stderr__.
        self.stream = stream or sys.stderr
        self.lock = threading.RLock()  # the prefetch thread may log too
        self.bar = None
        if enabled:
            from tqdm.auto import tqdm

            self.bar = tqdm(
                total=total,
                initial=done,
                desc="kto-train",
                file=self.stream,
                dynamic_ncols=True,
                **redraw_intervals(self.stream),
                smoothing=0,  # rate = steps / elapsed: an eval between redraws is no spike nor gap
            )

    def step(self) -> None:
        if self.bar is not None:
            self.bar.update(1)

    def window(self, tokens_per_s: float, loss: float) -> None:
        """What the last logged window measured; shown from the next redraw on."""
        if self.bar is not None:
            self.bar.set_postfix_str(f"{tokens_per_s:,.0f} tok/s, loss {number(loss)}", refresh=False)

    def line(self, text: str) -> None:
        """One metrics line on stdout, above the bar, flushed (main process only)."""
        if self.enabled:
            self.above(sys.stdout, text + "\n")

    def above(self, stream: TextIO, text: str) -> None:
        with self.lock:
            if self.bar is not None:
                self.bar.clear()
            stream.write(text)
            stream.flush()
            if self.bar is not None:
                self.bar.refresh()

    @contextlib.contextmanager
    def lines_above(self) -> Iterator[None]:
        """Route stderr above the bar for the duration; close the bar at the end."""
        if self.bar is None:
            yield
            return
        real = sys.stderr
        sys.stderr = _AboveTheBar(self, self.stream)
        try:
            yield
        finally:
            sys.stderr = real
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
        return self.stream.isatty()
