"""formats/signals.py and train/stop.py: which signals the Python API and the command line take,
the loop's handlers going in before the start-up's go, a stop signal during the first import,
and writes after a hangup (tests/train/test_progress.py runs whole kto-train commands)."""

from __future__ import annotations

import signal
import subprocess
import sys
from types import SimpleNamespace

import pytest

from kto.formats.errors import one_line_errors
from kto.formats.signals import STOP_SIGNALS, Stopped, raising_on_stop_signals
from kto.train.stop import StopSignals

ONE = SimpleNamespace(is_main_process=True, num_processes=1)  # an Accelerator, as StopSignals reads one

# A host program that registered faulthandler for SIGUSR1 (installed in C: signal.getsignal
# reports SIG_DFL) and its own SIGHUP handler, then ran kto-train's loop through the Python API.
HOST = """
import faulthandler, os, signal, sys, time
from types import SimpleNamespace
faulthandler.register(signal.SIGUSR1, file=sys.stderr, all_threads=False)
def mine(signum, frame):
    print("host's SIGHUP handler", flush=True)
signal.signal(signal.SIGHUP, mine)
from kto.train.stop import StopSignals
with StopSignals(SimpleNamespace(is_main_process=True, num_processes=1)):
    print("inside: SIGHUP is the host's:", signal.getsignal(signal.SIGHUP) is mine, flush=True)
os.kill(os.getpid(), signal.SIGUSR1)
os.kill(os.getpid(), signal.SIGHUP)
time.sleep(0.2)
print("alive", flush=True)
"""


