"""The signals that ask a command to stop, and what both commands do with one outside kto-train's loop.

SIGINT (Ctrl-C), SIGTERM (kill, a scheduler's preemption), SIGHUP (the terminal or ssh session
closed) and SIGUSR1 (SLURM's `#SBATCH --signal=USR1@120` warning before the time limit) all mean
"stop, I will run you again". kto-train's loop notes them and stops at a step boundary with a
checkpoint (train/stop.py). Elsewhere (all of kto-precompute, kto-train's start-up)
`raising_on_stop_signals` turns the first one into `Stopped`, which the CLI reports in one line
and exits with 128 + the signal's number, as a shell reports a command a signal ended. The
default action of each was to end the process silently, saying neither that nor how to go on.

All four only while a command runs (inside its `raising_on_stop_signals`). The Python API
(`kto.train.run` called from a host program) takes SIGINT and SIGTERM alone (`API_SIGNALS`):
SIGHUP and SIGUSR1 stay the host's. A host's `faulthandler.register(signal.SIGUSR1)` is installed
in C, so `signal.getsignal` reports SIG_DFL for it, and putting that back after the run left the
host to die of its next SIGUSR1.

A signal ignored when the command started stays ignored: `nohup kto-train …` ignores SIGHUP so
that the run outlives the session, and a job a script started with `&` ignores SIGINT.

After a hangup the terminal is gone: every write to it fails (EIO), and `… 2>&1 | tee log` in
the closed session loses its reader, tee, to the same SIGHUP: every write to the pipe fails
(EPIPE). Either would raise in the middle of whatever runs, the checkpoint not yet saved (click
turns EPIPE into a silent exit 1). So while a command runs, sys.stdout and sys.stderr are
`_DroppedAfterHangup`: after a SIGHUP, a write or flush that fails so sends that stream to
/dev/null instead of raising, and the interpreter's last flush at exit goes there too. A pipe
whose reader exits without a hangup (`less` quit, `| head -1`) is treated alike: it stopped a
training run at its next line, exit 1, no checkpoint; now the run goes on, its output dropped
(metrics.jsonl keeps every line). A write that succeeds (a file, a pipe whose reader lives on)
is never touched, and every other failure raises as it always did.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from types import FrameType
from typing import Any, TextIO

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1)
API_SIGNALS = (signal.SIGINT, signal.SIGTERM)  # what the Python API takes (see the module's docstring)

_terminals: set[int] = set()  # the standard streams (stdout, stderr) that were a terminal when handlers went in
_hangup = {"seen": False}  # a SIGHUP came while a command runs: _DroppedAfterHangup drops failed writes


class Stopped(KeyboardInterrupt):
    """The first stop signal outside kto-train's loop. A KeyboardInterrupt, so that code which
    cleans up after Ctrl-C cleans up after it too, and `except Exception` does not swallow it.
    formats.errors.one_line_errors says it where a command did not catch it."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"stopped by {signal.Signals(signum).name}")
        self.signum = signum


def not_ignored(signals: tuple[int, ...] = STOP_SIGNALS) -> tuple[int, ...]:
    """Those of `signals` that this process does not ignore (see the module's docstring); also
    notes which standard streams are a terminal now, for `after_hangup`."""
    _terminals.update(fd for fd in (1, 2) if os.isatty(fd))
    return tuple(s for s in signals if signal.getsignal(s) is not signal.SIG_IGN)


def after_hangup(signum: int) -> None:
    """After SIGHUP: from now on a standard stream whose write fails is dropped (see the
    module's docstring); one whose terminal hung up goes to /dev/null at once (a hung-up
    terminal answers isatty's ioctl with EIO: no longer a terminal)."""
    if signum != signal.SIGHUP:
        return
    _hangup["seen"] = True
    for fd in sorted(_terminals):
        if not os.isatty(fd):
            _to_devnull(fd)


def _to_devnull(fd: int) -> None:
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, fd)
    os.close(null)


