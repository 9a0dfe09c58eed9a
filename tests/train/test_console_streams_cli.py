"""The commands with a stdout that cannot be written: closed (`>&-`) or full (`> /dev/full`, a
disk that fills). kto-train's step lines are console output (metrics.jsonl holds every one): the
run goes on without them. Where stdout is the command's result (kto-train --eval-only's JSON
line, kto-inspect's summary), one line on stderr names stdout and the error, exit 2.

Seen failing before: `kto-train … > /dev/full` died at step 1 with `OSError: [Errno 28] No space
left on device` (exit 1); with stdout closed every command died at start-up with
`AttributeError: 'NoneType' object has no attribute 'flush'`."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys

import pytest
from conftest import metrics

from kto.formats.signals import raising_on_stop_signals

FULL_NOTE = (
    "kto-train: stdout: No space left on device (ENOSPC); console output there is dropped from here on and the run goes on (metrics.jsonl keeps every line)"
)


def test_a_run_with_stdout_on_a_full_device_trains_to_the_end(tiny_cache, tiny_model_dir, tmp_path):
    out = tmp_path / "r"
    cmd = [sys.executable, "-c", "from kto.train.cli import main; main(prog_name='kto-train')"]
    args = ["--cache", str(tiny_cache), "--model", str(tiny_model_dir), "--out", str(out), "--max-steps", "2", "--log-every", "1", "--batch-size", "2"]
    with open("/dev/full", "w") as full:
        proc = subprocess.run([*cmd, *args], stdout=full, stderr=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and proc.stderr.count(FULL_NOTE) == 1, proc.stderr[-3000:]
    assert [m["step"] for m in metrics(out)] == [1, 2] and (out / "final" / "model.safetensors").is_file()


def eval_only_with(stdout, monkeypatch, capsys, *args: str) -> tuple[int, str]:
    """kto-train --eval-only in this process with sys.stdout replaced by `stdout` (None: closed):
    its exit status and stderr."""
    from accelerate.state import AcceleratorState

    from kto.train.cli import main

    AcceleratorState._reset_state(reset_partial_state=True)
    monkeypatch.setattr(sys, "stdout", stdout)
    with pytest.raises(SystemExit) as exited:
        main(["--eval-only", *args], prog_name="kto-train")
    monkeypatch.undo()
    return exited.value.code, capsys.readouterr().err


@pytest.mark.parametrize("closed", [True, False])
def test_eval_only_says_a_stdout_it_cannot_write_and_still_writes_out(tiny_eval_cache, tiny_model_dir, tmp_path, monkeypatch, capsys, closed):
    with open("/dev/full", "w") as full:
        code, err = eval_only_with(
            None if closed else full, monkeypatch, capsys, "--model", str(tiny_model_dir), "--eval-cache", str(tiny_eval_cache), "--out", str(tmp_path / "o")
        )
    assert code == 2, err
    errors = [line for line in err.splitlines() if line.startswith("kto-train: error:")]
    said = "closed (EBADF)" if closed else "No space left on device (ENOSPC)"
    target = tmp_path / "o" / "eval_results.json"
    assert errors == [f"kto-train: error: stdout: {said}: the eval line (JSON) was not written; it is in {target}"], err
    assert "Traceback" not in err and json.loads(target.read_text())["model"] == str(tiny_model_dir)


@pytest.mark.parametrize("redirect", [">&-", ">/dev/full"])
@pytest.mark.parametrize("subcommand", ["summary", "verify"])
def test_kto_inspect_says_a_stdout_it_cannot_write(tiny_cache, redirect, subcommand):
    """verify printed its verdict with click.echo: a traceback and exit 1 ("found a problem")
    for a good cache on a full disk, and exit 0 with nothing said on a closed stdout."""
    command = f"{sys.executable} -m kto.inspection.cli {subcommand} {tiny_cache} {redirect}"
    proc = subprocess.run(["bash", "-c", command], capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)
    said = "closed (EBADF)" if redirect == ">&-" else "No space left on device (ENOSPC)"
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr == f"kto-inspect: error: stdout: {said}: the output was not written\n"


def test_the_step_lines_with_stdout_closed_are_dropped_quietly(capsys, monkeypatch):
    """kto-train's loop prints its step lines through TrainProgress.line: with no stdout, none."""
    from kto.train.progress import TrainProgress

    monkeypatch.setattr(sys, "stdout", None)
    with raising_on_stop_signals():
        progress = TrainProgress(2, 0, enabled=True)
        with progress.lines_above():
            progress.step()
            progress.line("step 1/2 loss 0.5000")
    monkeypatch.undo()
    assert "Traceback" not in capsys.readouterr().err


def test_eval_only_with_stderr_closed_prints_the_json_line_alone(tiny_eval_cache, tiny_model_dir, monkeypatch):
    """With `2>&-` the settings line and the eval line went to stdout, before the JSON."""
    from accelerate.state import AcceleratorState

    from kto.train.cli import main

    AcceleratorState._reset_state(reset_partial_state=True)
    out = io.StringIO()
    monkeypatch.setattr(sys, "stdout", out)
    monkeypatch.setattr(sys, "stderr", None)
    with pytest.raises(SystemExit) as exited:
        main(["--eval-only", "--model", str(tiny_model_dir), "--eval-cache", str(tiny_eval_cache)], prog_name="kto-train")
    monkeypatch.undo()
    assert exited.value.code == 0
    lines = out.getvalue().splitlines()
    assert len(lines) == 1 and json.loads(lines[0])["model"] == str(tiny_model_dir), lines


def test_a_stream_without_isatty_is_no_terminal():
    """The Python API under a caller's stream with only write/flush: evaluate_model raised AttributeError."""
    from kto.train.progress import EvalProgress, is_terminal

    class Minimal:
        def write(self, text: str) -> int:
            return len(text)

        def flush(self) -> None:
            pass

    assert not is_terminal(Minimal()) and not is_terminal(io.StringIO())
    real = sys.stderr
    try:
        sys.stderr = Minimal()
        with EvalProgress(3, True) as bar:
            for _ in range(3):
                bar.step()
    finally:
        sys.stderr = real
