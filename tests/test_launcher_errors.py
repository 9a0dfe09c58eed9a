"""A refused flag under a launcher: the user reads its error once, not once per process.

Flags are checked before the processes meet (no group yet), so the processes compare their
lines in the key-value store of torchrun's agent (which `accelerate launch` also starts). The
test plays the agent: it holds the store and starts two ranks with the environment torchrun
gives them."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from datetime import timedelta

import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def two_ranks(module: str, args_of_rank: list[list[str]], agent_store: bool = True) -> list[subprocess.CompletedProcess]:
    import torch.distributed as dist

    port = free_port()
    store = dist.TCPStore("127.0.0.1", port, None, True, timeout=timedelta(seconds=60), wait_for_workers=False) if agent_store else None
    procs = []
    for rank, args in enumerate(args_of_rank):
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
        env.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", LOCAL_WORLD_SIZE="2", TORCHELASTIC_RESTART_COUNT="0")
        if agent_store:
            env["TORCHELASTIC_USE_AGENT_STORE"] = "True"
        cmd = [sys.executable, "-m", module, *args]
        procs.append(subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env))
    done = [subprocess.CompletedProcess(p.args, p.wait(timeout=120), *p.communicate()) for p in procs]
    del store
    return done


def error_lines(proc: subprocess.CompletedProcess) -> list[str]:
    return [line for line in proc.stderr.splitlines() if "rror" in line]


@pytest.mark.distributed
@pytest.mark.parametrize(
    ("module", "args", "says"),
    [
        ("kto.train.cli", ["--bogus"], "kto-train: error: No such option '--bogus'"),  # click's own error, on one line
        ("kto.train.cli", ["--learning-rate", "1"], "TRL/LLaMA-Factory's name for kto-train's --lr"),  # our hint
        ("kto.precompute.cli", ["--batch-tokens", "many"], "'many' is not a valid integer"),
        ("kto.train.cli", ["--cache", "c", "--out", "o"], "kto-train: error: --model is required"),  # an InputError
    ],
)
def test_a_flag_refused_on_every_process_is_said_once(module: str, args: list[str], says: str) -> None:
    ranks = two_ranks(module, [args, args])
    assert [p.returncode for p in ranks] == [2, 2], [p.stderr for p in ranks]
    assert len(error_lines(ranks[0])) == 1 and says in error_lines(ranks[0])[0], ranks[0].stderr
    assert ranks[1].stderr == "", ranks[1].stderr


@pytest.mark.distributed
def test_different_errors_are_each_said() -> None:
    """A rank whose line differs (here: other flags) says its own, after the wait for the others."""
    ranks = two_ranks("kto.train.cli", [["--bogus"], ["--other"]])
    assert [p.returncode for p in ranks] == [2, 2]
    assert "'--bogus'" in ranks[0].stderr and "'--other'" in ranks[1].stderr


@pytest.mark.distributed
def test_without_the_agents_store_each_process_says_its_line() -> None:
    """A launcher without torchrun's agent store: no way to compare, so none is swallowed."""
    ranks = two_ranks("kto.train.cli", [["--bogus"], ["--bogus"]], agent_store=False)
    assert [len(error_lines(p)) for p in ranks] == [1, 1]
