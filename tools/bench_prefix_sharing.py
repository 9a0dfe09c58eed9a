"""Prefix-shared vs plain reference scoring (issue 13), side by side in one process.

Both layouts score the same sequences with the same model through
`kto.formats.compute.scoring.score_sequences` (share_prefixes=True / False), taking turns, `--repeats`
times; the fastest pass of each is kept and the median is printed too (on a shared machine
other processes only ever slow a pass down). Per layout: real tokens/s (the tokens the
sequences represent, prompt counted once per sequence, over wall time), tokens computed, peak
memory, and the largest per-token difference from the plain layout.

Mixes (`--mixes`, comma list):
  feedback   examples/feedback.jsonl through kto-precompute's own tokenizing and pairing, with
             SmolLM2's chat template and the real SmolLM2-135M-Instruct (`--model`, a HF dir:
             examples/smollm2_to_hf.py makes one). Also times kto-precompute end to end
             (`run_precompute`, the CLI's code) with --prefix-sharing and --no-prefix-sharing.
  paired     a chosen/rejected dataset with long prompts (60-85 % of each sequence), through
             kto-precompute's reader (one desirable and one undesirable row per pair).
  synthetic  the 32-max_len length mix of tools/bench_precompute.py (prompts 5-50 % of each
             sequence): every row shares only its own prompt between main and KL sequence.
paired and synthetic use a random-init model of `--shape` and a word-level tokenizer.

    python tools/bench_prefix_sharing.py --model demo/smollm2              # CPU, ~10 min shared
    python tools/bench_prefix_sharing.py --mixes paired,synthetic --shape llama-3.2-1b  # GPU
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _bench_common as C

from kto.formats.compute.logprob import CompletionLogps
from kto.formats.compute.numerics import Numerics, parse_numerics
from kto.formats.compute.scoring import plan_scoring, score_sequences

REPO = Path(__file__).resolve().parents[1]


def parse_args(argv=None) -> argparse.Namespace:
    cuda = torch.cuda.is_available()
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mixes", default="feedback,paired,synthetic")
    p.add_argument("--model", default=None, help="HF dir of SmolLM2-135M-Instruct (mix feedback)")
    p.add_argument("--shape", choices=sorted(C.SHAPES), default="llama-3.2-1b" if cuda else "smollm2-135m")
    p.add_argument("--rows", type=int, default=2000 if cuda else 16, help="rows of the paired and synthetic mixes")
    p.add_argument("--max-len", type=int, default=2048)
    p.add_argument("--batch-tokens", type=int, default=16384 if cuda else 4096)
    p.add_argument("--numerics", default="amp-bf16" if cuda else "fp32")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--end-to-end-repeats", type=int, default=2, help="kto-precompute runs per layout (mix feedback)")
    p.add_argument(
        "--gather-cost",
        type=float,
        default=None,
        help="override shared_prefix.GATHER_COST, the constant of the rule that decides which packs pay off (0: pack every group)",
    )
    p.add_argument("--json-out", type=Path, default=None)
    return p.parse_args(argv)


def pipeline_sequences(data: Path, tokenizer, max_length: int, max_prompt_length: int, seed: int = 0):
    """Main and KL sequences as kto-precompute forms them for one shard: its tokenizing
    (`tokenize_example`, prompts cut there), then each row's prompt with a seeded partner's completion cut to fit
    (the same shape as its KL pairing: a derangement; the partner choice itself may differ)."""
    from kto.precompute.inputs.examples import iter_examples
    from kto.precompute.tokenize import Truncation, leading_bos_id, tokenize_example

    rule = Truncation(max_length, max_prompt_length, leading_bos_id(tokenizer))
    rows = [r for r in (tokenize_example(ex, tokenizer, truncation=rule) for ex in iter_examples([data])) if r is not None]
    partner = C.kl_partners(len(rows), seed)
    cut = [rule.apply(r.prompt_ids, r.completion_ids, rows[partner[i]].completion_ids) for i, r in enumerate(rows)]
    prompts = [c.prompt_ids.tolist() for c in cut]
    completions = [c.completion_ids.tolist() for c in cut]
    kl = [c.kl_completion_ids.tolist() for c in cut]
    keys = [(r.example.id, 0) for r in rows] + [(r.example.id, 1) for r in rows]
    return prompts * 2, completions + kl, keys


def feedback_sequences(model_dir: Path, max_length: int = 256):
    """examples/feedback.jsonl with SmolLM2's chat template (the quickstart's --max-length 256)."""
    from kto.formats.compute.models import load_tokenizer, resolve_source

    tok = load_tokenizer(resolve_source(str(model_dir)))
    return pipeline_sequences(REPO / "examples" / "feedback.jsonl", tok, max_length, max_length // 2), tok.pad_token_id


def paired_sequences(rows: int, max_len: int, vocab_size: int, seed: int = 0):
    """rows/2 prompts, each with a chosen and a rejected answer: prompt 60-85 % of a sequence,
    read as a paired file (one desirable and one undesirable row per pair)."""
    rng = random.Random(seed)
    words = lambda n: " ".join(f"w{rng.randrange(C.FIRST_WORD_ID, vocab_size)}" for _ in range(max(n, 1)))
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "paired.jsonl"
        with open(data, "w") as f:
            for _ in range(rows // 2):
                total = int(np.exp(rng.uniform(np.log(256), np.log(max_len))))
                prompt = int(total * rng.uniform(0.6, 0.85))
                f.write(
                    json.dumps(
                        {
                            "prompt": words(prompt - 1),
                            "chosen": " " + words(total - prompt - 1),
                            "rejected": " " + words(int((total - prompt) * rng.uniform(0.5, 1.5)) - 1),
                        }
                    )
                    + "\n"
                )
        sequences = pipeline_sequences(data, C.build_tokenizer(vocab_size), max_len, max_len * 7 // 8, seed)
    return sequences, C.PAD_ID


def compare(lm, sequences, pad_id: int, *, batch_tokens: int, device, numerics: Numerics, repeats: int) -> dict:
    """Both layouts over the same sequences, taking turns; best and median wall time of each."""
    prompts, completions, keys = sequences
    scorer = CompletionLogps(lm)
    plans = {share: plan_scoring(prompts, completions, keys, share_prefixes=share) for share in (False, True)}
    times: dict[bool, list[float]] = {False: [], True: []}
    peaks: dict[bool, dict] = {}
    logps: dict[bool, list] = {}
    kw = dict(batch_tokens=batch_tokens, pad_id=pad_id, device=device)
    with numerics.context(device.type):
        # Warm up both (kernel choice, allocator growth) on the longest sequences.
        longest = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]) - len(completions[i]))[:4]
        for share in (False, True):
            score_sequences(
                scorer,
                [prompts[i] for i in longest] * 2,
                [completions[i] for i in longest] * 2,
                [(k, keys[i]) for k in (0, 1) for i in longest],
                share_prefixes=share,
                **kw,
            )
        for _ in range(repeats):
            for share in (False, True):
                mem = C.PeakMemory(device).reset()
                with C.Timer(device) as t:
                    scored = score_sequences(scorer, prompts, completions, keys, share_prefixes=share, **kw)
                times[share].append(t.seconds)
                report = mem.report()
                if share not in peaks or report["peak_gb"] > peaks[share]["peak_gb"]:
                    peaks[share] = report
                logps[share] = scored.token_logps
    represented = plans[False].represented_tokens
    rows = []
    for share in (False, True):
        best = min(times[share])
        rows.append(
            {
                "layout": "prefix-shared" if share else "plain",
                "sequences": len(prompts),
                "represented_tokens": represented,
                "computed_tokens": plans[share].computed_tokens,
                "packs": len(plans[share].packs),
                "best_s": best,
                "median_s": statistics.median(times[share]),
                "tokens_per_s": represented / best,
                **peaks[share],
            }
        )
    diff = max(float(np.abs(a - b).max(initial=0.0)) for a, b in zip(logps[True], logps[False]))
    plain, shared = rows
    return {
        "rows": rows,
        "max_abs_token_diff": diff,
        "tokens_per_s_ratio": shared["tokens_per_s"] / plain["tokens_per_s"],
        "median_time_ratio": shared["median_s"] / plain["median_s"],
        "peak_memory_ratio": shared["peak_gb"] / plain["peak_gb"],
        "added_memory_ratio": shared["added_gb"] / plain["added_gb"] if plain["added_gb"] > 0 else None,
        "computed_fraction": shared["computed_tokens"] / represented,
    }


def end_to_end(model_dir: Path, repeats: int) -> dict:
    """kto-precompute on examples/feedback.jsonl (the quickstart's flags), both layouts, taking turns."""
    from accelerate.state import AcceleratorState

    from kto.precompute.config import PrecomputeConfig
    from kto.precompute.pipeline import run_precompute

    times: dict[bool, list[float]] = {False: [], True: []}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(repeats):
            for share in (False, True):
                cfg = PrecomputeConfig(
                    data=(REPO / "examples" / "feedback.jsonl",),
                    model=str(model_dir),
                    out=Path(tmp) / f"c{share}",
                    max_length=256,
                    eval_fraction=0.2,
                    batch_tokens=4096,
                    overwrite=True,
                    prefix_sharing=share,
                )
                AcceleratorState._reset_state(reset_partial_state=True)
                for p in sorted(cfg.out.glob("**/*.arrow")) + sorted(cfg.out.glob("**/manifest.json")):
                    p.unlink()  # a fresh run each time (no resume), the model load included
                t0 = time.perf_counter()
                run_precompute(cfg)
                times[share].append(time.perf_counter() - t0)
    plain, shared = min(times[False]), min(times[True])
    return {
        "plain_s": times[False],
        "shared_s": times[True],
        "best_wall_time_ratio": shared / plain,
        "median_wall_time_ratio": statistics.median(times[True]) / statistics.median(times[False]),
        "wall_time_reduction": 1 - shared / plain,
    }


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.gather_cost is not None:
        from kto.formats.compute import shared_prefix

        shared_prefix.GATHER_COST = args.gather_cost
    device = C.default_device()
    numerics = parse_numerics(args.numerics, device)
    results: dict = {"args": {k: str(v) for k, v in vars(args).items()}}
    for mix in args.mixes.split(","):
        t0 = time.perf_counter()
        if mix == "feedback":
            if args.model is None:
                sys.exit("--model: a HF dir of SmolLM2-135M-Instruct (python examples/smollm2_to_hf.py DIR) for mix feedback")
            from kto.formats.compute.models import load_causal_lm, resolve_source

            sequences, pad_id = feedback_sequences(Path(args.model))
            lm = load_causal_lm(resolve_source(args.model), dtype=numerics.weights, attn_implementation="sdpa").to(device).eval()
        else:
            lm = C.build_llama(args.shape, numerics.weights, device).eval()
            if mix == "paired":
                sequences, pad_id = paired_sequences(args.rows, args.max_len, lm.config.vocab_size)
            else:
                mix_rows = C.length_mix(args.rows, args.max_len, seed=0)
                sequences, pad_id = C.mix_sequences(mix_rows, lm.config.vocab_size, args.max_len, seed=0), C.PAD_ID
        results[mix] = compare(lm, sequences, pad_id, batch_tokens=args.batch_tokens, device=device, numerics=numerics, repeats=args.repeats)
        del lm
        C.free_memory()
        if mix == "feedback" and args.end_to_end_repeats > 0:
            results["feedback_end_to_end"] = end_to_end(Path(args.model), args.end_to_end_repeats)
        # Print and save each mix as soon as it is measured: the slow mixes may not finish on a busy machine.
        results["versions"] = info = C.versions(device)
        print(f"\n{C.describe(info)} | {numerics.name} | batch budget {args.batch_tokens} tokens | repeats {args.repeats} | {time.perf_counter() - t0:.0f} s")
        r = results[mix]
        C.print_table(
            f"{mix}: tokens/s ratio {r['tokens_per_s_ratio']:.2f} (best), time ratio {r['median_time_ratio']:.2f} (median), "
            f"peak memory ratio {r['peak_memory_ratio']:.2f}, computed {r['computed_fraction']:.1%} of represented, "
            f"max |Δ log p| {r['max_abs_token_diff']:.2e}",
            r["rows"],
        )
        if mix == "feedback" and "feedback_end_to_end" in results:
            e = results["feedback_end_to_end"]
            print(
                f"\nkto-precompute end to end on examples/feedback.jsonl: wall time ratio shared/plain {e['best_wall_time_ratio']:.2f} "
                f"(best), {e['median_wall_time_ratio']:.2f} (median); plain {e['plain_s']}, shared {e['shared_s']}"
            )
        sys.stdout.flush()
        if args.json_out:
            args.json_out.write_text(json.dumps(results, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
