"""kto-train's live progress (issue 22): a bar with step/total, it/s, tokens/s, elapsed and ETA;
per-step lines on stdout; `n/a` for a metric a step cannot define."""

import io
import re
import sys

from conftest import run_train

ARGS = ["--batch-size", "2", "--lr", "1e-3", "--log-every", "1", "--warmup-ratio", "0.2"]


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
