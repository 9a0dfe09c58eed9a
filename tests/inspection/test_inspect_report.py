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


def test_a_superseded_metrics_file_gets_its_own_report_and_not_the_runs_settings(tmp_path):
    """Seen: `kto-inspect run RUN/metrics.jsonl.superseded` replaced the current run's
    RUN/report/ and drew its SFT plot by the current run's --sft-weight. Its report goes to
    RUN/report/metrics-jsonl-superseded/ (kto-train allows report/ in a run, nothing else),
    and whether the SFT loss was in the loss is read from its own lines (loss vs kto_loss)."""
    run = make_run(tmp_path / "run", [record(s) for s in (1, 2)], sft_weight=0.1)
    current = report(run)
    assert "sft.png" in plotted(current)
    before = {p.name: p.read_bytes() for p in (run / "report").iterdir() if p.is_file()}
    old = run / "metrics.jsonl.superseded"
    old.write_text("".join(json.dumps(record(s, kto_loss=0.50 - 0.01 * s)) + "\n" for s in (1, 2, 3)))  # loss == kto_loss: weight 0
    r = report(old)
    own = run / "report" / "metrics-jsonl-superseded"
    assert r["out"] == str(own) and r["report"] == str(own / "report.html")
    assert {p.name: p.read_bytes() for p in (run / "report").iterdir() if p.is_file()} == before
    assert "sft.png" not in plotted(r)
    html = (own / "report.html").read_text()
    assert "SFT loss not plotted: loss equals kto_loss at every line of metrics.jsonl.superseded (--sft-weight 0)" in html
    result = CliRunner().invoke(main, ["run", str(old)])
    assert result.exit_code == 0, result.output
    assert (
        f"wrote {own / 'report.html'} and {len(r['plots'])} plots to {own} (the report of metrics.jsonl.superseded; {run / 'report'} is metrics.jsonl's)"
        in result.stdout
    )

    weighted = run / "metrics.jsonl.superseded.2"  # the current run says 0, these lines say more
    write_run_config(run, {"sft_weight": 0.0}, {})
    weighted.write_text("".join(json.dumps(record(s, kto_loss=0.4)) + "\n" for s in (1, 2)))
    r = report(weighted)
    assert r["out"] == str(run / "report" / "metrics-jsonl-superseded-2") and "sft.png" in plotted(r)
    unknown = run / "metrics.jsonl.superseded.3"  # no kto_loss logged: unknown, not the run's
    unknown.write_text("".join(json.dumps(record(s)) + "\n" for s in (1, 2)))
    r = report(unknown)
    assert "sft.png" not in plotted(r)
    html = (run / "report" / "metrics-jsonl-superseded-3" / "report.html").read_text()
    assert "SFT loss not plotted: metrics.jsonl.superseded.3 logs no kto_loss, so whether --sft-weight was set is unknown" in html


def test_a_reused_report_folder_keeps_no_plot_of_an_earlier_report(tmp_path):
    """A second report into the same --to folder drew no sft.png, and the first one's stayed."""
    run = make_run(tmp_path / "run", [record(s) for s in (1, 2)], sft_weight=0.0)
    out = tmp_path / "out"
    (out / "notes").mkdir(parents=True)
    assert "sft.png" in plotted(report(run, "--sft", "--to", out))
    r = report(run, "--to", out)
    assert sorted(p.name for p in out.iterdir()) == sorted(["notes", "report.html", *plotted(r)])
    assert "sft.png" not in plotted(r)
    report(run, "--sft")  # the run's own report/ the same way
    r = report(run)
    assert sorted(p.name for p in (run / "report").iterdir()) == sorted(["report.html", *plotted(r)])
