"""tools/_cache_agreement.py, the check bench_prefix_sharing.py's end-to-end mode runs on each
round's two caches: a benchmark whose faster layout scored other tokens, or other values, must
say so rather than report a ratio."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def bench(monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "tools"))
    import bench_prefix_sharing

    return bench_prefix_sharing


@pytest.fixture
def check(monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "tools"))
    import _cache_agreement

    return _cache_agreement


@pytest.fixture
def other(tiny_cache, tmp_path) -> Path:
    """A copy of the tiny cache, for a test to change."""
    shutil.copytree(tiny_cache, tmp_path / "other")
    return tmp_path / "other"


def _first_shard(cache: Path) -> Path:
    return sorted(cache.rglob("shard-*.arrow"))[0]


def _rewrite(shard: Path, edit) -> pa.Table:
    table = pa.ipc.open_file(pa.BufferReader(shard.read_bytes())).read_all()  # not mapped: rewritten below
    table = edit(table)
    with pa.OSFile(str(shard), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)
    return table


def _change_first_row(cache: Path, column: str, change) -> str:
    """Apply `change` to `column` of the first row of the first shard; returns that row's id."""

    def edit(table: pa.Table) -> pa.Table:
        values = table.column(column).to_pylist()
        values[0] = change(values[0])
        field = table.schema.field(column)
        return table.set_column(table.schema.get_field_index(column), field, pa.array(values, field.type))

    return _rewrite(_first_shard(cache), edit).column("id")[0].as_py()


def test_identical_caches_agree_exactly(check, tiny_cache):
    agreement = check.cache_agreement(tiny_cache, tiny_cache)
    assert agreement["rows"] > 0
    assert agreement["max_abs_token_diff_main"] == agreement["max_abs_token_diff_kl"] == 0.0
    assert agreement["max_abs_sum_diff_main_kl"] == (0.0, 0.0)
    assert agreement["largest_abs_logp"] > 0


@pytest.mark.parametrize("side, column", [("main", "ref_token_logps"), ("kl", "ref_kl_token_logps")])
def test_a_changed_log_prob_is_measured_on_its_side_in_ulps(check, tiny_cache, other, side, column):
    largest = check.cache_agreement(tiny_cache, tiny_cache)["largest_abs_logp"]
    ulp = float(np.spacing(np.float32(max(1.0, largest))))
    # Three ulps of the largest value, taken from a token in float32.
    _change_first_row(other, column, lambda v: [float(np.float32(v[0]) - np.float32(3 * ulp))] + v[1:])
    agreement = check.cache_agreement(tiny_cache, other)
    measured, untouched = ("main", "kl") if side == "main" else ("kl", "main")
    assert agreement[f"max_abs_token_diff_{untouched}"] == 0.0
    assert agreement[f"max_abs_token_diff_{measured}"] == pytest.approx(3 * ulp, rel=0.34)  # rounding of a smaller value: 2 to 4 ulps
    assert agreement["ulps_of_largest_main_kl"][0 if side == "main" else 1] == pytest.approx(3, abs=1)


@pytest.mark.parametrize(
    "column, change, message",
    [
        ("prompt_ids", lambda ids: ids[:-1], "prompt_ids differs"),
        ("completion_ids", lambda ids: ids + [ids[-1]], "completion_ids differs"),
        ("kl_completion_ids", lambda ids: ids[:-1], "kl_completion_ids differs"),
        ("kl_source_id", lambda source: source + "x", "kl_source_id differs"),
        ("label", lambda label: not label, "label differs"),
        ("ref_token_logps", lambda v: [v[0] - 0.5] + v[1:], "ref_token_logps differs by 0.5 per token"),
        ("ref_kl_token_logps", lambda v: [float("nan")] + v[1:], "ref_kl_token_logps is not finite"),
        ("ref_token_logps", lambda v: v[:-1], "ref_token_logps has other lengths"),
    ],
)
def test_other_tokens_or_values_are_refused_naming_the_row(check, tiny_cache, other, column, change, message):
    row = _change_first_row(other, column, change)
    with pytest.raises(SystemExit, match=re.escape(f"row {row}: {message}")):
        check.cache_agreement(tiny_cache, other)


def test_other_rows_or_splits_are_refused(check, tiny_cache, other, tmp_path):
    _rewrite(_first_shard(other), lambda table: table.slice(1))
    with pytest.raises(SystemExit, match="hold different rows"):
        check.cache_agreement(tiny_cache, other)
    # The same rows, but under another split's folder.
    moved = tmp_path / "moved"
    shutil.copytree(tiny_cache, moved)
    shard = _first_shard(moved)
    (moved / "eval").mkdir()
    shard.rename(moved / "eval" / shard.name)
    with pytest.raises(SystemExit, match="hold different rows"):
        check.cache_agreement(tiny_cache, moved)


def test_end_to_end_checks_every_round_and_keeps_the_last_rounds_caches(bench, tiny_cache, tmp_path, monkeypatch):
    """kto-precompute is replaced by a child process that copies the tiny cache to --out: what
    is under test is the bookkeeping around it (turns, agreement per round, the kept caches)."""
    import subprocess
    import sys

    commands, run = [], subprocess.run

    def fake_run(command, **kwargs):
        commands.append(command)
        copy = f"import shutil; shutil.copytree({str(tiny_cache)!r}, {command[command.index('--out') + 1]!r})"
        return run([sys.executable, "-c", copy], **kwargs)

    monkeypatch.setattr(subprocess, "run", fake_run)
    data, keep = tmp_path / "rows.json", tmp_path / "keep"
    result = bench.end_to_end(Path("model"), 2, data, keep_caches=keep)
    assert [c[c.index("--out") + 1].rsplit("-", 2)[1:] for c in commands] == [["0", "False"], ["0", "True"], ["1", "True"], ["1", "False"]]
    assert len(result["agreement"]) == 2 and all(a["max_abs_token_diff_main"] == 0.0 for a in result["agreement"])
    assert len(result["plain_s"]) == len(result["shared_minor_faults"]) == 2
    assert sorted(p.name for p in keep.iterdir()) == ["rows-plain", "rows-shared"]
    assert bench.cache_agreement(keep / "rows-plain", tiny_cache)["rows"] == result["agreement"][0]["rows"]
    with pytest.raises(SystemExit, match="--keep-caches: .*rows-plain exists"):
        bench.end_to_end(Path("model"), 1, data, keep_caches=keep)
