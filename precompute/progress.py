"""Progress bar (rows, tokens/s, ETA) on stderr, for the main process only.

On a terminal the bar redraws in place up to ten times a second; elsewhere (a file, a pipe: a
batch job's log) it is a line of its own at most once every 30 s, and once more at the end of a
run that finishes (formats/bars.py, kto-train's rule too): not once per batch, and not carriage-
return redraws that pile up on one line of the log and run into the lines printed after them.

A scoring batch may hold one of a row's two sequences (main, KL) without the other, so a batch
counts n/2 rows; the bar is moved by whole rows only, so it shows `73/10000`, never `73.5`.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

from kto.formats.bars import BarLines, new_bar


class Progress:
    def __init__(self, total: int, unit: str, desc: str | None = None, enabled: bool = True, stream: TextIO | None = None):
        self.enabled = enabled
        self.tokens = 0
        self.rows = 0.0  # counted in halves (see the module's docstring); the bar shows int(rows)
        self.started = time.perf_counter()
        self.bar = None
        self.lines: BarLines | None = None  # off a terminal
        # sys.stderr as the command set it: it drops writes that fail after a hangup
        # (formats/signals.py), and tqdm keeps the object it is given. None: stderr closed.
        stream = stream or sys.stderr
        if enabled and stream is not None:
            self.bar, self.lines = new_bar(stream, total=total, unit=unit, desc=desc)

    def update(self, rows: float, tokens: int) -> None:
        self.tokens += tokens
        self.rows += rows
        if self.bar is not None:
            rate = self.tokens / max(time.perf_counter() - self.started, 1e-9)
            self.bar.set_postfix_str(f"{rate:,.0f} tok/s", refresh=False)
            whole = int(self.rows) - self.bar.n
            if whole:
                self.bar.update(whole)
        if self.lines is not None:
            self.lines.tick()

    def close(self, finished: bool = True) -> None:
        """The bar at its end (off a terminal: its last line, where the run `finished`), closed."""
        if self.lines is not None and finished:
            self.lines.last()
            self.lines = None
        if self.bar is not None:
            self.bar.close()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        # Closed now, also when the block raises: a bar left to the interpreter's exit drew itself
        # again below the error line (or the line a stop signal prints), which then was not the
        # last. Off a terminal it is not drawn again then, for the same reason.
        self.close(finished=exc_type is None)
