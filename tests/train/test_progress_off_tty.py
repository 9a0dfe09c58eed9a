"""kto-train's bars off a terminal (`kto-train … > train.log 2>&1`, nohup, a batch job): the log
holds the printed lines, each starting with its own text, and a bar line at most every 30 s and
once at the end of a finished run; nothing after a stop's `resume with:` line. Evaluation has a
bar of its own, on stderr.

Seen failing before: the bar was cleared and drawn again around every printed line, so such a
log was 78 % bar redraws, every line began `\\r…bar…\\r<spaces>\\r` (`grep -c '^step'` found 0),
a stop's last lines were bars after `resume with:`, a finished run drew its final bar twice;
and an evaluation (41 s of a 10-row eval on SmolLM2) showed nothing at all.

tqdm reads its clock from `tqdm.std.time`: each test moves a fake one by set amounts."""

from __future__ import annotations

import io
import json
import re
import sys

import pytest

from kto.formats.errors import log


@pytest.fixture
def clock(monkeypatch):
    import tqdm.std

    now = [1000.0]
    monkeypatch.setattr(tqdm.std, "time", lambda: now[0])
    return now


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def shown(line: str) -> str:
    """What a terminal shows of `line`: each carriage return goes back to its start, and what
    follows overwrites what was there."""
    screen = ""
    for part in line.split("\r"):
        screen = part + screen[len(part) :]
    return screen


def logged_run(clock, monkeypatch, steps: int, stop_at: int | None = None) -> list[str]:
    """The loop's printing for `steps` steps of 1 s, stdout and stderr into one file (`> log
    2>&1`): a step line each, a save line every 10; `stop_at`: stopped there by a signal."""
    from kto.train.progress import TrainProgress

    log_file = io.StringIO()
    monkeypatch.setattr(sys, "stdout", log_file)
    monkeypatch.setattr(sys, "stderr", log_file)
    progress = TrainProgress(steps, 0, enabled=True)
    try:
        with progress.lines_above():
            for step in range(1, steps + 1):
                clock[0] += 1.0
                progress.step()
                progress.window(1000.0, 0.5)
                progress.line(f"step {step}/{steps} loss 0.5000")
                if step % 10 == 0:
                    log(f"saved checkpoint-{step}")
                if step == stop_at:
                    log(f"kto-train: stopped by SIGTERM after step {step} of {steps}: saved checkpoint-{step}")
                    log("resume with: kto-train --resume")
                    raise KeyboardInterrupt
        log(f"kto-train: done at step {steps}, peak memory 1 GB")
    except KeyboardInterrupt:
        pass
    monkeypatch.undo()
    return log_file.getvalue().split("\n")


def test_off_a_terminal_lines_stay_whole_and_the_bar_is_a_line_every_30_s(clock, monkeypatch):
    lines = logged_run(clock, monkeypatch, 50)
    assert lines.pop() == ""  # every line ends with its newline
    assert "\r" not in "".join(lines)
    bars = [line for line in lines if line.startswith("kto-train: ")]
    assert len(bars) == 3, lines  # at 30 s, the final bar, and the done line
    assert re.match(r"kto-train:  60%\|.*\| 30/50 \[00:30<00:20, +1\.00it/s, 1,000 tok/s, loss 0\.5000\]$", bars[0]), bars
    assert re.match(r"kto-train: 100%\|.*\| 50/50 \[00:50<00:00", bars[1]), bars
    assert lines[-1] == bars[2] == "kto-train: done at step 50, peak memory 1 GB"
    steps = [line for line in lines if line.startswith("step ")]
    assert steps == [f"step {i}/50 loss 0.5000" for i in range(1, 51)]
    assert lines.index("step 29/50 loss 0.5000") < lines.index(bars[0]) < lines.index("step 30/50 loss 0.5000")  # drawn as step 30 ends
    assert len(lines) == 50 + 5 + 3  # the step lines, the save lines, the bars and the done line: nothing else


def test_a_bar_drawn_at_the_last_step_is_not_drawn_again(clock, monkeypatch):
    lines = logged_run(clock, monkeypatch, 30)
    bars = [line for line in lines if re.match(r"kto-train: +\d+%", line)]
    assert len(bars) == 1 and "30/30" in bars[0], lines


def test_nothing_follows_a_stops_resume_line(clock, monkeypatch):
    lines = logged_run(clock, monkeypatch, 50, stop_at=35)
    assert lines[-2:] == ["resume with: kto-train --resume", ""], lines
    assert len([line for line in lines if line.startswith("kto-train:  ")]) == 1  # the 30 s bar only


def test_a_stop_on_a_terminal_clears_the_bar(monkeypatch):
    """On a terminal the bar is drawn below each line, as before; a stop leaves the resume line last."""
    from kto.train.progress import TrainProgress

    terminal = Terminal()
    progress = TrainProgress(10, 0, enabled=True, stream=terminal)
    with pytest.raises(KeyboardInterrupt), progress.lines_above():
        progress.step()
        log("resume with: kto-train --resume")
        raise KeyboardInterrupt
    *_, resumed, last = terminal.getvalue().split("\n")
    assert shown(resumed).rstrip() == "resume with: kto-train --resume" and shown(last).strip() == "", repr(last)


def test_the_eval_bar_off_a_terminal_is_a_line_every_30_s_on_stderr(clock, monkeypatch, capsys):
    from kto.train.progress import EvalProgress

    with EvalProgress(10, enabled=True) as bar:
        for _ in range(10):
            clock[0] += 7.0
            bar.step()
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert captured.out == "" and len(lines) == 2, lines  # at 35 s and at 70 s; its end is the eval line's to say
    assert re.match(r"eval:  50%\|.*\| 5/10 \[00:35<00:35, +7\.00s/batch\]$", lines[0]), lines
    assert "\r" not in captured.err


def test_the_eval_bar_on_a_terminal_is_gone_when_it_ends(monkeypatch):
    from kto.train.progress import EvalProgress

    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    with EvalProgress(3, enabled=True) as bar:
        for _ in range(3):
            bar.step()
        assert bar.bar is not None and not bar.bar.leave
    monkeypatch.undo()
    text = terminal.getvalue()
    assert "eval:" in text and "\n" not in text and shown(text).strip() == "", repr(text)


def test_other_ranks_draw_no_eval_bar(capsys):
    from kto.train.progress import EvalProgress

    with EvalProgress(3, enabled=False) as bar:
        bar.step()
    assert capsys.readouterr() == ("", "") and bar.bar is None


def test_eval_only_prints_exactly_its_json_line_on_stdout_and_its_bar_on_stderr(tiny_eval_cache, tiny_model_dir, monkeypatch):
    """Each batch draws a line here (the interval set to 0)."""
    from accelerate.state import AcceleratorState
    from click.testing import CliRunner

    import kto.formats.bars as bars
    from kto.train.cli import main

    monkeypatch.setattr(bars, "REDRAW_OFF_TERMINAL_S", 0.0)
    AcceleratorState._reset_state(reset_partial_state=True)
    result = CliRunner().invoke(main, ["--eval-only", "--model", str(tiny_model_dir), "--eval-cache", str(tiny_eval_cache), "--batch-size", "4"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert len(lines) == 1 and json.loads(lines[0])["model"] == str(tiny_model_dir)
    bars_drawn = [line for line in result.stderr.splitlines() if line.startswith("eval: ")]
    assert bars_drawn and re.search(r"\| (\d+)/\1 \[", bars_drawn[-1]), result.stderr  # every batch of both passes
