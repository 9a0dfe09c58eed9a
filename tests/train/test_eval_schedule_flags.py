"""A TRL or LLaMA-Factory file's eval schedule under kto-train's command-line flags: transformers
derives eval_steps from logging_steps, so a --log-every over the file's logging_steps moves the
evaluations with it, and a share of the total steps is said once."""

import pytest
from click.testing import CliRunner

import kto.train.api
import kto.train.cli
from kto.train.cli import main


@pytest.fixture
def captured(monkeypatch):
    """The TrainConfig the CLI builds, without training."""
    seen = []
    monkeypatch.setattr(kto.train.api, "run", seen.append)
    monkeypatch.setattr(kto.train.cli, "check_paths", lambda cfg: None)  # "c", "m" and "evalset" are placeholders
    return seen


def run(tmp_path, text, *extra):
    path = tmp_path / "run.yaml"
    path.write_text(text + "eval_cache: evalset\n")
    return CliRunner().invoke(main, ["--config", str(path), "--cache", "c", "--model", "m", "--out", str(tmp_path / "o"), *extra])


@pytest.mark.parametrize(
    "text, extra, log_every, eval_every",
    [
        ("eval_strategy: steps\nlogging_steps: 4\n", [], 4, 4),
        ("eval_strategy: steps\nlogging_steps: 4\n", ["--log-every", "2"], 2, 2),  # was 4: eval_steps is logging_steps
        ("eval_strategy: steps\nlogging_steps: 4\n", ["--log-every", "2", "--eval-every", "3"], 2, 3),
        ("eval_strategy: steps\nlogging_steps: 4\neval_steps: 6\n", ["--log-every", "2"], 2, 6),  # eval_steps written
        ("eval_strategy: steps\nlogging_steps: 0.5\nmax_steps: 8\n", ["--log-every", "2"], 2, 2),  # a share, overridden
        ("logging_steps: 4\neval_steps: 6\n", ["--log-every", "2"], 2, 6),
    ],
)
def test_log_every_on_the_command_line_moves_the_evaluations_derived_from_logging_steps(tmp_path, captured, text, extra, log_every, eval_every):
    result = run(tmp_path, text, *extra)
    assert result.exit_code == 0, result.output
    assert (captured[0].log_every, captured[0].eval_every) == (log_every, eval_every), result.output


def test_a_share_of_the_steps_read_for_logging_and_evaluation_is_said_once(tmp_path, captured):
    result = run(tmp_path, "eval_strategy: steps\nlogging_steps: 0.5\nmax_steps: 4\n")
    assert result.exit_code == 0, result.output
    assert (captured[0].log_every, captured[0].eval_every) == (2, 2)
    assert result.output.count("logging_steps: 0.5 -> every 2 steps") == 1, result.output


def test_log_every_0_over_evaluations_derived_from_logging_steps_is_refused(tmp_path, captured):
    """It quietly left evaluation after the last step only; the file's logging_steps: 0 is refused."""
    result = run(tmp_path, "eval_strategy: steps\nlogging_steps: 4\n", "--log-every", "0")
    assert result.exit_code == 2 and "--log-every 0 leaves no cadence; give --eval-every N" in result.output, result.output
    result = run(tmp_path, "eval_strategy: steps\nlogging_steps: 4\n", "--log-every", "0", "--eval-every", "0")
    assert result.exit_code == 0 and (captured[0].log_every, captured[0].eval_every) == (0, 0), result.output
