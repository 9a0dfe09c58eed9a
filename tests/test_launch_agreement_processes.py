"""Two torchrun "nodes" (as tests/test_multinode.py launches them) given different settings: every
process refuses, with one line naming the setting, before anything is written (formats/launch_agreement.py).
Before this check, node 1's --lr trained silently under a run record saying node 0's, and its
--max-length staged rows cut at another length into the cache node 0's manifest described."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
from conftest import chat_rows, precompute_args, write_rows
from test_multinode import launch_two_nodes as two_nodes

SAME = "every process of a launch must be given the same settings"


def said(node: subprocess.CompletedProcess) -> list[str]:
    return [line for line in (node.stdout + node.stderr).splitlines() if SAME in line]


@pytest.mark.distributed
def test_train_refuses_a_different_lr_per_process(tmp_path: Path, tiny_cache: Path, tiny_model_dir: Path) -> None:
    run = tmp_path / "run"
    common = ["-m", "kto.train.cli", "--cache", str(tiny_cache), "--model", str(tiny_model_dir), "--out", str(run), "--batch-size", "2", "--max-steps", "2"]
    nodes = two_nodes([[*common, "--lr", "1e-3"], [*common, "--lr", "5e-2"]])
    assert [n.returncode for n in nodes] == [1, 1] and all(re.search(r"exitcode\s*: 2 ", n.stderr) for n in nodes)  # torchrun's 1 over each process's 2
    assert said(nodes[0]) == [f"kto-train: error: --lr: 0.05 on process 1, 0.001 on the main process: {SAME}"], nodes[0].stderr[-3000:]
    assert said(nodes[1]) == [], nodes[1].stderr[-3000:]  # said once, by the main process
    assert not run.exists()  # no run dir, no checkpoint, no metrics


@pytest.mark.distributed
def test_precompute_refuses_a_different_max_length_per_process(tmp_path: Path, tiny_model_dir: Path) -> None:
    data = write_rows(tmp_path / "chat.jsonl", chat_rows())
    out = tmp_path / "cache"
    args = precompute_args(data, tiny_model_dir, out)  # --max-length 64
    other = [*args[: args.index("--max-length")], "--max-length", "256", *args[args.index("--max-length") + 2 :]]
    nodes = two_nodes([["-m", "kto.precompute.cli", *args], ["-m", "kto.precompute.cli", *other]])
    assert [n.returncode for n in nodes] == [1, 1] and all(re.search(r"exitcode\s*: 2 ", n.stderr) for n in nodes)  # torchrun's 1 over each process's 2
    assert said(nodes[0]) == [f"kto-precompute: error: --max-length: 256 on process 1, 64 on the main process: {SAME}"], nodes[0].stderr[-3000:]
    assert said(nodes[1]) == [], nodes[1].stderr[-3000:]
    assert not out.exists()  # no staging file, no shard, no lock: --out was never created
    assert sorted(p.name for p in tmp_path.iterdir()) == ["chat.jsonl"]
