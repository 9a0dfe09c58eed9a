"""kto-inspect run on a long metrics log: each series is read in one pass over the lines (a
200,000-line log took 25 s and 1 GB when every line was read as a RunLog of its own), the
plotted points are the series' own, and nothing is printed on stderr (matplotlib warned
`Creating legend with loc="best" can be slow` on such a log). No timing is asserted: the number
of passes is."""

import json
import math
import warnings

import pytest


@pytest.fixture(autouse=True, scope="module")
def _needs_matplotlib():
    """Every test here plots (skipped without matplotlib, which collection does not import)."""
    pytest.importorskip("matplotlib")


LINES = 10_000


def record(step: int) -> dict:
    """A train line every step; an undesirable row every third step only (rewards/rejected null
    elsewhere); an eval line every 1000 steps; raw z below 0 where clamped z is 0."""
    rejected = step % 3 == 0
    kl_raw = math.sin(step / 50.0)
    return {
        "step": step,
        "split": "train",
        "loss": 0.5 - step * 1e-6,
        "kto_loss": 0.5 - step * 1e-6,
        "kl": max(kl_raw, 0.0),
        "kl_raw": kl_raw,
        "rewards/chosen": step * 1e-5,
        "rewards/rejected": -step * 1e-5 if rejected else None,
        "rewards/margins": 2 * step * 1e-5 if rejected else None,
        "logps/chosen": -100.0 + step * 1e-4,
        "logps/rejected": -120.0 - step * 1e-4 if rejected else None,
        "count/chosen": 2.0,
        "count/rejected": 1.0 if rejected else 0.0,
        "lr": 1e-4,
        "grad_norm": 1.0 + (step % 7) / 10,
        "tokens_per_s": 3000.0 + step % 11,
    }


@pytest.fixture(scope="module")
def long_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("long") / "run"
    run.mkdir()
    lines = []
    for step in range(1, LINES + 1):
        lines.append(record(step))
        if step % 1000 == 0:
            lines.append({**record(step), "split": "eval", "eval_cache": "aaaaaaaaaaaa", "lr": None, "grad_norm": None, "tokens_per_s": None})
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    return run


def test_every_plotted_series_is_read_in_a_few_passes_and_matches_the_series(long_run, monkeypatch):
    from matplotlib.figure import Figure

    from kto.inspection import report
    from kto.inspection.runlog import RunLog, read_run

    log = read_run(long_run)
    calls = []
    series = RunLog.series
    monkeypatch.setattr(RunLog, "series", lambda self, *a, **k: calls.append(a) or series(self, *a, **k))
    figures = {group[0]: report.draw_group(log, group, Figure, smooth=0) for group in report.GROUPS}  # the lines as logged
    # A pass per metric and split at most, never one per line (there were 2.2 million).
    assert len(calls) <= 2 * sum(len(g[3]) for g in report.GROUPS)
    monkeypatch.setattr(RunLog, "series", series)
    names = {label: name for group in report.GROUPS for name, label in group[3]}
    drawn = 0
    for stem, fig in figures.items():
        if fig is None:
            continue
        assert fig.axes[0].get_legend()._loc != 0, f"{stem}: a legend at loc='best' is searched for over every point"
        for ln in fig.axes[0].get_lines():
            label = ln.get_label()
            if label.startswith("_"):  # the y = 0 line of kl.png
                continue
            split = "eval" if label.endswith(", eval") else "train"
            name = names[label.removesuffix(", eval").split(";")[0]]
            points = [(int(x), float(y)) for x, y in zip(ln.get_xdata(), ln.get_ydata()) if not math.isnan(y)]
            assert points == list(zip(*log.series(name, split))), (stem, label)
            drawn += 1
    assert drawn == 19  # loss, kl, kl_raw, 3 rewards, 2 logps: train and eval (8 each); lr, grad_norm, tokens/s: train


def test_a_long_report_warns_nothing(long_run, tmp_path):
    """Every matplotlib warning is an error here: the report's stderr is its own lines only."""
    from kto.inspection.report import build_report

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = build_report(long_run, tmp_path / "report")
    assert result["warnings"] == [] and len(result["plots"]) == 7
    assert (result["train_lines"], result["eval_lines"]) == (LINES, LINES // 1000)
