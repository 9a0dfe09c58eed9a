"""The console (stdout, stderr) while a command runs: a write that fails because the disk is full
or the device gone drops that stream's output from then on, and the work goes on; a closed
stdout (`kto-train … >&-`) is left closed, not wrapped; a command's result on stdout (kto-train
--eval-only's JSON line) still fails loudly.

Seen failing before: `kto-train … > small/a.log` on a disk that filled died mid-run with
`OSError: [Errno 28] No space left on device` (exit 1, 23 trained steps lost), `> /dev/full` at
its first step; with stdout closed all three commands died at start-up (`'NoneType' object has
no attribute 'flush'`, from the wrapper made around sys.stdout = None)."""

from __future__ import annotations

import errno
import io
import os
import shlex
import subprocess
import sys

import pytest

from kto.formats.signals import console_error, raising_on_stop_signals, write_result


class Failing(io.StringIO):
    """A stream whose every write and flush fails with `code`."""

    def __init__(self, code: int) -> None:
        super().__init__()
        self.code = code

    def write(self, text: str) -> int:
        raise OSError(self.code, os.strerror(self.code))

    def flush(self) -> None:
        raise OSError(self.code, os.strerror(self.code))


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EIO, errno.EBADF])
def test_a_full_stdout_is_dropped_said_once_on_stderr_and_the_command_goes_on(monkeypatch, code):
    err = io.StringIO()
    monkeypatch.setattr(sys, "stdout", Failing(code))
    monkeypatch.setattr(sys, "stderr", err)
    with raising_on_stop_signals():
        for step in range(3):
            print(f"step {step}", flush=True)
        print("after the steps", file=sys.stderr, flush=True)
    name = errno.errorcode[code]
    lines = err.getvalue().splitlines()
    assert len(lines) == 2 and lines[1] == "after the steps", lines
    assert lines[0].endswith(
        f": stdout: {os.strerror(code)} ({name}); console output there is dropped from here on and the run goes on (metrics.jsonl keeps every line)"
    )


def test_a_full_stderr_is_dropped_without_a_word_on_stdout(monkeypatch):
    """stdout holds kto-train's step lines (or --eval-only's JSON): a note there would be read as data."""
    out = io.StringIO()
    monkeypatch.setattr(sys, "stdout", out)
    monkeypatch.setattr(sys, "stderr", Failing(errno.ENOSPC))
    with raising_on_stop_signals():
        print("a warning", file=sys.stderr, flush=True)
        print("step 1", flush=True)
    assert out.getvalue() == "step 1\n"


def test_any_other_failure_still_raises(monkeypatch):
    monkeypatch.setattr(sys, "stdout", Failing(errno.EINVAL))
    with pytest.raises(OSError) as raised, raising_on_stop_signals():
        print("x", flush=True)
    assert raised.value.errno == errno.EINVAL


def test_a_closed_stdout_stays_none_and_a_bar_can_be_drawn(monkeypatch):
    """tqdm flushes sys.stdout before it draws (`getattr(sys.stdout, 'flush', …)()`): a wrapper
    around None raised AttributeError there, at every command's start-up."""
    from tqdm.auto import tqdm

    err = io.StringIO()
    monkeypatch.setattr(sys, "stdout", None)
    monkeypatch.setattr(sys, "stderr", err)
    with raising_on_stop_signals():
        assert sys.stdout is None
        bar = tqdm(total=2, file=sys.stderr)
        bar.update(2)
        bar.close()
        print("on stderr", file=sys.stderr, flush=True)
    assert "2/2" in err.getvalue() and err.getvalue().endswith("on stderr\n")


def test_a_result_on_stdout_is_written_or_fails_naming_the_error(monkeypatch, tmp_path):
    out = io.StringIO()
    monkeypatch.setattr(sys, "stdout", out)
    with raising_on_stop_signals():
        write_result('{"loss": 0.5}\n')
    assert out.getvalue() == '{"loss": 0.5}\n'

    monkeypatch.setattr(sys, "stdout", None)
    with pytest.raises(OSError) as closed, raising_on_stop_signals():
        write_result("{}\n")
    assert console_error("stdout", closed.value) == "stdout: closed (EBADF)"

    with open("/dev/full", "w") as full:
        monkeypatch.setattr(sys, "stdout", full)
        with pytest.raises(OSError) as failed, raising_on_stop_signals():
            print("dropped console line", flush=True)  # the console's failure drops it ...
            write_result("{}\n")  # ... the result's is raised
        assert console_error("stdout", failed.value) == "stdout: No space left on device (ENOSPC)"
        full.write("now to /dev/null")  # the descriptor was pointed at /dev/null: the exit's flush cannot fail
        full.flush()


def test_a_closed_stderr_says_nothing_on_stdout(monkeypatch):
    """print(file=None) writes to stdout: with `2>&-`, every message and error line landed there,
    beside --eval-only's JSON."""
    from kto.formats.errors import log, to_stderr

    out = io.StringIO()
    monkeypatch.setattr(sys, "stdout", out)
    monkeypatch.setattr(sys, "stderr", None)
    with raising_on_stop_signals():
        log("a note")
        print("a warning", file=sys.stderr, flush=True)
        print("the result", flush=True)
    to_stderr("kto-train: error: an error after the command's block")
    assert out.getvalue() == "the result\n"


def test_a_closed_stdout_is_held_by_an_inheritable_dev_null():
    """A child process started meanwhile gets the /dev/null too, not a closed stdout that its
    first file would take (its output then written into that file)."""
    code = "import os, sys; from kto.formats.signals import raising_on_stop_signals\nwith raising_on_stop_signals(): sys.stderr.write(f'{os.get_inheritable(1)} {os.path.realpath(f\"/proc/self/fd/1\")}')"
    proc = subprocess.run(["bash", "-c", f"{sys.executable} -c {shlex.quote(code)} >&-"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stderr == "True /dev/null", proc.stderr
