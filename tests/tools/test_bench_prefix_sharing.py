"""tools/bench_prefix_sharing.py's check that two caches of the same rows agree: a benchmark
whose faster layout scored other tokens, or other values, must say so rather than report a ratio."""

from __future__ import annotations

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


def _rewrite_first_row(cache: Path, column: str, change) -> str:
    """Apply `change` to `column` of the first row of the first shard; returns that row's id."""
    shard = sorted(cache.rglob("shard-*.arrow"))[0]
    table = pa.ipc.open_file(pa.BufferReader(shard.read_bytes())).read_all()  # not mapped: rewritten below
    values = table.column(column).to_pylist()
    values[0] = change(values[0])
    table = table.set_column(table.schema.get_field_index(column), table.schema.field(column), pa.array(values, table.schema.field(column).type))
    with pa.OSFile(str(shard), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)
    return table.column("id")[0].as_py()


def test_identical_caches_agree_exactly(bench, tiny_cache):
    agreement = bench.cache_agreement(tiny_cache, tiny_cache)
    assert agreement["rows"] > 0
    assert agreement["max_abs_token_diff_main"] == agreement["max_abs_token_diff_kl"] == 0.0
    assert agreement["largest_abs_logp"] > 0


def test_a_changed_log_prob_is_measured_in_ulps(bench, tiny_cache, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(tiny_cache, other)
    largest = bench.cache_agreement(tiny_cache, tiny_cache)["largest_abs_logp"]
    ulp = float(np.spacing(np.float32(largest)))
    # Three ulps of the largest value, added to a KL-side token in float32.
    _rewrite_first_row(other, "ref_kl_token_logps", lambda v: [float(np.float32(v[0]) - np.float32(3 * ulp))] + v[1:])
    agreement = bench.cache_agreement(tiny_cache, other)
    assert agreement["max_abs_token_diff_main"] == 0.0
    assert agreement["max_abs_token_diff_kl"] == pytest.approx(3 * ulp, rel=0.34)  # rounding of a smaller value: 2 to 4 ulps
    assert agreement["ulps_of_largest_main_kl"][1] == pytest.approx(3, abs=1)


def test_caches_of_different_tokens_are_refused(bench, tiny_cache, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(tiny_cache, other)
    row = _rewrite_first_row(other, "kl_completion_ids", lambda ids: ids[:-1])
    with pytest.raises(SystemExit, match=f"row {row}: kl_completion_ids differs"):
        bench.cache_agreement(tiny_cache, other)
