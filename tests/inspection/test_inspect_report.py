"""kto-inspect run's report: the SFT NLL on its own axis only when it is in the loss (or asked
for), raw z dashed and only where it differs from clamped z, no absolute path in the header."""

import json
import re

import pytest
from click.testing import CliRunner

from kto.formats.runrecord import write_run_config
from kto.inspection.cli import main


@pytest.fixture(autouse=True, scope="module")  # before the module's own fixtures
def _needs_matplotlib():
    """Every test here plots. Skipped when a test runs, not imported at collection (every xdist
    worker imported it, also for runs that select none of these tests)."""
    pytest.importorskip("matplotlib")


def record(step: int, **kw) -> dict:
    """A train line whose KTO loss (0.47-0.50) and SFT NLL (0.9-1.5) live on different scales."""
    base = {
        "step": step,
        "split": "train",
        "loss": 0.50 - 0.01 * step,
        "sft_loss": 1.5 - 0.2 * step,
        "kl": 0.0,
        "kl_raw": 0.0,
        "rewards/chosen": 0.1 * step,
        "rewards/rejected": -0.1 * step,
        "rewards/margins": 0.2 * step,
        "count/chosen": 1.0,
        "count/rejected": 1.0,
        "lr": 1e-6,
        "grad_norm": 1.0,
        "tokens_per_s": 100.0,
    }
    return {**base, **kw}


def make_run(path, records, sft_weight=None):
    path.mkdir()
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    if sft_weight is not None:
        write_run_config(path, {"sft_weight": sft_weight}, {})
    return path


def report(run, *args) -> dict:
    result = CliRunner().invoke(main, ["run", str(run), "--json", *args])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def figure(run, stem: str):
    from matplotlib.figure import Figure

    from kto.inspection.report import GROUPS, draw_group
    from kto.inspection.runlog import read_run

    return draw_group(read_run(run), next(g for g in GROUPS if g[0] == stem), Figure)


def plotted(r: dict) -> list[str]:
    return sorted(p.rsplit("/", 1)[1] for p in r["plots"])


def test_the_sft_loss_has_its_own_axis_and_only_when_it_is_in_the_loss(tmp_path):
    steps = [record(s) for s in (1, 2, 3)]
    unweighted = make_run(tmp_path / "unweighted", steps, sft_weight=0.0)
    r = report(unweighted)
    assert "sft.png" not in plotted(r) and "loss.png" in plotted(r)
    html = (unweighted / "report" / "report.html").read_text()
    assert "SFT loss not plotted: --sft-weight 0 (kto-inspect run --sft draws it)" in html
    # The KTO loss alone on its axis: 0.47..0.49 fills it, no line at 0.9..1.3 squeezes it flat.
    ax = figure(unweighted, "loss").axes[0]
    assert [line.get_label() for line in ax.get_lines()] == ["loss"]
    low, high = ax.get_ylim()
    assert 0.46 < low and high < 0.5
    assert "sft.png" in plotted(report(unweighted, "--sft"))  # the user asks

    weighted = make_run(tmp_path / "weighted", steps, sft_weight=0.1)
    assert "sft.png" in plotted(report(weighted))
    sft = figure(weighted, "sft").axes[0]
    assert [list(line.get_ydata()) for line in sft.get_lines()] == [pytest.approx([1.3, 1.1, 0.9])]
    assert "SFT loss not plotted" not in (weighted / "report" / "report.html").read_text()


def test_raw_z_is_dashed_and_listed_only_where_it_differs(tmp_path):
    same = make_run(tmp_path / "same", [record(s, kl=0.02 * s, kl_raw=0.02 * s) for s in (1, 2, 3)], sft_weight=0.0)
    lines = [line for line in figure(same, "kl").axes[0].get_lines() if not line.get_label().startswith("_")]  # not the y = 0 rule
    assert [line.get_label() for line in lines] == ["clamped z (>= 0, used in the loss); kl_raw equal at every step"]
    report(same)
    html = (same / "report" / "report.html").read_text()
    assert "<td>kl_raw</td>" not in html and "<td>kl</td>" in html

    clamped = make_run(tmp_path / "clamped", [record(s, kl=0.0, kl_raw=-0.01 * s) for s in (1, 2, 3)], sft_weight=0.0)
    lines = {line.get_label(): line for line in figure(clamped, "kl").axes[0].get_lines()}
    assert lines["clamped z (>= 0, used in the loss)"].get_linestyle() == "-"
    assert lines["raw z (before clamping)"].get_linestyle() == "--"
    assert list(lines["raw z (before clamping)"].get_ydata()) == pytest.approx([-0.01, -0.02, -0.03])
    report(clamped)
    assert "<td>kl_raw</td>" in (clamped / "report" / "report.html").read_text()


def test_the_header_names_the_run_not_an_absolute_path(tmp_path):
    run = make_run(tmp_path / "my-run", [record(1), record(2)], sft_weight=0.0)
    report(run, "--to", tmp_path / "elsewhere")
    html = (tmp_path / "elsewhere" / "report.html").read_text()
    head = html.split("<h2>", 1)[0]
    assert str(tmp_path) not in html
    assert re.search(r"<title>kto run report: my-run</title>", head)
    assert "From <code>metrics.jsonl</code> of run <code>my-run</code>: 2 train lines, 0 eval lines." in head
