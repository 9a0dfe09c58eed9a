"""kto-inspect run --to DIR removes only the PNGs an earlier report there wrote: the ones its
report.html lists (its record of plots, or for a report of an earlier version the plots it
shows). A PNG of a plot's name that no report there drew is the user's: it stays, and a report
that would draw that name refuses on one line, changing nothing."""

import json

import pytest
from click.testing import CliRunner

from kto.formats.runrecord import write_run_config
from kto.inspection.cli import main


@pytest.fixture(autouse=True, scope="module")
def _needs_matplotlib():
    pytest.importorskip("matplotlib")


def record(step: int) -> dict:
    return {
        "step": step,
        "split": "train",
        "loss": 0.5 - 0.01 * step,
        "kto_loss": 0.5 - 0.01 * step,
        "sft_loss": 1.5 - 0.2 * step,
        "kl": 0.01 * step,
        "kl_raw": 0.01 * step,
        "rewards/chosen": 0.1 * step,
        "rewards/rejected": -0.1 * step,
        "rewards/margins": 0.2 * step,
        "lr": 1e-6,
        "grad_norm": 1.0,
        "tokens_per_s": 100.0,
    }


DRAWN = ["grad_norm.png", "kl.png", "loss.png", "lr.png", "rewards.png", "tokens_per_s.png"]


@pytest.fixture
def run(tmp_path):
    """A run with no SFT term (--sft-weight 0): its report draws no sft.png."""
    path = tmp_path / "run0"
    path.mkdir()
    (path / "metrics.jsonl").write_text("".join(json.dumps(record(s)) + "\n" for s in (1, 2, 3)))
    write_run_config(path, {"sft_weight": 0.0}, {})
    return path


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def files(folder) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_a_users_png_of_a_plot_name_the_earlier_report_did_not_draw_stays(run, tmp_path):
    """The hunter's steps: a second report into figs/ deleted the user's sft.png."""
    figs = tmp_path / "figs"
    figs.mkdir()
    assert invoke("run", run, "--to", figs).exit_code == 0
    assert sorted(files(figs)) == sorted([*DRAWN, "report.html"])
    (figs / "sft.png").write_bytes(b"my SFT baseline plot")
    (figs / "chart.png").write_bytes(b"mine")
    result = invoke("run", run, "--to", figs)
    assert result.exit_code == 0, result.output
    assert sorted(files(figs)) == sorted([*DRAWN, "chart.png", "report.html", "sft.png"])
    assert (figs / "sft.png").read_bytes() == b"my SFT baseline plot" and (figs / "chart.png").read_bytes() == b"mine"
    # --sft would write sft.png over the user's: refused on one line, nothing changed.
    before = files(figs)
    result = invoke("run", run, "--sft", "--to", figs)
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [
        f"kto-inspect: error: --to {figs}: holds sft.png, which no kto-inspect run report wrote; write the report into a new or empty folder"
    ]
    assert files(figs) == before


def test_the_earlier_reports_own_plots_are_replaced_or_removed(run, tmp_path):
    """sft.png drawn by the earlier report (--sft) is its own: a report without it removes it."""
    out = tmp_path / "out"
    assert invoke("run", run, "--sft", "--to", out).exit_code == 0
    assert (out / "sft.png").read_bytes()[:4] == b"\x89PNG"
    (out / "loss.png").write_bytes(b"stale")  # a listed plot: the report's, replaced
    assert invoke("run", run, "--to", out).exit_code == 0
    assert sorted(files(out)) == sorted([*DRAWN, "report.html"]) and (out / "loss.png").read_bytes()[:4] == b"\x89PNG"


