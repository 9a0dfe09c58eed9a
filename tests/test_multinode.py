"""The README's two-"node" recipe, run as written on one machine: two torchrun launchers (one per
"node", --nnodes 2 --node_rank 0/1, one process each) meet through the rendezvous at
127.0.0.1, first for kto-precompute, then for kto-train, on storage both see.

This is also the suite's test that 2 processes write the cache of one, byte for byte (kto's code
sees the same world size and ranks under one launcher with --nproc_per_node 2; that launch was
a test of its own, 20 s of the suite's time, with the same assertions)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest
import torch
from conftest import chat_rows, metrics, precompute_args, run_train, write_rows

from kto.formats.manifest import read_manifest

TRAIN_ARGS = ["--lr", "1e-3", "--log-every", "1", "--max-steps", "2"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_two_nodes(args_of_node: list[list[str]], timeout: int = 600) -> list[subprocess.CompletedProcess]:
    """`torchrun --nnodes 2 --node_rank N --nproc_per_node 1 --master_addr 127.0.0.1 …` for N = 0, 1,
    started together as two machines would start them, each with its own arguments; their exit
    statuses and output."""
    port = str(free_port())
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    launchers = [
        subprocess.Popen(
            [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--node_rank", str(rank), "--nproc_per_node", "1"]
            + ["--master_addr", "127.0.0.1", "--master_port", port, *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for rank, args in enumerate(args_of_node)
    ]
    done = []
    for proc in launchers:
        out, err = proc.communicate(timeout=timeout)
        done.append(subprocess.CompletedProcess(proc.args, proc.returncode, out, err))
    return done


def two_nodes(*args: str, timeout: int = 600) -> None:
    """Both nodes with the same arguments; both must exit 0."""
    for rank, node in enumerate(launch_two_nodes([list(args), list(args)], timeout)):
        assert node.returncode == 0, f"node {rank}:\n{(node.stdout + node.stderr)[-3000:]}"


@pytest.mark.distributed
@pytest.mark.numerics
@pytest.mark.slow
def test_two_node_recipe_for_both_commands(tmp_path, tiny_model_dir):
    data = write_rows(tmp_path / "chat.jsonl", chat_rows())
    one, two = tmp_path / "cache-one-node", tmp_path / "cache-two-nodes"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each launched process (OMP_NUM_THREADS=1): the same kernels
    try:
        from click.testing import CliRunner

        from kto.precompute.cli import main

        assert CliRunner().invoke(main, precompute_args(data, tiny_model_dir, one)).exit_code == 0
    finally:
        torch.set_num_threads(threads)
    two_nodes("-m", "kto.precompute.cli", *precompute_args(data, tiny_model_dir, two))
    m1, m2 = read_manifest(one), read_manifest(two)
    assert m2.layout["num_processes"] == 2 and m1.fingerprint == m2.fingerprint
    assert [s.sha256 for s in m1.shards] == [s.sha256 for s in m2.shards]  # the same bytes as one node

    run = tmp_path / "run-two-nodes"
    two_nodes("-m", "kto.train.cli", "--cache", str(two), "--model", str(tiny_model_dir), "--out", str(run), "--batch-size", "2", *TRAIN_ARGS)
    reference = tmp_path / "run-one-process"
    assert run_train(one, tiny_model_dir, reference, "--batch-size", "4", *TRAIN_ARGS).exit_code == 0
    # 2 nodes × batch 2 see the step rows of 1 process × batch 4 (tests/train/test_step.py):
    # the same losses to float rounding, counted over both nodes.
    got, want = metrics(run), metrics(reference)
    assert [m["count/chosen"] + m["count/rejected"] for m in got] == [4, 4]
    assert [m["loss"] for m in got] == pytest.approx([m["loss"] for m in want], rel=1e-5)
    assert (run / "final" / "model.safetensors").is_file() and (run / "final" / "README.md").is_file()
