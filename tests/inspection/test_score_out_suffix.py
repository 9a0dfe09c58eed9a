"""kto-inspect score --out scores.jsonl (or .csv) wrote Parquet under that name: `head -c 4` gave
PAR1, and pl.read_ndjson / pd.read_csv then failed on it, far from the cause. A name whose suffix
names another format is refused in one line before anything loads; no suffix, .parquet and .pq
are written as before."""

import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from conftest import one_line_error

from kto.inspection.cli import main


def score(cache, model, out):
    return CliRunner().invoke(main, ["score", str(cache), "--model", str(model), "--out", str(out), "--batch-tokens", "64"])


@pytest.mark.parametrize(
    "name, suggested",
    [
        ("scores.jsonl", "scores.parquet"),
        ("scores.csv", "scores.parquet"),
        ("scores.TSV", "scores.parquet"),
        ("scores.json", "scores.parquet"),
        ("scores.arrow", "scores.parquet"),
        ("scores.feather", "scores.parquet"),
        ("scores.txt", "scores.parquet"),
        ("scores.jsonl.gz", "scores.parquet"),  # every format suffix goes
        ("run.v2.csv", "run.v2.parquet"),  # a dot that names no format stays
        ("scores.parquet.gz", "scores.parquet"),  # not scores.parquet.parquet
    ],
)
def test_another_formats_name_is_refused(tiny_cache, tiny_model_dir, tmp_path, name, suggested):
    out = tmp_path / name
    line = one_line_error(score(tiny_cache, tiny_model_dir, out))
    assert line == f"kto-inspect: error: --out {out}: kto-inspect score writes Parquet; name it {tmp_path / suggested} (read it with pl.read_parquet)"
    assert list(tmp_path.iterdir()) == []


def test_an_existing_file_of_the_user_is_named_first(tiny_cache, tiny_model_dir, tmp_path):
    """The more important refusal of the two: that file is not score's to replace."""
    (tmp_path / "mine.csv").write_text("a,b\n")
    line = one_line_error(score(tiny_cache, tiny_model_dir, tmp_path / "mine.csv"))
    assert (
        line
        == f"kto-inspect: error: --out {tmp_path / 'mine.csv'}: exists and is not a file kto-inspect score wrote; name a new file (it replaces only its own)"
    )
    assert (tmp_path / "mine.csv").read_text() == "a,b\n"


@pytest.mark.parametrize("name", ["scores.parquet", "scores.pq", "scores.PARQUET", "scores", "scores.beta0.5"])
def test_parquet_names_and_names_without_a_format_are_written(tiny_cache, tiny_model_dir, tmp_path, name):
    result = score(tiny_cache, tiny_model_dir, tmp_path / name)
    assert result.exit_code == 0, result.output
    assert (tmp_path / name).read_bytes()[:4] == b"PAR1"
    assert pq.read_table(tmp_path / name).num_rows == 16


def test_a_dash_is_no_standard_output(tiny_cache, tiny_model_dir, tmp_path, monkeypatch):
    """`--out -` wrote a Parquet file named `-` in the current folder, where a user meant stdout."""
    monkeypatch.chdir(tmp_path)
    line = one_line_error(score(tiny_cache, tiny_model_dir, "-"))
    assert line == "kto-inspect: error: --out -: kto-inspect score writes a Parquet file, not standard output; name the file (e.g. scores.parquet)"
    assert list(tmp_path.iterdir()) == []
