"""kto-train's live progress (issue 22): a bar with step/total, it/s, tokens/s, elapsed and ETA;
per-step lines on stdout that reach a file or a pipe as they are written; `n/a` for a metric a
step cannot define; SIGINT/SIGTERM stop at a step boundary with a checkpoint and the --resume
command, and resuming gives the uninterrupted run's losses bit for bit."""

import io
import os
import re
import shlex
import signal
import subprocess
import sys

import pytest
import torch
from conftest import metrics, run_train
from safetensors.torch import load_file

ARGS = ["--batch-size", "2", "--lr", "1e-3", "--log-every", "1", "--warmup-ratio", "0.2"]

# kto-train as its console script runs it, with each optimizer step slowed down (after the update,
# so the numbers are untouched): the test can then see a line arrive, and signal the run, while
# steps remain.
SLOWED = """
import os, sys, time
import kto.train.loop as loop
update = loop.apply_update
def slowed(*args, **kwargs):
    update(*args, **kwargs)
    time.sleep(float(os.environ["STEP_SLEEP_S"]))
loop.apply_update = slowed
if "BUILD_SLEEP_S" in os.environ:  # the model's load, slowed: a line on stdout as it begins
    import kto.train.policy as policy
    build = policy.Policy.build
    def slow_build(*args, **kwargs):
        print("building the policy", flush=True)
        time.sleep(float(os.environ["BUILD_SLEEP_S"]))
        return build(*args, **kwargs)
    policy.Policy.build = staticmethod(slow_build)
from kto.train.cli import main
main(prog_name="kto-train")
"""


