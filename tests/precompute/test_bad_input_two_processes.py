"""Bad input under 2 processes: every rank stops with the one line (exit status 2) that one
process gives, and a --out the run created is not left behind.

Seen: with a duplicate id (or a single row) the main process removed --out while rank 1 still
read the staging file in it, and rank 1 died of a FileNotFoundError traceback; a row refused at
tokenization on rank 1's share stopped rank 1 alone while rank 0 waited in the gather (gloo's
"Connection closed by peer" traceback).

The two ranks are started as torchrun starts them (RANK, LOCAL_RANK, WORLD_SIZE,
MASTER_ADDR, ... in the environment), but as two processes of the test's own: torchrun prints a
ChildFailedError traceback of its own for any rank that exits non-zero, merges the ranks'
stderr, and SIGTERMs the other rank once one has exited, so each rank's exit status and line
could not be read from it."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import precompute_args, text_rows, write_rows

from kto.formats.errors import InputError
from kto.precompute import staging

PREFIX = "kto-precompute: error:"
TOOLS = json.dumps([{"type": "function", "function": {"name": "weather", "parameters": {"type": "object"}}}])


def turn(role: str, value: str) -> dict:
    return {"from": role, "value": value}


def sharegpt_rows(refused: set[int]) -> list[dict]:
    """Four ShareGPT rows; those in `refused` end in a function call, which SmolLM2's chat
    template (the tiny model's) does not render, so tokenization refuses them (tokenize.py
    `_check_tools_render`). Row k of a block is tokenized by rank k % 2."""
    rows = [{"conversations": [turn("human", f"Question {i}?"), turn("gpt", f"Answer {i}.")], "kto_tag": i % 2 == 0} for i in range(4)]
    for i in refused:
        call = json.dumps({"name": "weather", "arguments": {"city": f"c{i}"}})
        rows[i] = {"conversations": [turn("human", f"Weather in city {i}?"), turn("function_call", call)], "kto_tag": i % 2 == 0, "tools": TOOLS}
    return rows


CASES = {
    # Both ranks read the staging file to check ids; the main process removes --out afterwards.
    # (A single row, "need at least 2 examples", fails at the same place.)
    "duplicate_id": ([{**row, "id": "a" if i < 2 else f"r{i}"} for i, row in enumerate(text_rows()[:4])], "duplicate id 'a'"),
    # File row 2 (block row 1) is refused on rank 1's share alone.
    "refused_on_rank_1": (sharegpt_rows({1}), "row 2 (id 'data.jsonl:2')"),
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def two_ranks(args: list[str], timeout: int = 300) -> list[subprocess.CompletedProcess]:
    """`python -m kto.precompute.cli ARGS` as ranks 0 and 1 of one gloo group."""
    port = str(free_port())
    procs = []
    for rank in (0, 1):
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port}
        env.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", LOCAL_WORLD_SIZE="2", GROUP_RANK="0")
        cmd = [sys.executable, "-m", "kto.precompute.cli", *args]
        procs.append(subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env))
    done = []
    try:
        for proc in procs:
            out, err = proc.communicate(timeout=timeout)  # a rank waiting in a collective times out here
            done.append(subprocess.CompletedProcess(proc.args, proc.returncode, out, err))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return done


def one_process_line(args: list[str]) -> str:
    from click.testing import CliRunner

    from kto.precompute.cli import main

    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2, result.output
    return [line for line in result.output.splitlines() if line.startswith(PREFIX)][-1]


@pytest.mark.distributed
@pytest.mark.parametrize("case", CASES)
def test_every_rank_stops_with_the_one_line_of_one_process(tmp_path: Path, tiny_model_dir: Path, case: str) -> None:
    rows, says = CASES[case]
    data = write_rows(tmp_path / "data.jsonl", rows)
    expected = one_process_line(precompute_args(data, tiny_model_dir, tmp_path / "one"))
    assert says in expected and not (tmp_path / "one").exists()
    out = tmp_path / "two"
    ranks = two_ranks(precompute_args(data, tiny_model_dir, out))
    for rank, proc in enumerate(ranks):
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, f"rank {rank}:\n{proc.stderr[-3000:]}"
    # The launcher merges the ranks' stderr: the user reads the line once, from the main process.
    merged = ranks[0].stderr + ranks[1].stderr
    assert [line for line in merged.splitlines() if line.startswith(PREFIX)] == [expected], merged[-3000:]
    assert expected in ranks[0].stderr
    assert not out.exists()


@pytest.mark.parametrize(("refused", "says"), [({3, 4}, "row 3"), ({2, 5}, "row 2")])
def test_a_block_refused_on_both_ranks_says_its_earliest_row(monkeypatch: pytest.MonkeyPatch, refused: set[int], says: str) -> None:
    """Rank r of 2 tokenizes rows r, r + 2, ... of a block. Whichever rank refused the earlier
    row (rank 1 with row 3 before rank 0's row 4; rank 0 with row 2 before rank 1's row 5), both
    raise its message, the one a single process stops at. The gather is the shares of both
    ranks, as all_gather_object would hand them."""
    import torch.distributed as dist

    def tokenize_one(row: int) -> int:
        if row in refused:
            raise InputError(f"row {row}")
        return row

    block = list(range(6))
    shares = [staging._tokenize_share(block, tokenize_one, rank, 2) for rank in (0, 1)]
    monkeypatch.setattr(dist, "all_gather_object", lambda parts, mine: parts.__setitem__(slice(None), shares))
    with pytest.raises(InputError, match=f"^{says}$"):
        staging._tokenize_block(block, tokenize_one, 0, 2)
    with pytest.raises(InputError, match=f"^{says}$"):
        staging._tokenize_block(block, tokenize_one, 1, 2)
    with pytest.raises(InputError, match=f"^{says}$"):
        staging._tokenize_block(block, tokenize_one, 0, 1)  # one process: the first refused row
    refused = set()
    shares = [staging._tokenize_share(block, tokenize_one, rank, 2) for rank in (0, 1)]
    assert staging._tokenize_block(block, tokenize_one, 1, 2) == block


@pytest.mark.distributed
def test_overwrite_with_bad_input_keeps_the_old_cache_then_good_input_replaces_it(tmp_path: Path, tiny_model_dir: Path) -> None:
    """Under 2 processes, `--overwrite` with a duplicate id (refused after both ranks staged)
    leaves the old cache byte for byte; with good rows the main process starts the new cache in
    `.next/` while rank 1 waits (precompute/output.py `begin_aside`), both ranks score into it, the
    main process swaps it in (`swap_in`), and both ranks finish."""
    from click.testing import CliRunner

    from kto.formats.manifest import read_manifest
    from kto.precompute.cli import main

    good = write_rows(tmp_path / "good.jsonl", text_rows())
    out = tmp_path / "c"
    assert CliRunner().invoke(main, precompute_args(good, tiny_model_dir, out)).exit_code == 0
    before = {p: p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file() and p.name != ".lock"}
    rows, says = CASES["duplicate_id"]
    bad = write_rows(tmp_path / "bad.jsonl", rows)
    ranks = two_ranks(precompute_args(bad, tiny_model_dir, out, "--overwrite"))
    for rank, proc in enumerate(ranks):
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, f"rank {rank}:\n{proc.stderr[-3000:]}"
    assert [line for line in (ranks[0].stderr + ranks[1].stderr).splitlines() if says in line] == [
        line for line in ranks[0].stderr.splitlines() if says in line
    ]
    assert says in ranks[0].stderr
    assert {p: p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file() and p.name != ".lock"} == before
    for rank, proc in enumerate(two_ranks(precompute_args(good, tiny_model_dir, out, "--seed", "1", "--overwrite"))):
        assert proc.returncode == 0, f"rank {rank}:\n{proc.stderr[-3000:]}"
    assert read_manifest(out).content.seed == 1
