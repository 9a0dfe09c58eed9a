"""What the user reads on stderr: one exception type for every input problem, one `log`.

The CLIs catch `InputError` and print its message as a single line (no traceback), so the
message itself must name the file, row or flag that is wrong.
"""

from __future__ import annotations

import sys


def log(msg: str, accelerator=None) -> None:
    """One progress or warning line on stderr, flushed; with `accelerator`, from its main
    process only (every process runs the same code, the user wants each line once)."""
    if accelerator is None or accelerator.is_main_process:
        print(msg, file=sys.stderr, flush=True)


class InputError(ValueError):
    """Bad user input: a file, a row, a flag. The message is shown to the user verbatim."""
