"""kto-precompute's bar off a terminal (a batch job's log file): it redrew about 3.6 times a
second with carriage returns (219 redraws on one line in a 61 s run) and showed rows as floats
(`73.0/10000`). Now at most one redraw per REDRAW_OFF_TERMINAL_S there, as kto-train's bar, and
whole rows."""

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
    with Progress(10000, "train rows", stream=stream) as progress:
        for _ in range(6000):  # one batch of one sequence (half a row) every 0.1 s, for 600 s
            clock[0] += seconds / 6000
            progress.update(0.5, 40)
    text = stream.getvalue()
    draws = text.count("\r")
    # The first draw, one per 30 s (20), and the close: 22 at most; tqdm's default gave ~6000.
    assert draws <= 2 + seconds / REDRAW_OFF_TERMINAL_S, draws
    assert draws >= seconds / REDRAW_OFF_TERMINAL_S - 1  # it still redraws, every 30 s
    assert "3000/10000" in text.splitlines()[-1] or "3000/10000" in text.rsplit("\r", 1)[-1]
    assert ".5/10000" not in text and ".0/10000" not in text


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