class _DroppedAfterHangup:
    """sys.stdout or sys.stderr while a command runs: `stream` itself, except that after a
    SIGHUP a write or flush that fails with EPIPE or EIO points the stream's descriptor at
    /dev/null and is dropped. Everything that writes to the stream goes through here: print,
    click.echo, log(), and the tqdm bars and loggers made while the command runs, which keep the
    sys.stderr of their making."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream

    def write(self, text: str) -> int:
        try:
            return self.stream.write(text)
        except OSError as exc:
            if not self._dropped(exc):
                raise
            return len(text)

    def writelines(self, lines: Iterable[str]) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        try:
            self.stream.flush()
        except OSError as exc:
            if not self._dropped(exc):
                raise

    def _dropped(self, exc: OSError) -> bool:
        # EPIPE: the pipe's reader is gone (tee closed with the session, `less` quit, `head`
        # had its lines), so the output has nowhere to go, hangup or not; the run goes on, and
        # metrics.jsonl keeps every line. EIO: a terminal gone, only after its hangup.
        if exc.errno != errno.EPIPE and not (_hangup["seen"] and exc.errno == errno.EIO):
            return False
        with contextlib.suppress(OSError, ValueError):  # a stream without a descriptor: only this write is dropped
            _to_devnull(self.stream.fileno())
        with contextlib.suppress(OSError, ValueError):
            self.stream.flush()  # what its buffer still held goes to /dev/null, not to the interpreter's exit
        return True

    def __getattr__(self, name: str) -> Any:  # isatty, fileno, encoding, buffer, ...: the stream's
        return getattr(self.stream, name)


@contextlib.contextmanager
def _streams_dropped_after_hangup() -> Iterator[None]:
    """sys.stdout and sys.stderr as `_DroppedAfterHangup` for the block. After a SIGHUP they
    stay so (the command is ending; the interpreter's last flush must not raise either)."""
    real = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = (s if isinstance(s, _DroppedAfterHangup) else _DroppedAfterHangup(s) for s in real)
    guards = sys.stdout, sys.stderr
    try:
        yield
    finally:
        for guard in guards:
            with contextlib.suppress(Exception):
                guard.flush()
        if not _hangup["seen"] and (sys.stdout, sys.stderr) == guards:
            sys.stdout, sys.stderr = real


_raising: list[dict[int, Any]] = []  # the handlers each active raising_on_stop_signals replaced


@contextlib.contextmanager
def raising_on_stop_signals() -> Iterator[None]:
    """A command's signals, from its first line (kto-precompute's, kto-train's): while active,
    the first stop signal raises `Stopped` in the main thread; the handlers in force before are
    back from then on (a second signal acts as it would have). kto-train's loop takes all four
    signals over while it is active (`loop_signals`). Outside the main thread (signals cannot be
    caught there) it installs no handlers. The standard streams drop writes that fail after a
    hangup (`_DroppedAfterHangup`)."""
    previous: dict[int, Any] = {}

    def stop(signum: int, frame: FrameType | None) -> None:
        _restore(previous)
        after_hangup(signum)
        raise Stopped(signum)

    if not _raising:
        _hangup["seen"] = False
    if threading.current_thread() is threading.main_thread():
        previous.update({s: signal.signal(s, stop) for s in not_ignored()})
    _raising.append(previous)
    try:
        with _streams_dropped_after_hangup():
            yield
    finally:
        _raising.remove(previous)
        _restore(previous)


def loop_signals() -> tuple[int, ...]:
    """The signals kto-train's loop takes: all four while a command runs (its
    raising_on_stop_signals is active), else SIGINT and SIGTERM (the Python API)."""
    return STOP_SIGNALS if _raising else API_SIGNALS


def take_over(handler: Callable[[int, FrameType | None], Any], signals: tuple[int, ...]) -> dict[int, Any]:
    """Install `handler` for those of `signals` not ignored, each before the start-up's raising
    handler goes (no signal ever meets its default action in between), and return the handlers
    to put back after: those from before each active `raising_on_stop_signals` (the outermost's),
    so that after kto-train's loop a signal acts as it did before kto-train began. The start-up
    then has none of these left to restore."""
    previous = {}
    for s in not_ignored(signals):
        current = signal.signal(s, handler)
        # The outermost raising_on_stop_signals replaced the handler from before them all.
        previous[s] = next((replaced[s] for replaced in _raising if s in replaced), current)
        for replaced in _raising:
            replaced.pop(s, None)
    return previous


def _restore(previous: dict[int, Any]) -> None:
    for s, handler in previous.items():
        signal.signal(s, handler)
    previous.clear()
