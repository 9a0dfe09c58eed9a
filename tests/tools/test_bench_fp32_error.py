"""tools/bench_fp32_error.py: the sequences it picks and the table it reports, worked by hand
(its figures on the real model are in docs/benchmarks.md)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def tool(monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "tools"))
    import bench_fp32_error

    return bench_fp32_error


def test_first_rows_take_each_rows_main_and_kl_sequence(tool):
    # A shard of 3 rows: main sequences 0-2, then their KL sequences 3-5.
    shard = ([[1], [2], [3], [1], [2], [3]], [[10], [20], [30], [11], [21], [31]], ["a0", "b0", "c0", "a1", "b1", "c1"])
    assert tool.first_rows([shard], 2) == ([[1], [2], [1], [2]], [[10], [20], [11], [21]], ["a0", "b0", "a1", "b1"])
    with pytest.raises(SystemExit, match="--rows: the first shard holds 3 rows"):
        tool.first_rows([shard], 4)


def test_the_table_takes_the_largest_difference_per_length_bucket(tool):
    reference = [np.array([-1.0, -2.0]), np.array([-3.0]), np.array([-4.0, -5.0])]
    runs = {
        "plain": [np.float32([-1.0, -2.5]), np.float32([-3.0]), np.float32([-4.0, -5.0])],
        "plain/2": [np.float32([-1.0, -2.0]), np.float32([-3.25]), np.float32([-4.0, -5.0])],
        "shared": [np.float32([-1.5, -2.0]), np.float32([-3.0]), np.float32([-4.0, -4.0])],
    }
    rows = tool.table([100, 384, 800], runs, reference)  # two sequences of ≤ 384 tokens, one over 720
    assert rows == [
        {"length": "0-384", "sequences": 2, "tokens": 3, "plain vs fp64": 0.5, "plain/2 vs fp64": 0.25, "shared vs fp64": 0.5, "shared vs plain": 0.5},
        {"length": ">720", "sequences": 1, "tokens": 2, "plain vs fp64": 0.0, "plain/2 vs fp64": 0.0, "shared vs fp64": 1.0, "shared vs plain": 1.0},
    ]
