"""How far fp32 scoring is from the exact log-probs, per layout, on real rows (issue 21).

The shared and the plain layout of kto-precompute differ per token by up to ~5e-5 on the
30-layer SmolLM2 over sequences past 384 tokens (docs/benchmarks.md). Is that the shared
layout's error, or fp32's? This scores the first `--rows` rows of a ../shared/data file (their
main and KL sequences, exactly as kto-precompute cuts and pairs them) three ways in fp32 with
the real model and compares every per-token log-prob with a float64 forward of the same plain
sequence, one sequence at a time (no padding, no batching):

  plain        fp32, token-budget batches of --batch-tokens (kto-precompute --no-prefix-sharing)
  plain/2      fp32, half that budget: another batching of the same plain layout
  shared       fp32, --batch-tokens, prefix-shared packs (kto-precompute's default)
  shared-plain the largest |shared − plain| (what the caches' agreement check sees)

by sequence length (prompt + completion): ≤ 384, 385–720, over 720 tokens. If `shared` is as
close to float64 as `plain` is, the shared-vs-plain difference is fp32 rounding of two batchings,
not an error of the layout; the bound that fp32 allows is then the plain layout's own error.

    python tools/bench_fp32_error.py --model /work/bench/smollm2 --data ../shared/data/dpo_en_demo.json --rows 24
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_prefix_sharing import real_sequences

from kto.formats.compute.loading import load_causal_lm
from kto.formats.compute.logprob import CompletionLogps, make_token_batch
from kto.formats.compute.scoring import score_sequences
from kto.formats.compute.sources import resolve_source

BUCKETS = ((0, 384), (385, 720), (721, 10**9))


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="HF dir of the real model (examples/smollm2_to_hf.py makes one)")
    p.add_argument("--data", type=Path, required=True, help="a ../shared/data file")
    p.add_argument("--rows", type=int, default=24, help="rows of the first shard, in cycle order (pairs sit side by side)")
    p.add_argument("--max-length", type=int, default=1024)
    p.add_argument("--batch-tokens", type=int, default=4096)
    p.add_argument("--json-out", type=Path, default=None)
    return p.parse_args(argv)


def first_rows(shards, rows: int) -> tuple[list, list, list]:
    """The main and KL sequences of the first `rows` rows of the first shard."""
    prompts, completions, keys = shards[0]
    n = len(prompts) // 2  # main sequences first, then the KL ones (pipeline._shard_sequences)
    if not 0 < rows <= n:
        sys.exit(f"--rows: the first shard holds {n} rows")
    pick = [*range(rows), *range(n, n + rows)]
    return [prompts[i] for i in pick], [completions[i] for i in pick], [keys[i] for i in pick]


@torch.inference_mode()
def exact(model_dir: str, prompts, completions, pad_id: int) -> list[np.ndarray]:
    """Per-token log-probs of each plain sequence in float64, one at a time."""
    lm = load_causal_lm(resolve_source(model_dir), dtype=torch.float64, attn_implementation="sdpa").eval()
    scorer = CompletionLogps(lm)
    out = []
    for p, c in zip(prompts, completions):
        batch = make_token_batch([p], [c], pad_id)
        out.append(scorer(batch.input_ids, batch.score_mask).numpy())
    return out


def fp32_layouts(model_dir: str, sequences, pad_id: int, batch_tokens: int) -> dict[str, list[np.ndarray]]:
    lm = load_causal_lm(resolve_source(model_dir), dtype=torch.float32, attn_implementation="sdpa").eval()
    scorer = CompletionLogps(lm)
    runs = {"plain": (batch_tokens, False), "plain/2": (batch_tokens // 2, False), "shared": (batch_tokens, True)}
    out = {}
    for name, (budget, share) in runs.items():
        t = time.perf_counter()
        scored = score_sequences(scorer, *sequences, batch_tokens=budget, pad_id=pad_id, device=torch.device("cpu"), share_prefixes=share)
        out[name] = scored.token_logps
        print(f"  {name}: {time.perf_counter() - t:.1f} s", file=sys.stderr)
    return out


def table(lengths: list[int], runs: dict[str, list[np.ndarray]], reference: list[np.ndarray]) -> list[dict]:
    """Per length bucket: sequences, tokens, and the largest per-token |Δ| of each run."""
    rows = []
    for lo, hi in BUCKETS:
        pick = [i for i, n in enumerate(lengths) if lo <= n <= hi]
        if not pick:
            continue
        row = {"length": f"{lo}-{hi}" if hi < 10**9 else f">{lo - 1}", "sequences": len(pick), "tokens": sum(len(reference[i]) for i in pick)}
        for name, values in runs.items():
            row[f"{name} vs fp64"] = max(float(np.abs(values[i].astype(np.float64) - reference[i]).max(initial=0)) for i in pick)
        row["shared vs plain"] = max(float(np.abs(runs["shared"][i] - runs["plain"][i]).max(initial=0)) for i in pick)
        rows.append(row)
    return rows


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.manual_seed(0)
    shards, pad_id = real_sequences(args.data, Path(args.model), args.max_length)
    sequences = first_rows(shards, args.rows)
    lengths = [len(p) + len(c) for p, c in zip(*sequences[:2])]
    print(f"{len(lengths)} sequences, {sum(lengths)} tokens, lengths {min(lengths)}-{max(lengths)}; fp32 layouts, then float64", file=sys.stderr)
    runs = fp32_layouts(args.model, sequences, pad_id, args.batch_tokens)
    t = time.perf_counter()
    reference = exact(args.model, *sequences[:2], pad_id)
    print(f"  float64: {time.perf_counter() - t:.1f} s", file=sys.stderr)
    largest = max(float(np.abs(r).max(initial=0)) for r in reference)
    rows = table(lengths, runs, reference)
    ulp = float(np.spacing(np.float32(largest)))
    print(f"largest |log p| {largest:.2f} (one fp32 ulp there: {ulp:.2e}); per-token max |Δ|:")
    names = list(rows[0])
    print(" | ".join(names))
    for r in rows:
        print(" | ".join(f"{r[k]:.2e}" if isinstance(r[k], float) else str(r[k]) for k in names))
    if args.json_out:
        args.json_out.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "largest": largest, "ulp": ulp, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
