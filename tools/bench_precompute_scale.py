"""kto-precompute at dataset scale: peak RSS and wall time against the number of rows (issue 12).

Each run is a fresh `kto-precompute` process (its peak RSS is read with os.wait4, so nothing of
this script counts) on synthetic text rows, with the tiniest model that still runs the real code
path: a random Llama of hidden size 8 and 1 layer (`_bench_common.SHAPES["micro"]`) over a 64-word tokenizer
(`_bench_common.build_tokenizer`). The model is tiny on purpose: what grows with the number of
rows is the data path (reading, tokenizing, staging, pairing, shard filling), and that is what is
measured. Sizes are interleaved and repeated; the median is printed.

`--baseline-pythonpath DIR` also runs another checkout (a directory holding `kto/`) side by side,
e.g. the code before staging.

    python tools/bench_precompute_scale.py                       # 20,000 and 200,000 rows
    python tools/bench_precompute_scale.py --rows 2000 20000 --repeats 1
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _bench_common as C

SHAPE = "micro"  # hidden size 8, 1 layer: the model costs next to nothing, the data path is measured
VOCAB = C.SHAPES[SHAPE]["vocab_size"]


def make_model(out: Path) -> Path:
    import torch

    return C.save_model_dir(out, SHAPE, torch.float32, torch.device("cpu"))


def make_rows(path: Path, n: int, seed: int = 0) -> Path:
    """Text rows of 4-12 prompt words and 2-10 completion words; prompts repeat (1 in 4 distinct)."""
    rng = random.Random(seed)
    words = [f"w{i}" for i in range(C.FIRST_WORD_ID, VOCAB)]
    prompts = [" ".join(rng.choices(words, k=rng.randint(4, 12))) for _ in range(max(n // 4, 1))]
    with open(path, "w") as f:
        for _ in range(n):
            completion = " " + " ".join(rng.choices(words, k=rng.randint(2, 10)))
            f.write(json.dumps({"prompt": rng.choice(prompts), "completion": completion, "label": rng.random() < 0.6}) + "\n")
    return path


def run_once(data: Path, model: Path, out: Path, pythonpath: str) -> tuple[float, float]:
    """(wall seconds, peak RSS in MB) of one kto-precompute process."""
    shutil.rmtree(out, ignore_errors=True)
    cmd = [
        sys.executable,
        "-m",
        "kto.precompute.cli",
        "--data",
        str(data),
        "--model",
        str(model),
        "--out",
        str(out),
        "--max-length",
        "32",
        "--rows-per-shard",
        "4096",
        "--batch-tokens",
        "8192",
    ]
    env = {**os.environ, "PYTHONPATH": pythonpath, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - started
    stderr = proc.stderr.read().decode()
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"kto-precompute failed:\n{stderr[-2000:]}")
    return seconds, usage.ru_maxrss / 1024  # KiB on Linux


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, nargs="+", default=[20_000, 200_000])
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--baseline-pythonpath", default=None)
    ap.add_argument("--workdir", type=Path, default=None)
    args = ap.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="kto-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    model = make_model(work / "model")
    data = {n: make_rows(work / f"rows-{n}.jsonl", n) for n in args.rows}
    ours = os.environ.get("PYTHONPATH", "")
    variants = {"staged": ours} | ({"baseline": args.baseline_pythonpath} if args.baseline_pythonpath else {})
    results: dict[tuple[str, int], list[tuple[float, float]]] = {}
    for rep in range(args.repeats):
        for n in args.rows:
            for name, path in variants.items():
                t, rss = run_once(data[n], model, work / "out", path)
                results.setdefault((name, n), []).append((t, rss))
                print(f"rep {rep} {name:8s} {n:>8,} rows: {t:7.1f} s, peak RSS {rss:7.1f} MB", file=sys.stderr, flush=True)
    print(f"\n{C.machine_line() if hasattr(C, 'machine_line') else ''}")
    print("| variant | rows | wall time (median) | peak RSS (median) | s per 1,000 rows |")
    print("|---|---:|---:|---:|---:|")
    for (name, n), runs in sorted(results.items()):
        t = statistics.median(r[0] for r in runs)
        rss = statistics.median(r[1] for r in runs)
        print(f"| {name} | {n:,} | {t:.1f} s | {rss:.0f} MB | {1000 * t / n:.2f} |")
    for name in variants:
        lo, hi = min(args.rows), max(args.rows)
        t_lo, t_hi = (statistics.median(r[0] for r in results[(name, k)]) for k in (lo, hi))
        m_lo, m_hi = (statistics.median(r[1] for r in results[(name, k)]) for k in (lo, hi))
        print(f"{name}: {hi // lo}x rows -> {t_hi / t_lo:.2f}x time, {m_hi / m_lo:.2f}x peak RSS")
    shutil.rmtree(work / "out", ignore_errors=True)


if __name__ == "__main__":
    main()
