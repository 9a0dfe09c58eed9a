"""What the user reads on stderr: one exception type for every input problem, one `log`.

The CLIs catch `InputError` and print its message as a single line (no traceback), so the
message itself must name the file, row or flag that is wrong. Under several processes, a check
that only the main process makes reaches every rank through `on_main`.
"""

from __future__ import annotations

import functools
import signal
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:  # annotations only: this module imports no accelerate (or torch)
    from accelerate import Accelerator

T = TypeVar("T")


def log(msg: str, accelerator: Accelerator | None = None) -> None:
    """One progress or warning line on stderr, flushed; with `accelerator`, from its main
    process only (every process runs the same code, the user wants each line once)."""
    if accelerator is None or accelerator.is_main_process:
        print(msg, file=sys.stderr, flush=True)


class InputError(ValueError):
    """Bad user input: a file, a row, a flag. The message is shown to the user verbatim."""


def one_line_errors(prog: str) -> Callable:
    """Decorate a CLI entry point: an `InputError` becomes `PROG: error: MESSAGE` on stderr and
    exit status 2, never a traceback. The three commands share it, so they fail alike. A command
    is its process's whole life, so the process group a launcher made it join ends with it."""

    def decorate(fn: Callable) -> Callable:
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            try:
                return fn(*args, **kwargs)
            except InputError as exc:
                print(f"{prog}: error: {exc}", file=sys.stderr, flush=True)
                end_process_group()
                sys.exit(2)
            except KeyboardInterrupt:  # Ctrl-C where no handler notes it (start-up; kto-train's second one)
                # click would print "Aborted!" and exit 1; a shell reports a SIGINT as 130.
                print(f"{prog}: interrupted", file=sys.stderr, flush=True)
                end_process_group()
                sys.exit(128 + signal.SIGINT)

        return wrapper

    return decorate


def end_process_group() -> None:
    """Destroy torch.distributed's default group, if one is up. Left to the interpreter's exit,
    gloo's threads were sometimes torn down while still joinable: under torchrun, a rank that
    refused a flag on one line then died of SIGABRT ("terminate called without an active
    exception", exit -6), 1 run in 5 here. Never imports torch (a command that refused its
    flags before importing it has no group)."""
    dist = sys.modules.get("torch.distributed")
    if dist is not None and dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def on_main(fn: Callable[[], T], state: Any) -> T:
    """Run `fn` on the main process only and hand its result, or its InputError, to every rank,
    so that all ranks go on together or all stop with the same line (a rank that stopped alone
    would leave the others waiting in the next collective). The other ranks wait here meanwhile.

    `state`: an accelerate `Accelerator` or `PartialState` (is_main_process, num_processes).
    kto-precompute (taking --out) and kto-train (taking --out, choosing the checkpoint) share it.
    """
    if state.num_processes == 1:
        return fn()
    from accelerate.utils import broadcast_object_list  # only with several processes

    box = [None, None]
    if state.is_main_process:
        try:
            box[0] = fn()
        except InputError as exc:
            box[1] = str(exc)
    broadcast_object_list(box, from_process=0)
    if box[1] is not None:
        raise InputError(box[1])
    return box[0]