def test_the_python_api_takes_sigint_and_sigterm_only_and_leaves_a_hosts_sigusr1_and_sighup():
    """Seen failing before: StopSignals took SIGUSR1 and SIGHUP in the Python API too, and put
    back SIG_DFL for SIGUSR1 (faulthandler's C handler is invisible to signal.getsignal): the
    host's next SIGUSR1 killed it (returncode -10)."""
    proc = subprocess.run([sys.executable, "-c", HOST], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.splitlines() == ["inside: SIGHUP is the host's: True", "host's SIGHUP handler", "alive"]
    assert "Current thread" in proc.stderr or "Stack (most recent call first)" in proc.stderr  # faulthandler's dump


def test_the_python_api_notes_sigint_and_sigterm():
    with StopSignals(ONE) as signals:
        taken = {s: signal.getsignal(s) == signals._note for s in STOP_SIGNALS}
    assert taken == {signal.SIGINT: True, signal.SIGTERM: True, signal.SIGHUP: False, signal.SIGUSR1: False}


def test_the_command_line_takes_all_four_and_after_the_loop_they_act_as_before_it_began():
    before = {s: signal.getsignal(s) for s in STOP_SIGNALS}
    with raising_on_stop_signals():
        with StopSignals(ONE) as signals:
            assert all(signal.getsignal(s) == signals._note for s in STOP_SIGNALS)
        assert {s: signal.getsignal(s) for s in STOP_SIGNALS} == before
    assert {s: signal.getsignal(s) for s in STOP_SIGNALS} == before


def test_the_loop_takes_each_signal_before_the_start_ups_handler_goes(monkeypatch):
    """Seen failing before: StopSignals put back the handlers from before kto-train's start-up
    first (SIG_DFL for SIGTERM), then installed its own; a signal in between killed the process
    silently. Now no stop signal is ever left to its default action in between."""
    installed = []
    real = signal.signal

    def recording(signum, handler):
        installed.append((signum, handler))
        return real(signum, handler)

    with raising_on_stop_signals():
        monkeypatch.setattr(signal, "signal", recording)
        with StopSignals(ONE):
            pass
        monkeypatch.setattr(signal, "signal", real)
    notes = [i for i, (_, handler) in enumerate(installed) if getattr(handler, "__name__", "") == "_note"]
    assert len(notes) == 4 and notes == list(range(4)), installed  # the loop's four first, the earlier handlers only when it ends


def test_one_line_errors_says_the_signal_of_a_stopped():
    """A Stopped (a KeyboardInterrupt) that reaches one_line_errors: its signal and 128 + its
    number, not `interrupted` and 130."""

    @one_line_errors("prog")
    def command():
        raise Stopped(signal.SIGTERM)

    with pytest.raises(SystemExit) as exit_:
        command()
    assert exit_.value.code == 143


# kto-train or kto-precompute as its console script runs it, its first import (`from .api import
# …`, inside raising_on_stop_signals but before the command's `except Stopped`) slowed.
SLOW_IMPORT = """
import builtins, sys, time
real = builtins.__import__
def slowed(name, globals=None, locals=None, fromlist=(), level=0):
    if level == 1 and name == "api" and not getattr(slowed, "done", False):
        slowed.done = True
        print("importing api", flush=True)
        time.sleep(60)
    return real(name, globals, locals, fromlist, level)
builtins.__import__ = slowed
if sys.argv[1] == "kto-train":
    from kto.train.cli import main
else:
    from kto.precompute.cli import main
main(args=sys.argv[2:], prog_name=sys.argv[1])
"""


@pytest.mark.parametrize("prog", ["kto-train", "kto-precompute"])
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_a_stop_signal_during_the_first_import_names_the_signal(tmp_path, prog, signum):
    """Seen failing before: `kto-train: interrupted`, exit 130, whatever the signal."""
    args = (
        ["--cache", "c", "--model", "m", "--out", str(tmp_path / "o")] if prog == "kto-train" else ["--data", "d", "--model", "m", "--out", str(tmp_path / "o")]
    )
    proc = subprocess.Popen([sys.executable, "-c", SLOW_IMPORT, prog, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline() == "importing api\n", proc.stderr.read()[-3000:]
        proc.send_signal(signum)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 128 + signum, err[-3000:]
    assert err.splitlines() == [f"{prog}: stopped by {signal.Signals(signum).name}; run the same command again"]


# Writes to a pipe whose reader is gone are dropped, before a SIGHUP (`less` quit) and after one
# (tee gone with the session), the interpreter's final flush included (no `Exception ignored`, no
# exit 120).
DEAD_PIPE = """
import os, signal, sys, time
from kto.formats.signals import Stopped, raising_on_stop_signals
with raising_on_stop_signals():
    print("ready", flush=True)
    sys.stdin.readline()  # the reader of stdout is gone now
    print("lost", flush=True)
    print("before a hangup: dropped", file=sys.stderr, flush=True)
    try:
        os.kill(os.getpid(), signal.SIGHUP)
        time.sleep(10)
    except Stopped:
        print("stopped", file=sys.stderr, flush=True)
    print("dropped " * 5000, flush=True)
    sys.stdout.write("dropped at exit")
print("after the block", file=sys.stderr, flush=True)
print("unflushed")
sys.exit(7)
"""


def test_a_write_to_a_dead_pipe_is_dropped_before_and_after_a_hangup(tmp_path):
    """Seen failing before: a reader gone without a hangup (`less` quit) raised BrokenPipeError,
    which stopped a training run at its next line with exit 1 and no checkpoint."""
    err = tmp_path / "err"
    with open(err, "w") as err_file:
        proc = subprocess.Popen([sys.executable, "-c", DEAD_PIPE], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err_file, text=True)
        try:
            assert proc.stdout.readline() == "ready\n"
            proc.stdout.close()
            proc.stdin.write("go\n")
            proc.stdin.close()
            proc.wait(timeout=60)
        finally:
            proc.kill()
    said = err.read_text()
    assert proc.returncode == 7, said
    assert said.splitlines() == ["before a hangup: dropped", "stopped", "after the block"]


def test_writes_to_a_pipe_whose_reader_lives_keep_flowing_after_a_hangup():
    code = DEAD_PIPE.replace("lost", "kept").replace("dropped", "flows")
    proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = proc.communicate("go\n", timeout=60)
    assert proc.returncode == 7, err
    assert out == "ready\nkept\n" + "flows " * 5000 + "\nflows at exitunflushed\n"
    assert err.splitlines() == ["before a hangup: flows", "stopped", "after the block"]
