"""kto-inspect run's plots: a metric missing at some logged steps is drawn with gaps there, not as
a line through steps that had no value."""

import json
import math

import pytest


@pytest.fixture(autouse=True, scope="module")
def _needs_matplotlib():
    """Every test here plots (skipped without matplotlib, which collection does not import)."""
    pytest.importorskip("matplotlib")


def line(step: int, rejected: float | None, split: str = "train") -> dict:
    """A line of a window with one desirable row and, where `rejected` is set, one undesirable one
    (kto-train logs rewards/rejected null and count/rejected 0 without one)."""
    return {
        "step": step,
        "split": split,
        "loss": 0.5,
        "rewards/chosen": 0.1 * step,
        "rewards/rejected": rejected,
        "rewards/margins": None if rejected is None else 0.1 * step - rejected,
        "count/chosen": 1.0,
        "count/rejected": 0.0 if rejected is None else 1.0,
    }


def drawn(tmp_path, records, stem: str = "rewards") -> dict:
    """{legend label: Line2D} of the `stem` plot of a run logging `records`."""
    from matplotlib.figure import Figure

    from kto.inspection.report import GROUPS, draw_group
    from kto.inspection.runlog import read_run

    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    fig = draw_group(read_run(tmp_path), next(g for g in GROUPS if g[0] == stem), Figure)
    return {ln.get_label(): ln for ln in fig.axes[0].get_lines()}


def xy(ln) -> list[tuple[int, float | None]]:
    """The plotted points, None where the line is broken (NaN)."""
    return [(int(x), None if math.isnan(y) else pytest.approx(y)) for x, y in zip(ln.get_xdata(), ln.get_ydata())]


def test_a_sparse_series_breaks_at_the_steps_it_lacks_and_shows_its_points(tmp_path):
    """Seen: rewards/rejected, logged at steps 1, 4 and 5 only (the others had no undesirable
    row), was one straight line from 1 to 4 with no markers: the plot showed values at steps 2
    and 3. Now those steps are NaN (matplotlib breaks the line there) and the series has
    markers, so step 1, alone between gaps, is a visible point."""
    lines = drawn(tmp_path, [line(1, -0.1), line(2, None), line(3, None), line(4, -0.4), line(5, -0.5)])
    rejected = lines["undesirable (rewards/rejected)"]
    assert xy(rejected) == [(1, -0.1), (2, None), (3, None), (4, -0.4), (5, -0.5)]
    assert rejected.get_marker() == "o"
    assert xy(lines["margin (rewards/margins)"]) == [(1, 0.2), (2, None), (3, None), (4, 0.8), (5, 1.0)]
    # A series with a value at every step stays a plain line.
    chosen = lines["desirable (rewards/chosen)"]
    assert xy(chosen) == [(1, 0.1), (2, 0.2), (3, 0.3), (4, 0.4), (5, 0.5)]
    assert chosen.get_marker() in ("None", "", None)


def test_eval_lines_break_at_their_own_steps_only(tmp_path):
    """Eval lines are a series of their own: their gaps are the eval steps without a value, not
    the train steps between two evals."""
    records = [line(s, -0.1 * s) for s in (1, 2, 3, 4, 5, 6)] + [line(2, -0.2, "eval"), line(4, None, "eval"), line(6, -0.6, "eval")]
    lines = drawn(tmp_path, records)
    assert xy(lines["undesirable (rewards/rejected), eval"]) == [(2, -0.2), (4, None), (6, -0.6)]
    assert xy(lines["desirable (rewards/chosen), eval"]) == [(2, 0.2), (4, 0.4), (6, 0.6)]
    assert xy(lines["undesirable (rewards/rejected)"]) == [(s, -0.1 * s) for s in (1, 2, 3, 4, 5, 6)]


def test_a_metric_absent_from_every_line_is_not_drawn(tmp_path):
    """All NaN is no series: no legend entry for a metric that has no value at all."""
    lines = drawn(tmp_path, [line(s, None) for s in (1, 2, 3)])
    assert sorted(lines) == ["desirable (rewards/chosen)"]
