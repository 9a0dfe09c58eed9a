"""A stop signal while kto-inspect score or run writes: the write's temp name is removed and the
command says the signal in one line, exit 128 + its number, as kto-precompute does. Seen: SIGTERM
or SIGHUP took its default action and left `.NAME.tmp-PID-TID` beside the output for good (a
later successful run did not remove it)."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
from click.testing import CliRunner

import kto.formats.atomic as atomic
from kto.inspection.cli import main


@pytest.fixture
def signal_at_rename(monkeypatch):
    """Send the signal asked for to this process as the first rename into `folder` begins,
    with a test handler in force that does nothing (the default action would end pytest): a
    command that installs none runs on past it, and the test sees that."""
    sent = {}

    def arm(signum: int, folder: Path) -> None:
        real = atomic.rename_into_place

        def rename(tmp: Path, path: Path) -> None:
            if "tmp" not in sent and tmp.parent == folder:
                sent["tmp"] = tmp
                os.kill(os.getpid(), signum)
            real(tmp, path)

        previous = signal.signal(signum, lambda *a: None)
        monkeypatch.setattr(atomic, "rename_into_place", rename)
        sent["signum"] = signum
        sent["previous"] = previous

    yield arm, sent
    if "signum" in sent:
        signal.signal(sent["signum"], sent["previous"])


def left_beside(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if atomic.is_temp_name(p.name))


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_a_signal_while_score_writes_removes_its_temp_file(tiny_cache, tiny_model_dir, tmp_path, signal_at_rename, signum):
    arm, sent = signal_at_rename
    arm(signum, tmp_path)
    out = tmp_path / "scores.parquet"
    result = CliRunner().invoke(main, ["score", str(tiny_cache), "--model", str(tiny_model_dir), "--out", str(out), "--batch-tokens", "64"])
    assert sent["tmp"].name.startswith(".scores.parquet.tmp-")  # the signal came during --out's write
    assert result.exit_code == 128 + signum, result.output
    assert result.stderr.splitlines()[-1] == f"kto-inspect: stopped by {signal.Signals(signum).name}; run the same command again"
    assert "Traceback" not in result.output
    assert left_beside(tmp_path) == [] and not out.exists()


def test_a_signal_while_run_writes_its_report_removes_its_temp_file(tmp_path, signal_at_rename):
    pytest.importorskip("matplotlib")
    arm, sent = signal_at_rename
    run = tmp_path / "run"
    run.mkdir()
    lines = [{"step": s, "split": "train", "loss": 0.7 - 0.1 * s, "kl": 0.01, "lr": 1e-3} for s in (1, 2, 3)]
    (run / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    arm(signal.SIGTERM, run / "report")
    result = CliRunner().invoke(main, ["run", str(run)])
    assert "tmp" in sent  # the signal came during one of the report's writes
    assert result.exit_code == 128 + signal.SIGTERM, result.output
    assert result.stderr.splitlines()[-1] == "kto-inspect: stopped by SIGTERM; run the same command again"
    assert left_beside(run / "report") == []
    assert "Traceback" not in result.output
