"""A second stop signal: what it does during kto-train's loop (train/stop.py: the launcher's echo of
the first Ctrl-C is absorbed, a real second Ctrl-C aborts without saving), during a command's
start-up or cleanup (formats/signals.py: it acts as it would have before the command began), and
after a command run in process (the handlers from before it are back).

The loop's clock (train/stop.py reads time.monotonic) is replaced by one the test moves, so no
test waits ECHO_S, and none depends on how fast two signals arrive."""

from __future__ import annotations

import os
import signal
from types import SimpleNamespace

import pytest
from conftest import run_precompute, run_train

import kto.train.loop as loop
import kto.train.stop as stop
from kto.formats.signals import STOP_SIGNALS, Stopped, raising_on_stop_signals
from kto.train.stop import ECHO_S, StopSignals

ONE = SimpleNamespace(is_main_process=True, num_processes=1)  # an Accelerator, as StopSignals reads one
ARGS = ["--batch-size", "2", "--lr", "1e-3", "--log-every", "1", "--max-steps", "3"]


@pytest.fixture
def clock(monkeypatch) -> list[float]:
    """train/stop.py's time.monotonic, reading now[0] (the test moves it)."""
    now = [1000.0]
    monkeypatch.setattr(stop, "time", SimpleNamespace(monotonic=lambda: now[0]))
    return now


def test_a_sigint_echo_within_echo_s_is_absorbed_and_a_later_one_aborts(clock):
    """torchrun and accelerate launch forward the SIGINT the terminal already sent the whole
    process group: that echo must not abort the run; a second Ctrl-C after ECHO_S must."""
    with StopSignals(ONE) as signals:
        os.kill(os.getpid(), signal.SIGINT)
        clock[0] += ECHO_S / 2
        try:
            os.kill(os.getpid(), signal.SIGINT)  # the launcher's echo: noted once already, absorbed
        except KeyboardInterrupt:
            pytest.fail(f"a SIGINT {ECHO_S / 2} s after the first (a launcher's echo) aborted the run")
        assert signals.requested() == signal.SIGINT
        clock[0] += ECHO_S  # 1.5 × ECHO_S after the first
        with pytest.raises(KeyboardInterrupt) as second:
            os.kill(os.getpid(), signal.SIGINT)
    assert type(second.value) is KeyboardInterrupt  # not a Stopped: the loop's own abort


def test_a_second_sigterm_is_noted_not_fatal(clock):
    """Only a second Ctrl-C aborts: a scheduler's repeated SIGTERM waits for the checkpoint."""
    with StopSignals(ONE) as signals:
        os.kill(os.getpid(), signal.SIGTERM)
        clock[0] += 10 * ECHO_S
        os.kill(os.getpid(), signal.SIGTERM)
        assert signals.requested() == signal.SIGTERM


def sending_after_step(monkeypatch, clock: list[float], gap: float) -> None:
    """kto-train's first optimizer step ends with two SIGINTs, `gap` seconds apart on the loop's clock."""
    real = loop.train_step
    calls = []

    def step(run, prefetch):
        done = real(run, prefetch)
        calls.append(1)
        if len(calls) == 1:
            os.kill(os.getpid(), signal.SIGINT)
            clock[0] += gap
            os.kill(os.getpid(), signal.SIGINT)
        return done

    monkeypatch.setattr(loop, "train_step", step)


def test_kto_train_absorbs_the_launchers_echo_and_stops_after_the_step_with_a_checkpoint(tiny_cache, tiny_model_dir, tmp_path, monkeypatch, clock):
    out = tmp_path / "run"
    sending_after_step(monkeypatch, clock, gap=ECHO_S / 4)
    result = run_train(tiny_cache, tiny_model_dir, out, *ARGS, "--save-every", "0")
    assert result.exit_code == 130, result.output
    assert "kto-train: stopped by SIGINT after step 1 of 3: saved" in result.output
    assert "interrupted" not in result.output
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-1"]


def test_kto_train_aborts_without_saving_on_a_second_ctrl_c_after_echo_s(tiny_cache, tiny_model_dir, tmp_path, monkeypatch, clock):
    """What the first Ctrl-C's line promises: `Ctrl-C again aborts without saving`."""
    out = tmp_path / "run"
    sending_after_step(monkeypatch, clock, gap=ECHO_S + 1)
    result = run_train(tiny_cache, tiny_model_dir, out, *ARGS, "--save-every", "0")
    assert result.exit_code == 130, result.output
    assert "SIGINT: stopping after this step, with a checkpoint; Ctrl-C again aborts without saving" in result.output
    assert "kto-train: interrupted" in result.output and "stopped by SIGINT after step" not in result.output
    assert list(out.glob("checkpoint-*")) == []


def test_a_second_signal_after_stopped_acts_as_before_the_command():
    """The first Ctrl-C of kto-precompute (or of kto-train's start-up) raises Stopped, and the
    command cleans up; a second one meanwhile is the user insisting: it acts as Ctrl-C did before
    the command (KeyboardInterrupt here), and a SIGTERM reaches the handler from before it."""
    seen = []
    host = signal.signal(signal.SIGTERM, lambda signum, frame: seen.append(signum))
    ctrl_c = signal.signal(signal.SIGINT, signal.default_int_handler)  # Python's own, whatever ran before
    try:
        with raising_on_stop_signals():
            with pytest.raises(Stopped):
                os.kill(os.getpid(), signal.SIGINT)
            with pytest.raises(KeyboardInterrupt) as second:  # during the cleanup
                os.kill(os.getpid(), signal.SIGINT)
            assert type(second.value) is KeyboardInterrupt
            os.kill(os.getpid(), signal.SIGTERM)
            assert seen == [signal.SIGTERM]
    finally:
        signal.signal(signal.SIGTERM, host)
        signal.signal(signal.SIGINT, ctrl_c)


def test_a_command_run_in_process_puts_back_the_handlers_from_before_it(tmp_path):
    """kto-precompute's main called from a host program (a notebook, CliRunner): after it returns
    (here refused at its first check) a Ctrl-C or SIGTERM acts as it did before, not as a Stopped
    raised into whatever the host runs next."""
    seen = []
    mine = signal.signal(signal.SIGTERM, lambda signum, frame: seen.append(signum))
    before = {s: signal.getsignal(s) for s in STOP_SIGNALS}
    try:
        result = run_precompute("--data", str(tmp_path / "missing.jsonl"), "--model", str(tmp_path / "m"), "--out", str(tmp_path / "c"))
        assert result.exit_code == 2, result.output
        assert {s: signal.getsignal(s) for s in STOP_SIGNALS} == before
        os.kill(os.getpid(), signal.SIGTERM)
        assert seen == [signal.SIGTERM]
        with raising_on_stop_signals():
            pass
        assert {s: signal.getsignal(s) for s in STOP_SIGNALS} == before
    finally:
        signal.signal(signal.SIGTERM, mine)
