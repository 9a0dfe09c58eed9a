"""Reference scoring throughput: kto's chunked log-prob path vs the naive full-vocab path (issue 2).

Both paths score the same sequences in the same token-budget batches
(`kto.formats.compute.scoring.token_budget_batches`) with the same random-init model:

  (a) kto:   `kto.formats.compute.scoring.score_sequences` with `kto.formats.compute.logprob.CompletionLogps`:
             decoder forward, then the LM head only at completion positions, chunked, fp32
             logsumexp (no batch × length × vocab tensor);
  (b) naive: the HF model's full-vocab logits, `.float()`, log_softmax over the vocabulary, gather
             the next token, mask to the completion and sum (what most trainers do);
Path (a) runs without a padding mask (right-padded batches need none under the causal mask);
the naive path passes the padding mask, as most trainers do.

Data: a realistic length mix (`_bench_common.length_mix`, 32–max_len tokens), two sequences per
row (main and KL, as kto-precompute scores them). Printed per path: real (non-pad) tokens/s, MFU
against a matmul ceiling measured in the same run (FLOPs counted in
`_bench_common.scoring_flops`: only what a log-prob pass needs), padding fraction, peak memory,
and the largest difference between the two paths' sequence sums.

    python tools/bench_precompute.py                                  # CPU: small, ~1-2 min
    python tools/bench_precompute.py --shape llama-3.2-1b --rows 2000 # GPU
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _bench_common as C

from kto.formats.compute.logprob import CompletionLogps, make_token_batch
from kto.formats.compute.numerics import Numerics, parse_numerics
from kto.formats.compute.scoring import padding_fraction, score_sequences, token_budget_batches


def parse_args(argv=None) -> argparse.Namespace:
    cuda = torch.cuda.is_available()
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shape", choices=sorted(C.SHAPES), default="llama-3.2-1b" if cuda else "smollm2-135m")
    p.add_argument("--rows", type=int, default=2000 if cuda else 10, help="rows; 2 sequences each")
    p.add_argument("--max-len", type=int, default=2048 if cuda else 512)
    p.add_argument("--batch-tokens", type=int, default=16384 if cuda else 2048, help="padded tokens per batch")
    p.add_argument("--chunk-size", type=int, default=1024, help="LM-head rows per chunk (kto path)")
    p.add_argument("--device", default="cuda" if cuda else "cpu")
    p.add_argument(
        "--numerics",
        default="bf16" if cuda else "fp32",
        help="kto.formats.compute.numerics name: bf16 (the issue's baseline), amp-bf16 (kto-precompute's CUDA default), fp32",
    )
    p.add_argument("--paths", default="kto,naive", help="comma list of kto, naive")
    p.add_argument("--repeats", type=int, default=1 if cuda else 2, help="passes per path, taking turns; the fastest is kept")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json-out", type=Path, default=None)
    return p.parse_args(argv)


@torch.inference_mode()
def naive_score(lm, prompts, completions, keys, *, batch_tokens: int, pad_id: int, device) -> list[float]:
    """Sequence sums from full-vocab logits: logits.float() → log_softmax → gather → masked sum."""
    lengths = [len(p) + len(c) for p, c in zip(prompts, completions)]
    sums = [0.0] * len(lengths)
    for idx in token_budget_batches(lengths, keys, batch_tokens):
        b = make_token_batch([prompts[i] for i in idx], [completions[i] for i in idx], pad_id).to(device)
        logits = lm(input_ids=b.input_ids, attention_mask=b.attention_mask, use_cache=False).logits
        logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
        tok = logp.gather(-1, b.input_ids[:, 1:, None]).squeeze(-1)
        row_sums = (tok.double() * b.score_mask[:, 1:]).sum(1).cpu().tolist()
        for i, s in zip(idx, row_sums):
            sums[i] = s
    return sums


def kto_score(lm, prompts, completions, keys, *, batch_tokens: int, pad_id: int, device, chunk_size: int = 1024) -> list[float]:
    scorer = CompletionLogps(lm, chunk_size=chunk_size)
    scored = score_sequences(scorer, prompts, completions, keys, batch_tokens=batch_tokens, pad_id=pad_id, device=device)
    return scored.sums.tolist()


PATHS = {"kto": kto_score, "naive": naive_score}


def warmup_subset(prompts, completions, keys, batch_tokens: int):
    """The longest sequences that fill one batch: first-call costs (kernel choice, allocator
    growth to the largest batch) are paid before timing starts."""
    lengths = [len(p) + len(c) for p, c in zip(prompts, completions)]
    last = token_budget_batches(lengths, keys, batch_tokens)[-1]
    return [prompts[i] for i in last], [completions[i] for i in last], [keys[i] for i in last]


def compare_paths(
    lm,
    prompts,
    completions,
    keys,
    *,
    batch_tokens: int,
    device,
    ceiling: float,
    numerics: Numerics,
    paths=("kto", "naive"),
    chunk_size: int = 1024,
    repeats: int = 1,
) -> list[dict]:
    """Time each path over all sequences after a one-batch warmup; one result dict per path.

    `lm` holds weights in numerics.weights; every path runs inside numerics.context (autocast
    for amp-*), as kto-precompute does. With repeats > 1 the paths take turns and each keeps
    its fastest pass (on a shared CPU other processes only ever slow a pass down). A path that
    runs out of GPU memory is reported as such instead of stopping the benchmark.
    """
    lengths = [len(p) + len(c) for p, c in zip(prompts, completions)]
    scored = sum(len(c) for c in completions)
    flops = C.scoring_flops(lm.config, C.param_counts(lm)["non_embedding"], lengths, scored)
    batches = token_budget_batches(lengths, keys, batch_tokens)
    common = {
        "numerics": numerics.name,
        "sequences": len(lengths),
        "real_tokens": sum(lengths),
        "batches": len(batches),
        "padding_fraction": padding_fraction(lengths, batches),
    }
    best: dict[str, dict] = {}
    sums: dict[str, list[float]] = {}
    for _ in range(repeats):
        for name in paths:
            if "error" in best.get(name, {}):
                continue
            try:
                seconds, sums[name], memory = _time_path(
                    name, lm, prompts, completions, keys, batch_tokens=batch_tokens, device=device, numerics=numerics, chunk_size=chunk_size
                )
            except torch.OutOfMemoryError:
                best[name] = {"path": name, **common, "error": "out of memory"}
                C.free_memory()
                continue
            if name not in best or seconds < best[name]["seconds"]:
                best[name] = {
                    "path": name,
                    **common,
                    "seconds": seconds,
                    "tokens_per_s": common["real_tokens"] / seconds,
                    "mfu": flops / seconds / ceiling,
                    **memory,
                }
    results = [best[name] for name in dict.fromkeys(paths)]
    if "naive" in sums:  # every path against the naive one
        for r in results:
            if r["path"] in sums:
                r["max_abs_sum_diff"] = max(abs(a - b) for a, b in zip(sums[r["path"]], sums["naive"]))
    return results


def _time_path(name: str, lm, prompts, completions, keys, *, batch_tokens: int, device, numerics: Numerics, chunk_size: int):
    """(seconds, sequence sums, peak memory) of one pass of one path, after a one-batch warmup."""
    kw = dict(batch_tokens=batch_tokens, pad_id=C.PAD_ID, device=device)
    if name.startswith("kto"):
        kw["chunk_size"] = chunk_size
    mem = C.PeakMemory(device)
    with numerics.context(device.type):
        PATHS[name](lm, *warmup_subset(prompts, completions, keys, batch_tokens), **kw)
        mem.reset()
        with C.Timer(device) as t:
            sums = PATHS[name](lm, prompts, completions, keys, **kw)
    return t.seconds, sums, mem.report()


def scale_padding(rows: int = 4000, max_len: int = 2048, budget: int = 16384) -> float:
    """Padding fraction of token-budget batching on the same length mix at GPU scale (lengths only)."""
    lengths, keys = C.mix_lengths(C.length_mix(rows, max_len), max_len)
    return padding_fraction(lengths, token_budget_batches(lengths, keys, budget))


def main(argv=None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device)
    numerics = parse_numerics(args.numerics, device)
    ceiling = C.matmul_ceiling(device)
    lm = C.build_llama(args.shape, numerics.weights, device).eval()
    mix = C.length_mix(args.rows, args.max_len, args.seed)
    prompts, completions, keys = C.mix_sequences(mix, lm.config.vocab_size, args.max_len, args.seed)
    results = compare_paths(
        lm,
        prompts,
        completions,
        keys,
        batch_tokens=args.batch_tokens,
        device=device,
        ceiling=ceiling["flops_per_s"],
        numerics=numerics,
        paths=args.paths.split(","),
        chunk_size=args.chunk_size,
        repeats=args.repeats,
    )
    info = C.versions(device)  # after the run: the load average then covers it
    params = C.param_counts(lm)["total"] / 1e6
    print(
        f"{C.describe(info)} | shape {args.shape} ({params:.1f}M params, {numerics.name}) | "
        f"matmul ceiling {ceiling['flops_per_s'] / 1e12:.2f} TFLOP/s ({ceiling['dtype']}, n={ceiling['n']})"
    )
    C.print_table(
        f"{args.rows} rows × 2 sequences, lengths 32–{args.max_len}, batch budget {args.batch_tokens} tokens",
        [{k: v for k, v in r.items() if k not in ("sequences",)} for r in results],
    )
    by = {r["path"]: r for r in results if "peak_gb" in r}
    if "kto" in by and "naive" in by:
        print(
            f"\nkto / naive: peak memory {by['kto']['peak_gb'] / by['naive']['peak_gb']:.2f} (target <= 0.5), memory added "
            f"over the weights {by['kto']['added_gb'] / by['naive']['added_gb']:.2f}, tokens/s "
            f"{by['kto']['tokens_per_s'] / by['naive']['tokens_per_s']:.2f}"
        )
    at_scale = scale_padding()
    print(
        f"\ntoken-budget batching padding fraction (issue 5 target: < 10%): {results[0]['padding_fraction']:.1%} here; "
        f"{at_scale:.1%} for 4000 rows of 32-2048 tokens at a 16384-token budget (windows fill up with more rows)"
    )
    if args.json_out:
        args.json_out.write_text(
            json.dumps(
                {
                    "args": {k: str(v) for k, v in vars(args).items()},
                    "versions": info,
                    "matmul_ceiling": ceiling,
                    "results": results,
                    "padding_fraction_4000_rows_16384_budget": at_scale,
                },
                indent=2,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