def test_a_report_of_an_earlier_version_is_read_by_the_plots_it_shows(run, tmp_path):
    """An earlier version's report.html has no record of its plots (nor, earlier still, the
    generator tag): the plots it shows (each figure's caption names its file) are its own."""
    out = tmp_path / "out"
    assert invoke("run", run, "--sft", "--to", out).exit_code == 0
    page = (out / "report.html").read_text()
    head, body = page.split("<title>", 1)
    old_head = '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
    assert head.startswith(old_head)
    (out / "report.html").write_text(old_head + "<title>" + body)  # no generator tag, no record
    (out / "notes.png").write_bytes(b"mine")
    assert invoke("run", run, "--to", out).exit_code == 0
    assert sorted(files(out)) == sorted([*DRAWN, "notes.png", "report.html"])  # its sft.png went
    # One that did not draw sft.png: the user's sft.png beside it stays.
    page = (out / "report.html").read_text()
    (out / "report.html").write_text(old_head + "<title>" + page.split("<title>", 1)[1])
    (out / "sft.png").write_bytes(b"mine too")
    assert invoke("run", run, "--to", out).exit_code == 0
    assert (out / "sft.png").read_bytes() == b"mine too"


def test_a_stopped_report_claims_only_the_plots_it_wrote(run, tmp_path, monkeypatch):
    """A report stopped while drawing (the third plot raises) left loss.png and kl.png, which the
    next report replaces; the user's lr.png, put there after, is refused, not deleted."""
    import kto.inspection.report as report

    real, calls = report.plot_group, []

    def stop_at_third(*args):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*args)

    monkeypatch.setattr(report, "plot_group", stop_at_third)
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        report.build_report(run, out)
    monkeypatch.setattr(report, "plot_group", real)
    assert sorted(files(out)) == ["kl.png", "loss.png", "report.html"]
    (out / "lr.png").write_bytes(b"mine")
    result = invoke("run", run, "--to", out)
    assert result.exit_code == 2 and "holds lr.png, which no kto-inspect run report wrote" in result.output
    (out / "lr.png").unlink()
    assert invoke("run", run, "--to", out).exit_code == 0
    assert sorted(files(out)) == sorted([*DRAWN, "report.html"])


def test_a_users_png_the_report_does_not_draw_is_no_clash_without_a_report(run, tmp_path):
    """With no report there, a PNG of a plot name this report does not draw is no clash; one it
    draws is refused, as before."""
    figs = tmp_path / "figs"
    figs.mkdir()
    (figs / "sft.png").write_bytes(b"mine")
    assert invoke("run", run, "--to", figs).exit_code == 0
    assert sorted(files(figs)) == sorted([*DRAWN, "report.html", "sft.png"]) and (figs / "sft.png").read_bytes() == b"mine"
    other = tmp_path / "other"
    other.mkdir()
    (other / "kl.png").write_bytes(b"mine")
    result = invoke("run", run, "--to", other)
    assert result.exit_code == 2 and f"--to {other}: holds kl.png, which no kto-inspect run report wrote" in result.output
    assert files(other) == {"kl.png": b"mine"}


def test_a_report_an_earlier_version_stopped_is_named_as_such(run, tmp_path):
    """An earlier version's claim file (its generator tag, no list of plots, no captions) beside
    the PNGs it had written: they cannot be told from the user's, so the report is refused, and
    the line says the report there lists nothing, not that no kto-inspect report wrote them."""
    folder = tmp_path / "stopped"
    folder.mkdir()
    (folder / "report.html").write_text('<!doctype html><html><head><meta name="generator" content="kto-inspect run"></head><body>being written</body></html>')
    (folder / "loss.png").write_bytes(b"an earlier report's plot")
    before = files(folder)
    result = invoke("run", run, "--to", folder)
    assert result.exit_code == 2 and result.output.splitlines() == [
        f"kto-inspect: error: --to {folder}: holds loss.png, which the kto-inspect run report there does not list (a report an earlier "
        "version stopped lists nothing: remove its PNGs if they are its); write the report into a new or empty folder"
    ]
    assert files(folder) == before
    (folder / "loss.png").unlink()  # as the line says
    assert invoke("run", run, "--to", folder).exit_code == 0 and (folder / "loss.png").read_bytes().startswith(b"\x89PNG")
