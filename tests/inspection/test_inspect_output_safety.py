"""kto-inspect prints user text (row ids, metric names, warnings) one line each, with no
terminal escape, and a reader that closes the pipe early is not a verify failure."""

import json
import os
import subprocess
import sys

import pytest
from click.testing import CliRunner

from kto.inspection.cli import main

# Sets the terminal title (OSC ... BEL), turns the text red (CSI), and fakes a line of its own.
EVIL = "evil\x1b]0;PWNED\x07\x1b[31mred\nfake: ok line"


@pytest.mark.parametrize(
    "text, shown",
    [
        (EVIL, "evil\\x1b]0;PWNED\\x07\\x1b[31mred\\nfake: ok line"),
        ("a\rb\tc\x00d\x7fe\x85f\x9bg", "a\\rb\\tc\\x00d\\x7fe\\x85f\\x9bg"),
        ("x\u2028y\u2029z", "x\\u2028y\\u2029z"),
        ("abc\u202edcba\u2066q\u2069", "abc\\u202edcba\\u2066q\\u2069"),
        ("data.jsonl:17 问题 🙂 é", "data.jsonl:17 问题 🙂 é"),
    ],
)
def test_printable_escapes_controls_and_keeps_text(text, shown):
    from kto.inspection.text import printable

    assert printable(text) == shown


def clean(out: str) -> None:
    """No control character but the newlines between lines, and no forged line."""
    assert not any((ord(c) < 32 and c != "\n") or 0x7F <= ord(c) <= 0x9F for c in out), out
    assert not any(line.startswith("fake: ok line") for line in out.splitlines()), out


def test_rows_header_escapes_row_and_kl_source_ids():
    from kto.inspection.rows import render

    row = {
        "id": EVIL,
        "label": "desirable",
        "truncated": False,
        "ref_logp": -1.0,
        "ref_logp_per_token": -0.5,
        "kl_source_id": EVIL + "2",
        "ref_kl_logp": -2.0,
        "prompt_len": 1,
        "completion_len": 2,
        "kl_completion_len": 2,
        "prompt": "p",
        "completion": "c\n",
        "kl_completion": "k",
        "tokens": [],
    }
    out = render([row])
    clean(out)
    assert "── evil\\x1b]0;PWNED\\x07\\x1b[31mred\\nfake: ok line  desirable" in out
    assert out.count("from evil\\x1b]0;PWNED\\x07\\x1b[31mred\\nfake: ok line2") == 2


def test_run_escapes_metric_names_and_warnings(tmp_path):
    pytest.importorskip("matplotlib")
    line = {"step": 1, "split": "train", "loss": 0.5, EVIL: None}
    (tmp_path / "metrics.jsonl").write_text(json.dumps(line) + "\n" + '{"step": 2, "spl')
    bad = tmp_path / "bad\x1b[2Jrun"
    bad.mkdir()
    (bad / "metrics.jsonl").write_text(json.dumps(line) + "\nnot json\n")
    for run in (tmp_path, bad):
        result = CliRunner().invoke(main, ["run", str(run), "--to", str(tmp_path / f"report-{len(str(run))}")])
        assert result.exit_code == 0, result.output
        clean(result.stdout)
        clean(result.stderr)
        assert "evil\\x1b]0;PWNED" in result.stdout and "warning" in result.stdout


def run_closed(*args: str) -> subprocess.CompletedProcess:
    """`kto-inspect ARGS | head -0`: the reader is gone before the first line is written."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "kto.inspection.cli", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    proc.stdout.close()
    stderr = proc.stderr.read().decode()
    return subprocess.CompletedProcess(args, proc.wait(timeout=300), "", stderr)


@pytest.mark.parametrize("args", [["verify", "{cache}"], ["summary", "{cache}", "--json"], ["--help"], ["verify", "--help"]])
def test_a_closed_pipe_exits_141_quietly(tiny_cache, args):
    """click turns EPIPE into exit 1, which for verify reads as "found a problem"."""
    result = run_closed(*(a.replace("{cache}", str(tiny_cache)) for a in args))
    assert result.returncode == 141, result.stderr
    assert result.stderr == ""


def test_a_pipe_closed_in_the_middle_of_a_long_output_exits_141(tiny_cache):
    """A reader that leaves after the first bytes of more than a pipe's 64 KiB (`rows --json |
    head -c 10`): through sys.stdout the write stopped at 64 KiB, the rest was lost and the
    command exited 0; the loss is said as a closed pipe, exit 141."""
    code = (
        "import kto.inspection.cli as cli, kto.inspection.summary as summary\n"
        "summary.summarize = lambda cache: {'rows': 'x' * 200_000}\n"  # a summary longer than the pipe holds
        f"cli.main(['summary', {str(tiny_cache)!r}, '--json'])\n"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    assert proc.stdout.read(10) == b'{\n  "rows"'  # the writer is in its write now, the pipe full behind it
    proc.stdout.close()
    stderr = proc.stderr.read().decode()
    assert proc.wait(timeout=300) == 141, stderr
    assert stderr == ""
