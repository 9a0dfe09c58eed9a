"""tools/gpu_check.py runs on CPU: the script handed to the GPU machine is proved here first.

One subprocess run of `--shape tiny --quick` (about 20-30 s on 2 idle cores; minutes when shared): every section must run
without error, correctness must pass, polars must stay out of the import path, and the JSON
must carry the keys the device report is read from.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def test_gpu_check_quick_runs_on_cpu(tmp_path):
    out = tmp_path / "gpu_check.json"
    env = {k: v for k, v in os.environ.items() if k != "OUT"}
    env["CUDA_VISIBLE_DEVICES"] = ""  # the CPU path, even on a machine with a GPU
    proc = subprocess.run(
        [sys.executable, str(REPO / "tools" / "gpu_check.py"), "--shape", "tiny", "--quick", "--json-out", str(out)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert {
        "versions",
        "matmul_ceiling",
        "correctness",
        "precompute",
        "startup",
        "train",
        "scoring_paths",
        "prefix_sharing",
        "polars_imported",
        "elapsed_s",
        "ok",
    } <= set(report)
    assert report["ok"] is True and report["polars_imported"] is False
    assert [c["dtype"] for c in report["correctness"]] == ["bfloat16", "float32"]
    assert all(c["ok"] for c in report["correctness"])
    pre = report["precompute"]
    for key in ("tokens_per_s", "mfu", "padding_fraction", "peak_gb", "end_to_end_tokens_per_s", "real_tokens"):
        assert key in pre, pre
    assert pre["rows"] == 32 and pre["sequences"] == 64 and 0 <= pre["padding_fraction"] < 1
    assert {r["variant"] for r in report["train"]} == {"policy-only", "resident-reference"}
    assert all("step_s" in r and "peak_gb" in r for r in report["train"])
    assert {"first_run_s", "second_run_s", "model_load_s"} <= set(report["startup"])
    lora = report["train_lora"]
    assert [r["variant"] for r in lora] == ["policy-only", "resident-reference"] and all(r["lora_r"] == 16 for r in lora)
    assert all("step_s" in r and "peak_gb" in r for r in lora)
    assert {r["path"] for r in report["scoring_paths"]} == {"kto", "naive"}
    assert all(r["max_abs_sum_diff"] < 1e-3 for r in report["scoring_paths"])
    for mix in ("paired", "synthetic"):
        m = report["prefix_sharing"][mix]
        assert m["max_abs_token_diff"] < 1e-4 and m["tokens_per_s_ratio"] > 0 and m["peak_memory_ratio"] > 0
    assert report["prefix_sharing"]["paired"]["computed_fraction"] < 0.8  # long shared prompts are run once
    step = report["train_prefix_sharing"]
    assert [r["layout"] for r in step["rows"]] == ["plain", "prefix-shared"] and step["saved_fraction"] > 0
    assert step["max_loss_rel_diff"] < 1e-5 and step["grad_norm_rel_diff"] < 1e-5
    cli = report["train_cli"]  # kto-train itself, a subprocess, on the precompute section's cache
    assert cli["steps"] == 2 and len(cli["loss"]) == 2 and cli["final_saved"]
    assert cli["loss"][0] == pytest.approx(0.5, abs=1e-6)  # policy = reference at step 0: r = z = 0, 1 - σ(0)
    assert any("step-0 check: max |Δ log p|" in line for line in cli["step0_check"])
    assert "gpu_check summary" in proc.stdout


@pytest.mark.parametrize(
    ("argv", "shape"),
    [([], "llama-3.2-1b"), (["--quick"], "tiny"), (["--quick", "--shape", "smollm2-135m"], "smollm2-135m"), (["--shape", "tiny"], "tiny")],
)
def test_quick_on_a_gpu_builds_the_tiny_shape(monkeypatch, argv, shape):
    """On CUDA --shape defaults to llama-3.2-1b; --quick without --shape used to keep it, and
    build 1B models under tiny sizes and budgets. --quick now means the tiny shape unless one
    is named. (torch.cuda.is_available is patched: what parse_args sees on a GPU machine.)"""
    monkeypatch.syspath_prepend(str(REPO / "tools"))
    import gpu_check

    monkeypatch.setattr(gpu_check.torch.cuda, "is_available", lambda: True)
    assert gpu_check.parse_args(argv).shape == shape