def start_slowed(cache, model, out, *extra: str, sleep_s: float = 0.5, env: dict | None = None, **popen) -> subprocess.Popen:
    # As many threads as this process: the in-process runs below are the reference (bit-identity
    # holds for the same kernels and thread count).
    env = {**os.environ, "STEP_SLEEP_S": str(sleep_s), "OMP_NUM_THREADS": str(torch.get_num_threads()), **(env or {})}
    cmd = [sys.executable, "-c", SLOWED, "--cache", str(cache), "--model", str(model), "--out", str(out), *ARGS, *extra]
    return subprocess.Popen(cmd, **{"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True, "env": env, **popen})


def run_command(args: list[str]):
    """kto-train with exactly these arguments, in this process (as conftest.run_train)."""
    from accelerate.state import AcceleratorState
    from click.testing import CliRunner

    from kto.train.cli import main

    AcceleratorState._reset_state(reset_partial_state=True)
    return CliRunner().invoke(main, args)


def read_until(proc: subprocess.Popen, prefix: str) -> list[str]:
    """stdout's lines up to the first that starts with `prefix` (fails if the run ends first)."""
    lines = []
    while not lines or not lines[-1].startswith(prefix):
        line = proc.stdout.readline()
        assert line, f"stdout ended before a line starting {prefix!r}: {lines} / {proc.stderr.read()[-3000:]}"
        lines.append(line)
    return lines


def signal_after(proc: subprocess.Popen, prefix: str, signum: int) -> str:
    """Send `signum` once stdout has a line starting with `prefix`; stderr after the process ends."""
    try:
        read_until(proc, prefix)
        proc.send_signal(signum)
        _, err = proc.communicate(timeout=600)
    finally:
        proc.kill()
    return err


@pytest.mark.slow
def test_step_lines_reach_a_pipe_while_the_run_goes_on_and_sigint_stops_with_a_resumable_checkpoint(tiny_cache, tiny_model_dir, tmp_path):
    """Seen failing before issue 22: no line on stdout at all (they went to stderr), and SIGINT
    ended the run with click's `Aborted!` (exit 1) and no checkpoint."""
    from kto.train.checkpoint import checkpoint_problem

    out = tmp_path / "stopped"
    proc = start_slowed(tiny_cache, tiny_model_dir, out, "--max-steps", "8")
    try:
        lines = read_until(proc, "step 2/8 ")
        assert proc.poll() is None  # the line came while 6 steps were still to run
        proc.send_signal(signal.SIGINT)
        rest, err = proc.communicate(timeout=600)
    finally:
        proc.kill()
    assert proc.returncode == 130, err[-3000:]
    stopped = re.search(r"stopped by SIGINT after step (\d+) of 8: saved (\S+)", err)
    assert stopped, err[-3000:]
    step = int(stopped.group(1))
    assert 2 <= step < 8 and stopped.group(2) == str(out / f"checkpoint-{step}")
    assert checkpoint_problem(out / f"checkpoint-{step}") is None and not (out / "final").exists()
    assert [m["step"] for m in metrics(out)] == list(range(1, step + 1))
    assert len(lines) + len(rest.splitlines()) == step  # one stdout line per step (--log-every 1), nothing else
    command = re.search(r"resume with: (kto-train .*)$", err, re.MULTILINE).group(1)
    words = shlex.split(command)
    assert words[:1] == ["kto-train"] and words[-1] == "--resume" and "--max-steps" in words

    resumed = run_command(words[1:])
    assert resumed.exit_code == 0, resumed.output
    assert f"resumed from {out / f'checkpoint-{step}'} at step {step}" in resumed.output
    straight = tmp_path / "straight"
    result = run_train(tiny_cache, tiny_model_dir, straight, *ARGS, "--max-steps", "8")
    assert result.exit_code == 0, result.output
    for a, b in zip(metrics(out), metrics(straight), strict=True):
        for key in ("step", "loss", "kl", "rewards/chosen", "rewards/rejected", "lr", "grad_norm"):
            assert a[key] == b[key], (a["step"], key)
    wa, wb = load_file(out / "final" / "model.safetensors"), load_file(straight / "final" / "model.safetensors")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def test_sigterm_stops_at_a_step_boundary_with_exit_143_and_lines_reach_a_pipe_as_they_happen(tiny_cache, tiny_model_dir, tmp_path):
    """Seen failing before issue 22: nothing on stdout (the step lines went to stderr, so
    `kto-train … > log` left the file empty); and SIGTERM killed the process (exit -15) without
    a checkpoint."""
    out = tmp_path / "r"
    proc = start_slowed(tiny_cache, tiny_model_dir, out, "--max-steps", "8", "--save-every", "4")
    try:
        read_until(proc, "step 1/8 ")
        assert proc.poll() is None  # the line came while 7 steps were still to run
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=600)
    finally:
        proc.kill()
    assert proc.returncode == 143, err[-3000:]
    assert "SIGTERM: stopping after this step, with a checkpoint" in err
    step = int(re.search(r"stopped by SIGTERM after step (\d+) of 8", err).group(1))
    assert 1 <= step < 8 and (out / f"checkpoint-{step}" / "model.safetensors").is_file()


@pytest.mark.parametrize("signum", [signal.SIGHUP, signal.SIGUSR1])
def test_sighup_and_sigusr1_stop_at_a_step_boundary_as_sigterm_does(tiny_cache, tiny_model_dir, tmp_path, signum):
    """SLURM's `--signal=USR1@120` and a closed ssh session (SIGHUP). Seen failing before: the
    process died of the signal at once (returncode -1 and -10), no checkpoint, nothing said."""
    out, name = tmp_path / "r", signal.Signals(signum).name
    proc = start_slowed(tiny_cache, tiny_model_dir, out, "--max-steps", "8")
    err = signal_after(proc, "step 1/8 ", signum)
    assert proc.returncode == 128 + signum, err[-3000:]
    assert f"{name}: stopping after this step, with a checkpoint\n" in err
    step = int(re.search(rf"stopped by {name} after step (\d+) of 8: saved ", err).group(1))
    assert 1 <= step < 8 and (out / f"checkpoint-{step}" / "model.safetensors").is_file()
    assert re.search(r"^resume with: kto-train .* --resume$", err, re.MULTILINE) and "Traceback" not in err


def test_a_closed_terminal_stops_the_run_with_a_checkpoint(tiny_cache, tiny_model_dir, tmp_path):
    """stderr on a terminal that hangs up (its ssh session closed): the kernel sends SIGHUP, and
    every later write to the terminal fails (EIO). Seen failing before: killed by SIGHUP, no
    checkpoint; with SIGHUP only noted, the line saying so raised that OSError mid-step."""
    import fcntl
    import termios

    out = tmp_path / "r"
    master, slave = os.openpty()
    proc = start_slowed(
        tiny_cache, tiny_model_dir, out, "--max-steps", "8", stdin=slave, stderr=slave,
        start_new_session=True, preexec_fn=lambda: fcntl.ioctl(0, termios.TIOCSCTTY, 0),
    )  # fmt: skip
    try:
        os.close(slave)
        read_until(proc, "step 1/8 ")
        os.close(master)  # the terminal hangs up
        proc.communicate(timeout=600)
    finally:
        proc.kill()
    assert proc.returncode == 128 + signal.SIGHUP
    assert len([p for p in out.glob("checkpoint-*") if (p / "model.safetensors").is_file()]) == 1


def test_a_closed_session_with_output_through_tee_stops_with_a_checkpoint(tiny_cache, tiny_model_dir, tmp_path):
    """`kto-train … 2>&1 | tee train.log` in an ssh session that closes: tee dies of the same
    SIGHUP, and every later write to the pipe fails (EPIPE). The pipe's read end is closed here
    once the run has said it stops. Seen failing before: the next step line raised
    BrokenPipeError, click turned it into a silent exit 1, and no checkpoint was saved."""
    out = tmp_path / "r"
    proc = start_slowed(tiny_cache, tiny_model_dir, out, "--max-steps", "8", stderr=subprocess.STDOUT)
    try:
        seen = []
        for wanted, then in (("step 1/8 ", lambda: proc.send_signal(signal.SIGHUP)), ("SIGHUP: stopping after this step", proc.stdout.close)):
            while not seen or wanted not in seen[-1]:  # the bar's redraws may share a line
                seen.append(proc.stdout.readline())
                assert seen[-1], seen
            then()
        proc.wait(timeout=600)
    finally:
        proc.kill()
    assert proc.returncode == 128 + signal.SIGHUP, "".join(seen)[-3000:]  # not 1 (click's EPIPE), nor 120 (a failed flush at exit)
    assert len([p for p in out.glob("checkpoint-*") if (p / "model.safetensors").is_file()]) == 1
    assert "Traceback" not in "".join(seen)


def test_a_run_under_nohup_ignores_sighup(tiny_cache, tiny_model_dir, tmp_path):
    """`nohup kto-train …` ignores SIGHUP so that the run outlives the session: kto-train keeps
    a signal ignored at its start ignored, rather than stopping on it."""
    out = tmp_path / "r"
    proc = start_slowed(tiny_cache, tiny_model_dir, out, "--max-steps", "3", preexec_fn=lambda: signal.signal(signal.SIGHUP, signal.SIG_IGN))
    err = signal_after(proc, "step 1/3 ", signal.SIGHUP)
    assert proc.returncode == 0, err[-3000:]
    assert "SIGHUP" not in err and (out / "final" / "model.safetensors").is_file()


def test_sigterm_while_the_model_loads_is_one_line_and_the_same_command_runs_again(tiny_cache, tiny_model_dir, tmp_path):
    """Before the loop's handlers are in, a signal raised formats.signals.Stopped. Seen failing
    before: killed silently (returncode -15)."""
    out = tmp_path / "r"
    proc = start_slowed(tiny_cache, tiny_model_dir, out, "--max-steps", "2", env={"BUILD_SLEEP_S": "30"})
    err = signal_after(proc, "building the policy", signal.SIGTERM)
    assert proc.returncode == 143, err[-3000:]
    assert err.splitlines()[-1] == "kto-train: stopped by SIGTERM; no step was trained in this run and nothing new saved; run the same command again"
    assert "Traceback" not in err and not list(out.glob("checkpoint-*"))
    again = run_train(tiny_cache, tiny_model_dir, out, *ARGS, "--max-steps", "2")
    assert again.exit_code == 0, again.output
    assert (out / "final" / "model.safetensors").is_file()


def test_a_step_with_one_class_prints_na_not_nan(tiny_cache, tiny_model_dir, tmp_path):
    """--batch-size 1: every step holds one class, so its margin is undefined. Seen failing
    before issue 22: `margin nan`."""
    result = run_train(tiny_cache, tiny_model_dir, tmp_path / "r", "--batch-size", "1", "--log-every", "1", "--max-steps", "2")
    assert result.exit_code == 0, result.output
    steps = [line for line in result.output.splitlines() if re.match(r"step \d/2 ", line)]
    assert len(steps) == 2 and all("margin n/a" in line for line in steps), result.output
    assert "nan" not in result.output


def test_the_run_draws_a_bar_with_steps_rate_tokens_elapsed_and_eta(tiny_cache, tiny_model_dir, tmp_path):
    """Seen failing before issue 22: kto-train drew no bar, and its step lines were on stderr."""
    result = run_train(tiny_cache, tiny_model_dir, tmp_path / "r", *ARGS, "--max-steps", "3")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()  # the step lines, and nothing else, on stdout
    assert len(lines) == 3 and all(re.match(rf"step {i}/3 loss \d\.\d{{4}} kl ", line) for i, line in enumerate(lines, 1)), result.stdout
    final = [s for s in re.split(r"[\r\n]", result.stderr) if s.startswith("kto-train: 100%")]
    assert final and re.search(r"\| 3/3 \[\d\d:\d\d<00:00, +[\d.]+(it/s|s/it), [\d,]+ tok/s, loss \d\.\d{4}\]", final[-1]), result.output


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_lines_are_written_above_the_bar_whole(capsys):
    """A stderr message and a stdout line while the bar is up: each is written after the bar is
    cleared (a carriage return), whole, and the bar is drawn again after it."""
    from kto.train.progress import TrainProgress

    terminal = Terminal()
    progress = TrainProgress(10, 4, enabled=True, stream=terminal)
    with progress.lines_above():
        progress.step()
        progress.window(12345.6, float("nan"))
        print("saved somewhere", file=sys.stderr, flush=True)
        progress.line("step 5/10 loss 0.5000")
    text = terminal.getvalue()
    assert "\rsaved somewhere\n" in text
    after = text.split("saved somewhere\n", 1)[1]
    assert re.match(r"\rkto-train:  50%\|.*\| 5/10 \[00:00<00:00, .*12,346 tok/s, loss n/a\]", after)
    assert capsys.readouterr().out == "step 5/10 loss 0.5000\n"


def test_other_ranks_print_nothing(capsys):
    from kto.train.progress import TrainProgress

    progress = TrainProgress(3, 0, enabled=False, stream=Terminal())
    with progress.lines_above():
        progress.step()
        progress.line("step 1/3")
    assert capsys.readouterr().out == "" and progress.bar is None


def test_a_signal_while_final_is_written_is_noted_and_final_is_written_whole(tiny_cache, tiny_model_dir, tmp_path, monkeypatch):
    """The signal handlers were put back before final/ was written: a Ctrl-C or SIGTERM in that
    window (minutes for a large model) killed the run, every trained step lost with no checkpoint."""
    from kto.train.policy import Policy

    write = Policy.finish

    def signalled(self, *args, **kwargs):
        os.kill(os.getpid(), signal.SIGINT)  # arrives as the final save begins
        return write(self, *args, **kwargs)

    monkeypatch.setattr(Policy, "finish", signalled)
    result = run_train(tiny_cache, tiny_model_dir, tmp_path / "run", *ARGS, "--max-steps", "2")
    assert result.exit_code == 0, result.output
    assert "SIGINT came after the last step; the run finished and" in result.output
    assert (tmp_path / "run" / "final" / "model.safetensors").is_file()
