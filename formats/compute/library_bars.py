"""transformers' own progress bars ("Loading weights", "Writing model shards"), turned off where
they only clutter a log.

Off a terminal each redraw is a carriage return or a cursor-up escape written into the log file
a batch job keeps: one per tensor while a model loads, and at every checkpoint save. kto's own
lines already say what is loading or being saved, so the commands turn the library's bars off
around those calls (always for saves, off a terminal for loads) and put the setting back after,
so a program that turned them off itself keeps them off.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator

from kto.formats.bars import is_terminal


@contextlib.contextmanager
def library_bars_off(*, only_off_terminal: bool = False) -> Iterator[None]:
    """transformers' progress bars off for the block, then as they were. only_off_terminal:
    leave them on when stderr is a terminal, where a bar redraws in place."""
    from transformers.utils import logging as hf_logging

    was = hf_logging.is_progress_bar_enabled()
    if only_off_terminal and _stderr_is_terminal():
        yield
        return
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was:
            hf_logging.enable_progress_bar()


def _stderr_is_terminal() -> bool:
    return is_terminal(sys.stderr)
