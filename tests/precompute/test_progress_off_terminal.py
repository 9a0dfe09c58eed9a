"""kto-precompute's bar off a terminal (a batch job's log file): it redrew about 3.6 times a
second with carriage returns (219 redraws on one line in a 61 s run) and showed rows as floats
(`73.0/10000`). Then at most once per REDRAW_OFF_TERMINAL_S, still with carriage returns, so the
redraws piled up on one line of the log, and a line printed after the bar ran on from it. Now,
as kto-train's bar: a line of its own at most every REDRAW_OFF_TERMINAL_S, once more at the end of
a run that finishes (not after one that raised), whole rows, no carriage return."""

from __future__ import annotations

import io

import pytest

from kto.formats.bars import REDRAW_OFF_TERMINAL_S
from kto.precompute.progress import Progress


@pytest.fixture
def clock(monkeypatch):
    """tqdm's clock (tqdm.std.time) under the test's hand; tqdm's monitor thread, which reads the
    real clock, off."""
    import tqdm.std

    now = [1000.0]
    monkeypatch.setattr(tqdm.std, "time", lambda: now[0])
    monkeypatch.setattr(tqdm.std.tqdm, "monitor_interval", 0)
    return now


def test_off_a_terminal_the_bar_redraws_at_most_every_30_s_and_counts_whole_rows(clock):
    stream = io.StringIO()  # not a terminal: isatty() is False
    seconds = 600.0
    with Progress(10000, "row", desc="kto-precompute train", stream=stream) as progress:
        for _ in range(6000):  # one batch of one sequence (half a row) every 0.1 s, for 600 s
            clock[0] += seconds / 6000
            progress.update(0.5, 40)
    text = stream.getvalue()
    assert "\r" not in text and text.endswith("\n")
    lines = text.splitlines()
    # A line per 30 s (20), and the end's unless the last 30 s line was drawn there: tqdm's
    # default drew ~6000 times.
    assert seconds / REDRAW_OFF_TERMINAL_S <= len(lines) <= seconds / REDRAW_OFF_TERMINAL_S + 1, lines
    assert all(line.startswith("kto-precompute train: ") for line in lines), lines
    rows = [int(line.split("/10000")[0].rsplit(" ", 1)[-1]) for line in lines]
    assert rows == sorted(set(rows)) and rows[-1] == 3000 and 148 <= rows[0] <= 152, rows
    assert ".5/10000" not in text and ".0/10000" not in text


def test_off_a_terminal_a_run_that_raises_draws_no_last_line(clock):
    """Its error (or a stop's line) is the log's last, as kto-train's."""
    stream = io.StringIO()
    with pytest.raises(KeyboardInterrupt), Progress(100, "rows", stream=stream) as progress:
        clock[0] += 31
        progress.update(10, 40)  # drawn: 30 s have passed
        clock[0] += 1
        progress.update(10, 40)
        raise KeyboardInterrupt
    lines = stream.getvalue().splitlines()
    assert len(lines) == 1 and " 10/100 " in lines[0], lines


def test_on_a_terminal_the_bar_redraws_in_place(clock):
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    stream = Terminal()
    with Progress(10, "rows", stream=stream) as progress:
        for _ in range(10):
            clock[0] += 1
            progress.update(1, 4)
    assert stream.getvalue().count("\r") > 5 and "10/10" in stream.getvalue()


def test_half_rows_add_up_to_whole_rows_on_the_bar(clock):
    stream = io.StringIO()
    progress = Progress(7, "rows", stream=stream)
    for n in (1, 3, 2, 5, 3):  # sequences per batch: 14 = 7 rows of two sequences each
        progress.update(n / 2, 10)
        assert progress.bar.n == int(progress.rows) and isinstance(progress.bar.n, int)
    progress.close()
    assert progress.bar.n == 7 and "7/7" in stream.getvalue()


def test_a_disabled_bar_writes_nothing(clock):
    stream = io.StringIO()
    with Progress(10, "rows", enabled=False, stream=stream) as progress:
        progress.update(5, 10)
    assert stream.getvalue() == ""


def test_tokenizing_says_its_rows_in_a_long_staging_and_nothing_in_a_short_one(tmp_path, tiny_model_dir, monkeypatch):
    """Reading and tokenizing 500k chat rows took minutes with nothing printed before the scoring
    bar. Now its own bar counts the rows; off a terminal its lines come as the scoring bar's, and
    a staging shorter than one line's interval adds none to the log (here the interval is 0: a
    line per block of rows, then one at the end)."""
    from conftest import chat_rows, precompute_args, run_precompute, write_rows

    import kto.formats.bars as bars

    data = write_rows(tmp_path / "chat.jsonl", chat_rows())
    short = run_precompute(*precompute_args(data, tiny_model_dir, tmp_path / "a"))
    assert short.exit_code == 0 and "tokenize" not in short.output, short.output
    monkeypatch.setattr(bars, "REDRAW_OFF_TERMINAL_S", 0.0)
    long = run_precompute(*precompute_args(data, tiny_model_dir, tmp_path / "b"))
    lines = [line for line in long.output.splitlines() if line.startswith("kto-precompute tokenize --data: ")]
    assert long.exit_code == 0 and lines and f": {len(chat_rows())} rows " in lines[-1], long.output
