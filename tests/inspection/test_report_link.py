"""kto-inspect run RUN writes RUN/report whole, whoever wrote it: so a RUN/report that is a
symbolic link (to another run's report, or any folder) is refused on one line, not written
through. A --to DIR that is a link is the user's own naming of their folder: followed, with the
checks any --to gets. A --to name too long for the filesystem is one line, not a traceback."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from conftest import one_line_error

from kto.inspection.cli import main


@pytest.fixture(autouse=True, scope="module")
def _needs_matplotlib():
    pytest.importorskip("matplotlib")


def record(step: int) -> dict:
    return {"step": step, "split": "train", "loss": 0.5 - 0.01 * step, "kl": 0.01 * step, "count/chosen": 1.0, "count/rejected": 1.0}


def make_run(path):
    path.mkdir()
    (path / "metrics.jsonl").write_text("".join(json.dumps(record(s)) + "\n" for s in (1, 2, 3)))
    return path


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def files(folder) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


@pytest.mark.parametrize("target_is", ["another report", "a user's folder"])
def test_a_run_report_that_is_a_link_is_refused_and_its_target_kept(tmp_path, target_is):
    """The hunter's steps: `kto-inspect run run --to reports/runA`, then runX2/report -> reports/runA,
    and `kto-inspect run runX2` replaced reports/runA; a link to any folder got 8 files."""
    target = tmp_path / "reports" / "runA"
    if target_is == "another report":
        assert invoke("run", make_run(tmp_path / "run"), "--to", target).exit_code == 0
    else:
        target.mkdir(parents=True)
        (target / "notes.txt").write_text("mine")
    before = files(target)
    other = make_run(tmp_path / "runX2")
    (other / "report").symlink_to(target)
    line = one_line_error(invoke("run", other))
    assert line.endswith(
        f"{other / 'report'}: a symbolic link (to {target}), not the run's own report folder; kto-inspect run writes "
        "only a real RUN/report: remove the link, or give the folder as --to"
    ), line
    assert files(target) == before


def test_a_link_to_nothing_in_the_run_is_refused_too(tmp_path):
    run = make_run(tmp_path / "run")
    (run / "report").symlink_to(tmp_path / "gone")
    line = one_line_error(invoke("run", run))
    assert f"{run / 'report'}: a symbolic link (to {tmp_path / 'gone'}), not the run's own report folder" in line
    assert not (tmp_path / "gone").exists()


def test_a_superseded_logs_report_goes_not_through_a_linked_report_folder(tmp_path):
    """RUN/report/metrics-jsonl-superseded lies under RUN/report: a link there is refused alike."""
    run = make_run(tmp_path / "run")
    (run / "metrics.jsonl.superseded").write_text((run / "metrics.jsonl").read_text())
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (run / "report").symlink_to(elsewhere)
    line = one_line_error(invoke("run", run / "metrics.jsonl.superseded"))
    assert f"{run / 'report'}: a symbolic link (to {elsewhere})" in line
    assert list(elsewhere.iterdir()) == []


def test_to_a_link_the_user_names_is_followed(tmp_path):
    """--to is the user's own path: a link to their folder is where they want the report."""
    run = make_run(tmp_path / "run")
    real = tmp_path / "big-disk" / "report"
    real.mkdir(parents=True)
    link = tmp_path / "report-link"
    link.symlink_to(real)
    result = invoke("run", run, "--to", link)
    assert result.exit_code == 0, result.output
    assert link.is_symlink() and "report.html" in files(real)
    assert "kl.png" in files(real) and "loss.png" in files(real)


def test_to_a_link_to_a_foreign_folder_gets_the_checks_any_to_gets(tmp_path):
    run = make_run(tmp_path / "run")
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "report.html").write_text("<html>theirs</html>")
    link = tmp_path / "link"
    link.symlink_to(foreign)
    line = one_line_error(invoke("run", run, "--to", link))
    assert line.endswith(f"--to {link}: holds report.html, which no kto-inspect run report wrote; write the report into a new or empty folder")
    assert files(foreign) == {"report.html": b"<html>theirs</html>"}


@pytest.mark.parametrize("where", ["itself", "a folder above"])
def test_to_a_name_too_long_is_one_line(tmp_path, where):
    run = make_run(tmp_path / "run")
    long = tmp_path / ("x" * 260)
    to = long if where == "itself" else long / "report"
    line = one_line_error(invoke("run", run, "--to", to))
    assert line.endswith(f"--to {to}: cannot create (File name too long)"), line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


@pytest.mark.parametrize("given", [False, True])
def test_a_report_folder_that_cannot_be_made_says_where_to_write_instead(tmp_path, monkeypatch, given):
    """A run on a read-only mount, or another user's: RUN/report, --to's default, cannot be made,
    and the line says to give --to elsewhere; a --to the user named is refused as it is."""
    import os

    run = make_run(tmp_path / "run")
    to = tmp_path / "elsewhere" / "report"
    read_only, real = (to.parent if given else run), os.mkdir

    def mkdir(path, *args, **kwargs):
        if str(path).startswith(str(read_only)):
            raise OSError(30, "Read-only file system")
        return real(path, *args, **kwargs)

    monkeypatch.setattr(os, "mkdir", mkdir)
    if given:
        assert one_line_error(invoke("run", run, "--to", to)).endswith(f"--to {to}: cannot create (Read-only file system)")
        return
    hint = f"({run / 'report'} is --to's default, in the run directory: give --to DIR elsewhere)"
    assert one_line_error(invoke("run", run)).endswith(f"--to {run / 'report'}: cannot create (Read-only file system) {hint}")
    assert invoke("run", run, "--to", to).exit_code == 0
