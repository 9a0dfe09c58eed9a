"""Every refusal of the three commands is one line, `PROG: error: …`, exit 2 (README: "Bad
input gets a one-line error that names the file, row or flag"): click's own usage errors too,
which printed three (`Usage: …`, `Try '… --help' for help.`, `Error: …`); and an empty path is
refused naming its flag, where it was taken for the current directory and the cache (or the
report) was written there."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from kto.inspection.cli import main as inspect_main
from kto.precompute.cli import main as precompute_main
from kto.train.cli import main as train_main

COMMANDS = {"kto-precompute": precompute_main, "kto-train": train_main, "kto-inspect": inspect_main}


def refused(prog: str, args: list[str], cwd: Path) -> str:
    """The one stderr line of a refusal (exit 2, nothing on stdout, nothing written in `cwd`)."""
    here = cwd / "cwd"
    here.mkdir()
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(here)
        result = CliRunner().invoke(COMMANDS[prog], args)
    assert list(here.iterdir()) == [], "written into the current directory"
    assert result.exit_code == 2, result.output
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{prog}: error: "), result.stderr
    return lines[0]


@pytest.mark.parametrize(
    ("prog", "args", "says"),
    [
        ("kto-precompute", ["--max-length", "1.5"], "Invalid value for '--max-length': '1.5' is not a valid integer"),
        ("kto-precompute", ["--max-length", "abc"], "Invalid value for '--max-length'"),
        ("kto-precompute", ["--max-length", ""], "Invalid value for '--max-length'"),
        ("kto-precompute", ["--dtype", "abc"], "Invalid value for '--dtype'"),
        ("kto-precompute", ["--eval-fraction", "abc"], "Invalid value for '--eval-fraction'"),
        ("kto-train", ["--lr", "abc"], "Invalid value for '--lr'"),
        ("kto-train", ["--batch-size", "1.5"], "Invalid value for '--batch-size'"),
        ("kto-inspect", ["rows", "c", "--limit", "abc"], "Invalid value for '--limit'"),
        ("kto-inspect", ["score", "c", "--model", "m", "--dtype", "abc"], "Invalid value for '--dtype'"),
    ],
)
def test_a_value_of_the_wrong_type_is_one_line_naming_the_flag(tmp_path, prog, args, says):
    assert says in refused(prog, args, tmp_path)


@pytest.mark.parametrize(
    ("prog", "args", "says"),
    [
        ("kto-precompute", ["--bogus"], "No such option"),
        ("kto-train", ["--bogus"], "No such option"),
        ("kto-train", ["--learning_rate", "1e-5"], "No such option: --learning_rate (TRL/LLaMA-Factory's name for kto-train's --lr"),
        ("kto-precompute", ["--max-length"], "Option '--max-length' requires an argument"),
        ("kto-inspect", ["score", "c"], "Missing option '--model'"),
        ("kto-inspect", ["rows"], "Missing argument 'CACHE'"),
        ("kto-inspect", ["rows", "c", "--bogus"], "No such option"),
        ("kto-inspect", ["nosuch"], "No such command 'nosuch'"),
        ("kto-inspect", ["--bogus"], "No such option"),
    ],
)
def test_a_usage_error_is_one_line_with_where_to_find_help(tmp_path, prog, args, says):
    line = refused(prog, args, tmp_path)
    assert says in line and "--help" in line


@pytest.mark.parametrize("prog, args", [("kto-precompute", ["--help"]), ("kto-train", ["--help"]), ("kto-inspect", ["rows", "--help"])])
def test_help_is_click_s_own(prog, args):
    result = CliRunner().invoke(COMMANDS[prog], args)
    assert result.exit_code == 0 and result.stdout.startswith("Usage: ") and "Options:" in result.stdout


@pytest.mark.parametrize(
    ("prog", "args", "flag"),
    [
        ("kto-precompute", ["--data", "d.jsonl", "--model", "m", "--out", ""], "'--out'"),
        ("kto-precompute", ["--data", "", "--model", "m", "--out", "o"], "'--data'"),
        ("kto-precompute", ["--eval-data", ""], "'--eval-data'"),
        ("kto-precompute", ["--config", ""], "'--config'"),
        ("kto-precompute", ["--chat-template", ""], "'--chat-template'"),
        ("kto-precompute", ["--dataset-dir", ""], "'--dataset-dir'"),
        ("kto-precompute", ["--sharegpt-info", ""], "'--sharegpt-info'"),
        ("kto-train", ["--cache", "c", "--model", "m", "--out", ""], "'--out'"),
        ("kto-train", ["--cache", ""], "'--cache'"),
        ("kto-train", ["--eval-cache", ""], "'--eval-cache'"),
        ("kto-train", ["--config", ""], "'--config'"),
        ("kto-train", ["--resume", ""], "'--resume'"),
        ("kto-inspect", ["run", "r", "--to", ""], "'--to'"),
        ("kto-inspect", ["run", ""], "'OUT'"),
        ("kto-inspect", ["summary", ""], "'CACHE'"),
        ("kto-inspect", ["verify", ""], "'CACHE'"),
        ("kto-inspect", ["rows", ""], "'CACHE'"),
        ("kto-inspect", ["score", "", "--model", "m"], "'CACHE'"),
        ("kto-inspect", ["score", "c", "--model", "m", "--out", ""], "'--out'"),
    ],
)
def test_an_empty_path_is_refused_naming_its_flag(tmp_path, prog, args, flag):
    line = refused(prog, args, tmp_path)
    assert flag in line and "empty" in line


def test_inspect_run_to_empty_writes_nothing_in_the_current_directory(tmp_path):
    """The hunt's case: a real run, `--to ''` wrote report.html and the PNGs into the cwd."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text('{"step": 1, "loss": 0.5}\n')
    refused("kto-inspect", ["run", str(run), "--to", ""], tmp_path)
