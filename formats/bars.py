"""How kto's own progress bars (kto-precompute's rows, kto-train's steps) redraw.

On a terminal a bar redraws in place, up to ten times a second. Elsewhere (a file, a pipe: a
batch job's log) each redraw is another carriage-return-separated copy in the log: at most one
every REDRAW_OFF_TERMINAL_S there, so that a log holds the printed lines and an occasional bar
(kto-precompute's redrew 219 times in 61 s into a job's log). One rule for both commands, kept
here since precompute/ and train/ never import each other.
"""

from __future__ import annotations

from typing import TextIO

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
