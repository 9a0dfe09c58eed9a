"""Filling one shard's rows from precompute's staging file: a shard's rows and their KL partners
gathered and cut behind their prompts (plan.shard_values), against an older checkout.

    python tools/bench_shard_fill.py write /tmp/staged.arrow            # 50k rows, 25 record batches
    PYTHONPATH=OLD/.kto_path python tools/bench_shard_fill.py old /tmp/staged.arrow   # e.g. 09efb89
    PYTHONPATH=NEW/.kto_path python tools/bench_shard_fill.py new /tmp/staged.arrow

`old` is staging.py's own reader and splits.cache_rows (a per-row copy and cut, before issue 20's
row steps); `new` is the one Arrow reader (formats/cache.py ArrowFile, ragged.take_many) and the
vectorized cut. Prompts 16-511 and completions 16-1023 random tokens, a shard of 4096 rows with
random partners (so it touches every record batch, as a real shard does); prints the best of 3.
Interleave old and new runs: timings on a shared machine are noisy.
"""

import json
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc

N, SHARD = 50000, 4096


def write(path: Path) -> None:
    rng = np.random.default_rng(0)
    prompt_len, completion_len = rng.integers(16, 512, N), rng.integers(16, 1024, N)
    table = pa.table(
        {
            "id": [f"r{i}" for i in range(N)],
            "label": rng.random(N) < 0.5,
            "prompt_ids": pa.array([rng.integers(0, 49152, n).astype(np.int32) for n in prompt_len], pa.list_(pa.int32())),
            "prompt_cut": pa.array(np.zeros(N, np.int8)),
            "completion_ids": pa.array([rng.integers(0, 49152, n).astype(np.int32) for n in completion_len], pa.list_(pa.int32())),
        }
    )
    with ipc.new_file(str(path), table.schema) as writer:
        for a in range(0, N, 2048):  # staging.BLOCK rows per record batch
            writer.write_table(table.slice(a, 2048))


def fill(which: str, path: Path, rows: np.ndarray, partners: np.ndarray) -> None:
    if which == "old":
        from kto.precompute.splits import cache_rows
        from kto.precompute.staging import StagingReader
        from kto.precompute.tokenize import Truncation

        with StagingReader(path) as reader:
            cache_rows(reader, SimpleNamespace(rows=rows, partners=partners, truncation=Truncation(1024, 512)), 0, SHARD)
    else:
        from kto.formats.cache import ArrowFile
        from kto.precompute.plan import Truncation, shard_values

        with ArrowFile(path) as reader:
            shard_values(reader, rows, partners, Truncation(1024, 512))


def main() -> None:
    if {"-h", "--help"} & set(sys.argv[1:]):
        print(__doc__)
        return
    if len(sys.argv) != 3 or sys.argv[1] not in ("write", "old", "new"):
        sys.exit("usage:" + __doc__.split("\n\n")[1])
    which, path = sys.argv[1], Path(sys.argv[2])
    if which == "write":
        write(path)
        return
    rng = np.random.default_rng(1)
    rows, partners = rng.permutation(N)[:SHARD], rng.permutation(N)[:SHARD]
    best = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        fill(which, path, rows, partners)
        best = min(best, time.perf_counter() - started)
    print(json.dumps({which: round(best, 3), "load": open("/proc/loadavg").read().split()[0]}))


if __name__ == "__main__":
    main()
