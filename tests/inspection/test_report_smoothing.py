"""kto-inspect run smooths a noisy train line (an EMA, as TensorBoard's and LLaMA-Factory's
plot_loss do) and keeps the raw values beside it, faded; eval lines and lr are drawn as they are."""

import json
import math

import numpy as np
import pytest

from kto.inspection.report import DEFAULT_SMOOTH, MIN_SMOOTHED, ema


def test_ema_by_hand():
    """weight 0.5 over 1, 3, (none), 5: s = 0.5, 1.75, -, 3.375, over 1 − 0.5^k = 0.5, 0.75, -,
    0.875: 1, 7/3, NaN, 27/7. It starts at the first value (debiased) and keeps the gap."""
    out = ema(np.array([1.0, 3.0, math.nan, 5.0]), 0.5)
    assert out[0] == 1.0 and out[1] == pytest.approx(7 / 3, rel=1e-15) and math.isnan(out[2]) and out[3] == pytest.approx(27 / 7, rel=1e-15)
    assert (ema(np.array([2.0, 4.0]), 0.0) == [2.0, 4.0]).all()  # weight 0: the values themselves
    assert ema(np.full(50, 0.7), 0.9) == pytest.approx(np.full(50, 0.7), rel=1e-12)  # a constant stays put


def lines_of(tmp_path, records, stem, smooth=DEFAULT_SMOOTH):
    from matplotlib.figure import Figure

    from kto.inspection.report import GROUPS, draw_group
    from kto.inspection.runlog import read_run

    pytest.importorskip("matplotlib")
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    fig = draw_group(read_run(tmp_path), next(g for g in GROUPS if g[0] == stem), Figure, smooth)
    return fig.axes[0].get_lines(), fig.axes[0].get_legend().get_title().get_text()


def noisy(n: int) -> list[dict]:
    return [{"step": s, "split": "train", "loss": 0.5 + (0.1 if s % 2 else -0.1), "lr": 1e-3 * s / n} for s in range(1, n + 1)]


def test_a_long_train_line_is_drawn_smoothed_over_its_raw_values(tmp_path):
    pytest.importorskip("matplotlib")
    records = noisy(20) + [{"step": 10, "split": "eval", "loss": 0.45}, {"step": 20, "split": "eval", "loss": 0.40}]
    lines, title = lines_of(tmp_path, records, "loss", smooth=0.8)
    raw, smoothed, evals = lines
    losses = np.array([r["loss"] for r in records[:20]])
    assert raw.get_alpha() == 0.3 and (raw.get_ydata() == losses).all()
    assert smoothed.get_label() == "loss" and smoothed.get_ydata() == pytest.approx(ema(losses, 0.8), rel=1e-15)
    # The alternating ±0.1 is damped: at steady state the smoothed line swings by 2·0.1·(1 − 0.8)/(1 + 0.8)
    # = 0.022 a step, not 0.2 (step 20's debiasing, 1/(1 − 0.8^20), adds 1.2 %).
    assert abs(smoothed.get_ydata()[-1] - smoothed.get_ydata()[-2]) == pytest.approx(2 * 0.1 * 0.2 / 1.8, rel=2e-2)
    assert (evals.get_ydata() == [0.45, 0.40]).all() and evals.get_label() == "loss, eval"  # evals as they are
    assert "smoothed (EMA 0.8, --smooth)" in title


@pytest.mark.parametrize("smooth, n", [(0.0, 20), (DEFAULT_SMOOTH, MIN_SMOOTHED - 1)])
def test_no_smoothing_at_zero_or_on_a_short_line(tmp_path, smooth, n):
    pytest.importorskip("matplotlib")
    lines, title = lines_of(tmp_path, noisy(n), "loss", smooth)
    assert len(lines) == 1 and (lines[0].get_ydata() == [r["loss"] for r in noisy(n)]).all() and "smoothed" not in title


def test_lr_is_never_smoothed(tmp_path):
    pytest.importorskip("matplotlib")
    lines, _ = lines_of(tmp_path, noisy(30), "lr", 0.9)
    assert len(lines) == 1 and lines[0].get_ydata() == pytest.approx([r["lr"] for r in noisy(30)], rel=1e-15)


@pytest.mark.parametrize("value", ["1", "-0.1", "nan"])
def test_a_weight_outside_0_1_is_one_line_naming_the_flag(tmp_path, value):
    from click.testing import CliRunner

    from kto.inspection.cli import main

    result = CliRunner().invoke(main, ["run", str(tmp_path), "--smooth", value])
    assert result.exit_code == 2 and "--smooth" in result.output and not (tmp_path / "report").exists()


def test_the_cli_default_is_the_report_default():
    from kto.inspection.cli import run

    assert next(p.default for p in run.params if p.name == "smooth") == DEFAULT_SMOOTH


def test_a_line_with_gaps_is_drawn_as_logged_and_kl_raw_is_noted_once(tmp_path):
    """Seen in review: rewards/rejected logged every other step was smoothed into a line of
    isolated points, no segment drawn (it vanished, its legend entry kept); and the eval line of
    kl.png repeated the train line's `kl_raw equal at every step` note."""
    pytest.importorskip("matplotlib")
    records = []
    for s in range(1, 41):
        rejected = -0.1 * s if s % 2 else None
        records.append({"step": s, "split": "train", "rewards/chosen": 0.1 * s, "rewards/rejected": rejected, "kl": 0.2, "kl_raw": 0.2})
        if s % 10 == 0:
            records.append({"step": s, "split": "eval", "kl": 0.3, "kl_raw": 0.3})
    lines, _ = lines_of(tmp_path, records, "rewards")
    rejected = [ln for ln in lines if ln.get_label() == "undesirable (rewards/rejected)"]
    assert len(rejected) == 1 and rejected[0].get_marker() == "o" and rejected[0].get_alpha() is None
    assert [ln.get_label() for ln in lines if not ln.get_label().startswith("_")][0] == "desirable (rewards/chosen)"
    kl_lines, _ = lines_of(tmp_path, records, "kl")
    labels = [ln.get_label() for ln in kl_lines if not ln.get_label().startswith("_")]
    assert labels == ["clamped z (>= 0, used in the loss); kl_raw equal at every step", "clamped z (>= 0, used in the loss); kl_raw equal at every step, eval"]
