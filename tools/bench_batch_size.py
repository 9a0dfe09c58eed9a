"""Per-token cost of reference scoring against the batch budget, and what page faults cost
(issue 21, fifth pass). `score_sequences` in one process on the first `--data-rows` rows of a
../shared/data file with the real SmolLM2-135M, plain and prefix-shared at several
`--batch-tokens`, taking turns (order reversed each round); per run: wall, user and system CPU
time and minor page faults of this process. Run it under
`GLIBC_TUNABLES=glibc.malloc.mmap_threshold=1073741824:glibc.malloc.trim_threshold=4294967296`
to see the same without glibc handing freed memory back to the kernel.

    python tools/bench_batch_size.py --model /work/bench/smollm2 --mix dpo_en_demo --data-rows 8
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_prefix_sharing as B

from kto.formats.compute.loading import load_causal_lm
from kto.formats.compute.logprob import CompletionLogps
from kto.formats.compute.scoring import score_sequences
from kto.formats.compute.sources import resolve_source


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="HF dir of SmolLM2-135M-Instruct")
    p.add_argument("--mix", default="dpo_en_demo", choices=("dpo_en_demo", "kto_en_demo"))
    p.add_argument("--data-rows", type=int, default=8)
    p.add_argument("--data-dir", type=Path, default=Path(os.environ.get("KTO_SHARED_DATA", B.REPO.parent / "shared" / "data")))
    p.add_argument("--variants", default="plain:4096,shared:4096,plain:2048,shared:2048,plain:1024", help="layout:budget, comma list")
    p.add_argument("--rounds", type=int, default=2)
    args = p.parse_args(argv)
    variants = [(layout == "shared", int(budget)) for layout, budget in (v.split(":") for v in args.variants.split(","))]
    with tempfile.TemporaryDirectory() as tmp:
        subset = B.first_rows(args.data_dir / f"{args.mix}.json", args.data_rows, Path(tmp))
        (sequences,), pad_id = B.real_sequences(subset, Path(args.model))
    prompts, completions, keys = sequences
    lm = load_causal_lm(resolve_source(args.model), dtype=torch.float32, attn_implementation="sdpa").eval()
    scorer, cpu = CompletionLogps(lm), torch.device("cpu")
    score_sequences(scorer, prompts[:4], completions[:4], keys[:4], share_prefixes=True, batch_tokens=4096, pad_id=pad_id, device=cpu)  # warm-up
    best: dict = {}
    for round_ in range(args.rounds):
        for share, budget in variants if round_ % 2 == 0 else variants[::-1]:
            r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
            score_sequences(scorer, prompts, completions, keys, share_prefixes=share, batch_tokens=budget, pad_id=pad_id, device=cpu)
            wall, r1 = time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_SELF)
            best[(share, budget)] = min(best.get((share, budget), float("inf")), wall)
            print(
                f"round {round_} {'shared' if share else 'plain '} {budget:5d}: {wall:6.1f} s wall, user {r1.ru_utime - r0.ru_utime:6.1f} s, "
                f"system {r1.ru_stime - r0.ru_stime:5.1f} s, {(r1.ru_minflt - r0.ru_minflt) / 1e6:.2f} M minor faults",
                flush=True,
            )
    print("best:", {f"{'shared' if s else 'plain'} {b}": round(v, 1) for (s, b), v in best.items()})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
