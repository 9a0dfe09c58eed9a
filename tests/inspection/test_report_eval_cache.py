"""kto-inspect run's plots draw the evals on the last eval cache only, as its checks do: a resume
may change --eval-cache, and losses (log-probs, rewards) on two caches do not compare."""

import json
import math

import pytest


@pytest.fixture(autouse=True, scope="module")
def _needs_matplotlib():
    """Every test here plots (skipped without matplotlib, which collection does not import)."""
    pytest.importorskip("matplotlib")


def line(step: int, split: str = "train", cache: str | None = None, logp: float = -160.0) -> dict:
    rec = {"step": step, "split": split, "loss": 0.5 - 0.001 * step, "logps/chosen": logp, "count/chosen": 1.0, "count/rejected": 1.0}
    if split == "eval":
        rec["eval_cache"] = cache
    return rec


# As seen: trained with --eval-cache A (evals at 2 and 4), resumed from step 5 with --eval-cache B
# (evals at 6, 8, 10). logps.png drew one dotted eval line from -165 down to -1485.
RESUMED = [line(s) for s in range(1, 11)] + [
    line(2, "eval", "aaaaaaaaaaaa", -165.6),
    line(4, "eval", "aaaaaaaaaaaa", -165.5),
    line(6, "eval", "bbbbbbbbbbbb", -1485.3),
    line(8, "eval", "bbbbbbbbbbbb", -1485.1),
    line(10, "eval", "bbbbbbbbbbbb", -1484.9),
]


def figure(tmp_path, records, stem: str):
    from matplotlib.figure import Figure

    from kto.inspection.report import GROUPS, draw_group
    from kto.inspection.runlog import read_run

    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in sorted(records, key=lambda r: (r["step"], r["split"] == "eval"))))
    return draw_group(read_run(tmp_path), next(g for g in GROUPS if g[0] == stem), Figure, smooth=0)  # the lines as logged


def lines_of(fig) -> dict:
    """{legend label: [(step, value)]} of the figure's lines."""
    return {
        ln.get_label(): [(int(x), None if math.isnan(y) else round(float(y), 6)) for x, y in zip(ln.get_xdata(), ln.get_ydata())]
        for ln in fig.axes[0].get_lines()
    }


@pytest.mark.parametrize("stem", ["logps", "loss"])
def test_the_plotted_evals_are_the_last_eval_caches_only(tmp_path, stem):
    fig = figure(tmp_path, RESUMED, stem)
    evals = {label: xy for label, xy in lines_of(fig).items() if ", eval" in label}
    assert len(evals) == 1
    (xy,) = evals.values()
    assert [s for s, _ in xy] == [6, 8, 10]
    if stem == "logps":
        assert [v for _, v in xy] == [-1485.3, -1485.1, -1484.9]
    else:
        assert [v for _, v in xy] == [round(0.5 - 0.001 * s, 6) for s in (6, 8, 10)]
    # The train line is whole, and the plot says what it left out, as the text does.
    train = next(xy for label, xy in lines_of(fig).items() if ", eval" not in label)
    assert [s for s, _ in train] == list(range(1, 11))
    legend = fig.axes[0].get_legend().get_title().get_text()
    assert legend == "evals on the last eval cache only (2 earlier evals on another eval cache left out)"


def test_one_eval_cache_draws_every_eval_and_says_nothing(tmp_path):
    records = [line(s) for s in range(1, 5)] + [line(2, "eval", "aaaaaaaaaaaa"), line(4, "eval", "aaaaaaaaaaaa")]
    fig = figure(tmp_path, records, "logps")
    assert [s for s, _ in lines_of(fig)["desirable (logps/chosen), eval"]] == [2, 4]
    assert fig.axes[0].get_legend().get_title().get_text() == ""
