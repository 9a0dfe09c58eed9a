"""tools/bench_train_sharing.py (kto-train's step with and without prefix sharing) in its
quickest mode, in this process: one step of the tiny cache, and the layout accounting."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def bench(monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "tools"))
    import bench_train_sharing

    return bench_train_sharing


def test_one_step_and_the_accounting_of_the_tiny_cache(bench, tiny_cache, tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "bench.json"
    args = ["--model", str(tiny_model_dir), "--train-cache", str(tiny_cache), "--train-accounting", "2x1,4x2", "--numerics", "fp32"]
    args += ["--train-batch-size", "4", "--train-steps", "1", "--repeats", "1", "--train-no-warmup", "--json-out", str(out)]
    assert bench.main(args) == 0
    result = json.loads(out.read_text())
    step = result["train_step"][str(tiny_cache)]
    plain, shared = step["rows"]
    assert (plain["layout"], shared["layout"]) == ("plain", "prefix-shared")
    assert plain["tokens/saved"] == 0 and shared["tokens/saved"] > 0  # the tiny cache's pairs share prompts
    assert step["saved_fraction"] == pytest.approx(shared["tokens/saved"] / plain["tokens_per_step"])
    # One step, the same rows: the packed step's loss and gradient are the plain one's to fp32 rounding.
    assert step["max_loss_rel_diff"] < 1e-5 and step["grad_norm_rel_diff"] < 1e-5
    accounting = result["train_accounting"][str(tiny_cache)]
    assert [(r["shape"], r["plan"]) for r in accounting] == [(s, p) for s in ("2x1", "4x2") for p in ("prompt groups", "rows (before)")]
    for r in accounting:
        assert r["steps"] == {"2x1": 8, "4x2": 2}[r["shape"]]  # 16 rows
        assert 0 <= r["kl_partner_in_step"] + r["kl_partner_trained_before"] <= 1
    grouped, before = accounting[0], accounting[1]
    assert grouped["both_saved"] >= before["both_saved"]  # prompt groups only add packs
    printed = capsys.readouterr().out
    assert "time ratio shared/plain" in printed and "exact layout accounting" in printed


def test_without_a_cache_it_says_which_flag(bench):
    with pytest.raises(SystemExit, match="--train-cache"):
        bench.main(["--model", "m"])


def test_the_scoring_tool_no_longer_takes_the_training_flags(monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "tools"))
    import bench_prefix_sharing

    with pytest.raises(SystemExit):
        bench_prefix_sharing.parse_args(["--train-cache", "x"])
    assert "bench_train_sharing" in sys.modules["bench_prefix_sharing"].__doc__


def test_the_profile_tool_times_both_layouts_and_the_layout_work(monkeypatch, tmp_path):
    """tools/profile_train_sharing.py on the tiny shape (its CPU smoke run): a ratio per batch
    size, the CPU time of laying the steps out, and a profiled pass per layout."""
    monkeypatch.syspath_prepend(str(REPO / "tools"))
    import profile_train_sharing

    out = tmp_path / "profile.json"
    args = ["--shape", "tiny", "--precision", "fp32", "--batches", "2", "--profile-batch", "2", "--steps", "1", "--max-len", "96", "--repeats", "1"]
    assert profile_train_sharing.main([*args, "--json-out", str(out)]) == 0
    result = json.loads(out.read_text())
    ratio = result["ratios"]["2"]
    assert 0 < ratio["saved_fraction"] < 1  # a pair's prompt runs once
    assert ratio["grad_norm_rel_diff"] < 1e-5  # same rows, same loss and gradient to fp32 rounding
    assert ratio["layout_cpu_s_per_step"] > 0
    for layout in ("plain", "shared"):
        p = result["profile"][layout]
        assert p["wall_s"] > 0 and p["device_busy_s"] is None  # no device on CPU
        assert any(t["name"] == "aten::mm" for t in p["top"])  # the dense layers show
