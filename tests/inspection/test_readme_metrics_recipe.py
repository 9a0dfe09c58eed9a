"""README's recipe for a crashed run's metrics.jsonl, as written: `pl.read_ndjson` refuses a
file whose last line is half written, and reading up to the last newline gives every complete
line."""

import json
import re
from pathlib import Path

import polars as pl
import pytest

README = Path(__file__).resolve().parents[2] / "README.md"


def test_the_readme_recipe_reads_the_complete_lines_of_a_crashed_run(tmp_path, monkeypatch):
    (recipe,) = re.findall(r"`(raw = Path\(\"run/metrics\.jsonl\"\)\.read_bytes\(\); [^`]+)`", README.read_text())
    run = tmp_path / "run"
    run.mkdir()
    lines = [json.dumps({"step": s, "split": "train", "loss": 0.5 - s / 100}) for s in (1, 2, 3)]
    (run / "metrics.jsonl").write_text("\n".join(lines) + '\n{"step": 4, "split": "tr')
    monkeypatch.chdir(tmp_path)
    with pytest.raises(pl.exceptions.ComputeError):  # what README says of the plain read
        pl.read_ndjson("run/metrics.jsonl", infer_schema_length=None)
    scope = {"pl": pl, "Path": Path}
    exec(recipe.rsplit("; ", 1)[0], scope)
    frame = eval(recipe.rsplit("; ", 1)[1], scope)
    assert frame["step"].to_list() == [1, 2, 3] and frame["loss"].to_list() == [0.49, 0.48, 0.47]
