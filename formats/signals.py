"""The signals that ask a command to stop, and what both commands do with one outside kto-train's loop.

SIGINT (Ctrl-C), SIGTERM (kill, a scheduler's preemption), SIGHUP (the terminal or ssh session
closed) and SIGUSR1 (SLURM's `#SBATCH --signal=USR1@120` warning before the time limit) all mean
"stop, I will run you again". kto-train's loop notes them and stops at a step boundary with a
checkpoint (train/stop.py). Elsewhere (all of kto-precompute, kto-train's start-up)
`raising_on_stop_signals` turns the first one into `Stopped`, which the CLI reports in one line
and exits with 128 + the signal's number, as a shell reports a command a signal ended. The
default action of each was to end the process silently, saying neither that nor how to go on.

A signal ignored when the command started stays ignored: `nohup kto-train …` ignores SIGHUP so
that the run outlives the session, and a job a script started with `&` ignores SIGINT.

After a hangup the terminal is gone: every write to it fails (EIO), so the first line printed
after SIGHUP would raise an OSError in the middle of whatever runs, the checkpoint not yet saved.
`after_hangup` points the standard streams that were a terminal and no longer are at /dev/null.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from collections.abc import Iterator
from types import FrameType
from typing import Any, NoReturn

from .errors import end_process_group, say_once

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1)

_terminals: set[int] = set()  # the standard streams (stdout, stderr) that were a terminal when handlers went in


class Stopped(KeyboardInterrupt):
    """The first stop signal outside kto-train's loop. A KeyboardInterrupt, so that code which
    cleans up after Ctrl-C cleans up after it too, and `except Exception` does not swallow it."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"stopped by {signal.Signals(signum).name}")
        self.signum = signum
        self.exit_code = 128 + signum


def not_ignored(signals: tuple[int, ...] = STOP_SIGNALS) -> tuple[int, ...]:
    """Those of `signals` that this process does not ignore (see the module's docstring); also
    notes which standard streams are a terminal now, for `after_hangup`."""
    _terminals.update(fd for fd in (1, 2) if os.isatty(fd))
    return tuple(s for s in signals if signal.getsignal(s) is not signal.SIG_IGN)


def after_hangup(signum: int) -> None:
    """After SIGHUP, send what is written to a standard stream whose terminal hung up to
    /dev/null (a hung-up terminal answers isatty's ioctl with EIO: no longer a terminal)."""
    if signum != signal.SIGHUP:
        return
    for fd in sorted(_terminals):
        if not os.isatty(fd):
            null = os.open(os.devnull, os.O_WRONLY)
            os.dup2(null, fd)
            os.close(null)


_raising: list[dict[int, Any]] = []  # the handlers each active raising_on_stop_signals replaced


@contextlib.contextmanager
def raising_on_stop_signals() -> Iterator[None]:
    """While active, the first stop signal raises `Stopped` in the main thread; the handlers in
    force before are back from then on (a second signal acts as it would have). Outside the main
    thread (signals cannot be caught there) it does nothing."""
    previous: dict[int, Any] = {}

    def stop(signum: int, frame: FrameType | None) -> None:
        _restore(previous)
        after_hangup(signum)
        raise Stopped(signum)

    if threading.current_thread() is threading.main_thread():
        previous.update({s: signal.signal(s, stop) for s in not_ignored()})
    _raising.append(previous)
    try:
        yield
    finally:
        _raising.remove(previous)
        _restore(previous)


def hand_over() -> None:
    """Put back the handlers that each active `raising_on_stop_signals` replaced: kto-train's
    loop takes the signals over from its start-up (train/stop.py) and restores these when it
    ends, so that after the loop a signal acts as it did before kto-train began."""
    for previous in _raising:
        _restore(previous)


def _restore(previous: dict[int, Any]) -> None:
    for s, handler in previous.items():
        signal.signal(s, handler)
    previous.clear()


def exit_stopped(prog: str, exc: Stopped, what: str) -> NoReturn:
    """Print `PROG: stopped by SIGTERM; WHAT` once (under a launcher every rank got the signal,
    see formats.errors.say_once), end the process group as an error does, and exit 128 + signum."""
    alike = say_once(f"{prog}: stopped by {signal.Signals(exc.signum).name}; {what}", False)
    end_process_group(every_rank_here=alike)
    sys.exit(exc.exit_code)
