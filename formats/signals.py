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
`_ConsoleStream`s: a write or flush that fails because the output has nowhere to go sends that
stream to /dev/null instead of raising, and the interpreter's last flush at exit goes there too.
That is a pipe whose reader is gone (EPIPE: after a hangup, or `less` quit, `| head -1`), a
terminal gone (EIO), and a file on a disk that filled or a quota or size limit reached (ENOSPC,
EDQUOT, EFBIG: `kto-train … > small/train.log`, `> /dev/full`). Console output is not the
record (metrics.jsonl keeps every step line; each command's files keep its work): such a failure
stopped a training run at its next line, exit 1, the steps since its last checkpoint lost; now
the run goes on, that stream's output dropped. A stdout dropped for a full disk or a gone device
is said once on stderr (a stderr so dropped is not said on stdout: stdout is kto-train's step
lines and --eval-only's JSON, which scripts read). A write that succeeds (a file, a pipe whose
reader lives on) is never touched, and every other failure raises as it always did.

A closed standard stream (`kto-train … >&-`: Python's sys.stdout is then None) is left None, not
wrapped (tqdm flushes `getattr(sys.stdout, "flush", …)` before it draws), and its descriptor is
held by /dev/null, so that no file the command opens takes it: a child process's output would go
into that file. A command's result on stdout (kto-train --eval-only's JSON line) is not console
output: `write_result` raises where it cannot be written, and the command says so (exit 2).
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
_hangup = {"seen": False}  # a SIGHUP came while a command runs: a failed write is then the hangup's, said by no note


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
    """After SIGHUP: a standard stream whose terminal hung up goes to /dev/null at once (a hung-up
    terminal answers isatty's ioctl with EIO: no longer a terminal); one whose write then fails
    (EPIPE, EIO) is dropped without a note (see the module's docstring)."""
    if signum != signal.SIGHUP:
        return
    _hangup["seen"] = True
    for fd in sorted(_terminals):
        if not os.isatty(fd):
            _to_devnull(fd)


def _to_devnull(fd: int) -> None:
    null = os.open(os.devnull, os.O_WRONLY)
    if null != fd:  # the same where `fd` was closed: /dev/null took its number
        os.dup2(null, fd)  # inheritable, as a standard descriptor is
        os.close(null)
    else:
        os.set_inheritable(fd, True)  # os.open's are not: a child process would start with it closed


def _held(fd: int) -> None:
    """A closed standard descriptor, taken by /dev/null (see the module's docstring)."""
    try:
        os.fstat(fd)
    except OSError:
        with contextlib.suppress(OSError):
            _to_devnull(fd)


# A console write failing with one of these has nowhere to go: dropped (see the module's docstring).
# EBADF: a descriptor open for reading only (pyenv's shim leaves a `2>&-` so).
_NOWHERE = frozenset({errno.EPIPE, errno.EIO, errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EBADF})


def console_error(name: str, exc: OSError) -> str:
    """`stdout: No space left on device (ENOSPC)`: a standard stream's failure, for one line."""
    return f"{name}: {exc.strerror or exc} ({errno.errorcode.get(exc.errno or 0, exc.errno)})"


def dropped(stream: TextIO) -> None:
    """`stream`'s descriptor pointed at /dev/null and its buffer flushed there: what it still
    holds is not written again at the interpreter's exit (a second error). A stream without a
    descriptor is left as it is."""
    with contextlib.suppress(OSError, ValueError, AttributeError):
        _to_devnull(stream.fileno())
    with contextlib.suppress(OSError, ValueError):
        stream.flush()


class _ConsoleStream:
    """sys.stdout or sys.stderr while a command runs: `stream` itself, until a write or flush
    fails with one of _NOWHERE's errors; from then on its output is dropped (see the module's
    docstring). Everything that writes to the stream goes through here: print, click.echo, log(),
    and the tqdm bars and loggers made while the command runs, which keep the sys.stderr of
    their making."""

    def __init__(self, stream: TextIO, name: str) -> None:
        self.stream, self.name = stream, name
        self.lost: OSError | None = None  # the failure that dropped it

    def write(self, text: str) -> int:
        if self.lost is None:
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
        if self.lost is not None:
            return
        try:
            self.stream.flush()
        except OSError as exc:
            if not self._dropped(exc):
                raise

    def _dropped(self, exc: OSError) -> bool:
        if exc.errno not in _NOWHERE:
            return False
        self.lost = exc
        dropped(self.stream)
        # EPIPE: the reader is gone on purpose (`less` quit, `head` had its lines, tee ended with
        # the session); EIO after a hangup: the terminal closed. Nothing to tell anyone there.
        quiet = exc.errno == errno.EPIPE or (_hangup["seen"] and exc.errno == errno.EIO)
        if self.name == "stdout" and not quiet and sys.stderr is not None:
            # Only kto-train writes to stdout while it runs (kto-precompute's stays empty).
            note = (
                f"{_prog()}: {console_error('stdout', exc)}; console output there is dropped from here on and the run goes on (metrics.jsonl keeps every line)"
            )
            with contextlib.suppress(OSError, ValueError):
                print(note, file=sys.stderr, flush=True)
        return True

    def __getattr__(self, name: str) -> Any:  # isatty, fileno, encoding, buffer, ...: the stream's
        return getattr(self.stream, name)


def _prog() -> str:
    name = os.path.basename(sys.argv[0]) if sys.argv else ""
    return name if name.startswith("kto-") else "kto-train"


def write_result(text: str) -> None:
    """`text` on stdout, flushed: a command's result (kto-train --eval-only's JSON line), which
    unlike console output is not dropped: OSError where stdout is closed (EBADF), was dropped
    before (its failure), or fails now (then dropped too)."""
    stream = sys.stdout
    if stream is None:
        raise OSError(errno.EBADF, "closed")
    if isinstance(stream, _ConsoleStream):
        if stream.lost is not None:
            raise stream.lost
        stream = stream.stream
    try:
        stream.write(text)
        stream.flush()
    except OSError:
        dropped(stream)
        raise


@contextlib.contextmanager
def _console_streams() -> Iterator[None]:
    """sys.stdout and sys.stderr as `_ConsoleStream`s for the block (a closed one stays None).
    After a SIGHUP they stay so (the command is ending; the interpreter's last flush must not
    raise either)."""
    real = sys.stdout, sys.stderr
    for fd, stream in ((1, real[0]), (2, real[1])):
        if stream is None:
            _held(fd)
    # A closed stderr is /dev/null, not None: print(..., file=None) writes to stdout, so every
    # message and error line landed beside --eval-only's JSON. A closed stdout stays None (the
    # command's result there is refused by write_result; tqdm skips a None stdout).
    errors = open(os.devnull, "w", encoding="utf-8") if real[1] is None else real[1]
    sys.stdout, sys.stderr = (
        s if s is None or isinstance(s, _ConsoleStream) else _ConsoleStream(s, name) for s, name in ((real[0], "stdout"), (errors, "stderr"))
    )
    guards = sys.stdout, sys.stderr
    try:
        yield
    finally:
        for guard in guards:
            with contextlib.suppress(Exception):
                if guard is not None:
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
    caught there) it installs no handlers. The standard streams drop writes that have nowhere to
    go (`_ConsoleStream`)."""
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
        with _console_streams():
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
