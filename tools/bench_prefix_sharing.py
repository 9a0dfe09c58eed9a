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
  kto_en_demo, dpo_en_demo
             the real LLaMA-Factory rows of ../shared/data (`--data-dir`, or $KTO_SHARED_DATA):
             unpaired `messages` + `label`, and ShareGPT `conversations` + `chosen`/`rejected`,
             at --max-length 1024 with the real SmolLM2 (`--model`). First the exact layout
             accounting of the whole file (kto-precompute's own staging, pairing and plan, no
             scoring: what its manifest counts), then both layouts timed on the first
             `--data-rows` rows, and kto-precompute end to end on those rows.
Every timing also records the process CPU time: on a machine shared with other work, wall time
mostly measures the others, CPU time what this process did. End to end also counts each run's
minor page faults, and checks each round's two caches (`cache_agreement`: the same rows, ids
and flags, log-probs within rounding) and how far they differ per token (`--keep-caches DIR`
keeps the last round's two).

    python tools/bench_prefix_sharing.py --model demo/smollm2              # CPU, ~10 min shared
    python tools/bench_prefix_sharing.py --mixes paired,synthetic --shape llama-3.2-1b  # GPU

kto-train's step with and without prefix sharing (issue 21; `--train-cache`,
`--train-accounting`) is tools/bench_train_sharing.py.

    python tools/bench_prefix_sharing.py --model /work/bench/smollm2 --mixes kto_en_demo,dpo_en_demo --data-rows 6
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _bench_common as C
from _cache_agreement import cache_agreement

from kto.formats.compute.logprob import CompletionLogps
from kto.formats.compute.numerics import Numerics, parse_numerics
from kto.formats.compute.scoring import plan_scoring, score_sequences

REPO = Path(__file__).resolve().parents[1]
REAL_MIXES = ("kto_en_demo", "dpo_en_demo")


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
    p.add_argument("--repeats", type=int, default=3, help="in-process passes per layout (0 on a real-data mix: end to end only)")
    p.add_argument("--end-to-end-repeats", type=int, default=2, help="kto-precompute runs per layout (mix feedback)")
    p.add_argument(
        "--gather-cost",
        type=float,
        default=None,
        help="override shared_prefix.GATHER_COST, the constant of the rule that decides which packs pay off (0: pack every group)",
    )
    p.add_argument(
        "--data-dir",
        type=Path,
        default=Path(os.environ.get("KTO_SHARED_DATA", REPO.parent / "shared" / "data")),
        help="../shared/data (mixes kto_en_demo, dpo_en_demo)",
    )
    p.add_argument("--data-rows", type=int, default=6, help="rows of a real-data file timed (the accounting covers the whole file)")
    p.add_argument("--json-out", type=Path, default=None)
    p.add_argument("--keep-caches", type=Path, default=None, help="copy the last end-to-end round's two caches here")
    return p.parse_args(argv)


def feedback_sequences(model_dir: Path, max_length: int = 256):
    """examples/feedback.jsonl with SmolLM2's chat template (the quickstart's --max-length 256)."""
    from kto.formats.compute.loading import load_tokenizer
    from kto.formats.compute.sources import resolve_source

    tok = load_tokenizer(resolve_source(str(model_dir)))
    return C.pipeline_sequences(REPO / "examples" / "feedback.jsonl", tok, max_length, max_length // 2), tok.pad_token_id


def real_sequences(data: Path, model_dir: Path, max_length: int = 1024) -> tuple[list[tuple[list, list, list]], int]:
    """Each shard's sequences exactly as kto-precompute scores them (its staging, pairing and
    cutting; precompute/pipeline.py's `_shard_sequences`), without scoring: the layout accounting
    below is then the manifest's, and the timed sequences are the CLI's."""
    from accelerate import PartialState

    from kto.formats.cache import ArrowFile
    from kto.formats.compute.identity import tokenizer_identity
    from kto.formats.compute.loading import load_tokenizer
    from kto.formats.compute.sources import resolve_source
    from kto.precompute.config import PrecomputeConfig
    from kto.precompute.pipeline import _shard_sequences, content_of, shard_slices, stage_rows
    from kto.precompute.plan import build_splits, shard_values
    from kto.precompute.templates import ChatTemplate
    from kto.precompute.tokenize import leading_bos_id

    with tempfile.TemporaryDirectory() as tmp:
        cfg = PrecomputeConfig(data=(data,), model=str(model_dir), out=Path(tmp) / "cache", max_length=max_length)
        source = resolve_source(cfg.model)
        tok = load_tokenizer(source)
        content = content_of(cfg, source, tokenizer_identity(tok), parse_numerics("fp32", torch.device("cpu")), "train")
        cfg.out.mkdir()
        staged = stage_rows(cfg, tok, ChatTemplate(), content, PartialState(cpu=True))
        (split,) = build_splits(cfg, staged, leading_bos_id(tok))
        shards = []
        for a, b in shard_slices(len(split.rows), cfg.rows_per_shard):
            with ArrowFile(staged) as reader:
                shards.append(_shard_sequences(shard_values(reader, split.rows[a:b], split.partners[a:b], split.truncation)))
    return shards, tok.pad_token_id


def accounting(shards) -> dict:
    """Tokens represented and computed with prefix sharing, planned per shard as the manifest counts them."""
    plans = [plan_scoring(*seqs, share_prefixes=True) for seqs in shards]
    represented, computed = sum(p.represented_tokens for p in plans), sum(p.computed_tokens for p in plans)
    return {
        "sequences": sum(len(seqs[0]) for seqs in shards),
        "represented_tokens": represented,
        "computed_tokens": computed,
        "packs": sum(len(p.packs) for p in plans),
        "saved_fraction": 1 - computed / represented,
    }


def first_rows(data: Path, n: int, out_dir: Path) -> Path:
    """The first n records of a JSON-array file, as a file of the same name in out_dir."""
    out = out_dir / data.name
    out.write_text(json.dumps(json.loads(data.read_text())[:n]))
    return out


def compare(lm, sequences, pad_id: int, *, batch_tokens: int, device, numerics: Numerics, repeats: int) -> dict:
    """Both layouts over the same sequences, taking turns; best and median wall time of each."""
    prompts, completions, keys = sequences
    scorer = CompletionLogps(lm)
    plans = {share: plan_scoring(prompts, completions, keys, share_prefixes=share) for share in (False, True)}
    times: dict[bool, list[float]] = {False: [], True: []}
    cpu: dict[bool, list[float]] = {False: [], True: []}
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
                cpu0 = time.process_time()
                with C.Timer(device) as t:
                    scored = score_sequences(scorer, prompts, completions, keys, share_prefixes=share, **kw)
                times[share].append(t.seconds)
                cpu[share].append(time.process_time() - cpu0)
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
                "best_cpu_s": min(cpu[share]),
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
        "cpu_time_ratio": shared["best_cpu_s"] / plain["best_cpu_s"],
        "peak_memory_ratio": shared["peak_gb"] / plain["peak_gb"],
        "added_memory_ratio": shared["added_gb"] / plain["added_gb"] if plain["added_gb"] > 0 else None,
        "computed_fraction": shared["computed_tokens"] / represented,
    }


def end_to_end(
    model_dir: Path,
    repeats: int,
    data: Path | None = None,
    max_length: int = 256,
    eval_fraction: float = 0.2,
    keep_caches: Path | None = None,
    batch_tokens: int = 4096,
) -> dict:
    """The `kto-precompute` command (this interpreter's `kto.precompute.cli`) on `data` (default examples/feedback.jsonl with the
    quickstart's flags), --prefix-sharing and --no-prefix-sharing taking turns, the order
    alternating each round; a fresh process and --out each time, so interpreter start-up, imports,
    model load, tokenizing and writing are counted as a user pays them. Wall time and the child's
    CPU time (all its threads)."""
    import resource
    import subprocess

    data = data or REPO / "examples" / "feedback.jsonl"
    times: dict[bool, list[float]] = {False: [], True: []}
    cpu: dict[bool, list[float]] = {False: [], True: []}
    faults: dict[bool, list[int]] = {False: [], True: []}
    agreement: list[dict] = []
    if keep_caches is not None:
        for share in ("plain", "shared"):
            if (keep_caches / f"{data.stem}-{share}").exists():
                sys.exit(f"--keep-caches: {keep_caches / f'{data.stem}-{share}'} exists")
    loads = [os.getloadavg()[0]]
    with tempfile.TemporaryDirectory() as tmp:
        for round_ in range(repeats):
            for share in (False, True) if round_ % 2 == 0 else (True, False):
                out = Path(tmp) / f"cache-{round_}-{share}"
                flags = ["--prefix-sharing" if share else "--no-prefix-sharing", "--eval-fraction", str(eval_fraction)]
                command = [
                    sys.executable,
                    "-m",
                    "kto.precompute.cli",
                    "--data",
                    str(data),
                    "--model",
                    str(model_dir),
                    "--out",
                    str(out),
                    "--max-length",
                    str(max_length),
                    "--batch-tokens",
                    str(batch_tokens),
                    *flags,
                ]
                before = resource.getrusage(resource.RUSAGE_CHILDREN)
                t0 = time.perf_counter()
                done = subprocess.run(command, capture_output=True, text=True)
                times[share].append(time.perf_counter() - t0)
                after = resource.getrusage(resource.RUSAGE_CHILDREN)
                if done.returncode != 0:
                    sys.exit(f"{' '.join(command)} failed:\n{done.stderr[-2000:]}")
                cpu[share].append(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime)
                faults[share].append(after.ru_minflt - before.ru_minflt)
                loads.append(os.getloadavg()[0])
                print(
                    f"  kto-precompute {'shared' if share else 'plain '}: {times[share][-1]:.1f} s wall, {cpu[share][-1]:.1f} s CPU, "
                    f"{faults[share][-1] / 1e6:.2f} M minor page faults, load {loads[-1]:.2f}",
                    flush=True,
                )
            if keep_caches is not None and round_ == repeats - 1:  # kept first: a failed check below is when they are wanted
                import shutil

                for share in (False, True):
                    shutil.copytree(Path(tmp) / f"cache-{round_}-{share}", keep_caches / f"{data.stem}-{'shared' if share else 'plain'}")
            # A faster layout that scored something else would be worse than a slow one: each
            # round's two caches must hold the same tokens and agree per token.
            agreement.append(cache_agreement(Path(tmp) / f"cache-{round_}-False", Path(tmp) / f"cache-{round_}-True"))
            print(f"  caches agree: {agreement[-1]}", flush=True)
    plain, shared = min(times[False]), min(times[True])
    return {
        "agreement": agreement,
        "plain_minor_faults": faults[False],
        "shared_minor_faults": faults[True],
        "data": data.name,
        "plain_s": times[False],
        "shared_s": times[True],
        "plain_cpu_s": cpu[False],
        "shared_cpu_s": cpu[True],
        "best_wall_time_ratio": shared / plain,
        "median_wall_time_ratio": statistics.median(times[True]) / statistics.median(times[False]),
        "best_cpu_time_ratio": min(cpu[True]) / min(cpu[False]),
        "wall_time_reduction": 1 - shared / plain,
        "load_average": (min(loads), max(loads)),
    }


def real_mix(args, mix: str, device, numerics: Numerics) -> dict:
    """A ../shared/data file: the whole file's layout accounting, then both layouts timed on
    its first --data-rows rows, scoring and kto-precompute end to end."""
    from kto.formats.compute.loading import load_causal_lm
    from kto.formats.compute.sources import resolve_source

    if args.model is None:
        sys.exit(f"--model: a HF dir of SmolLM2-135M-Instruct for mix {mix}")
    data = args.data_dir / f"{mix}.json"
    if not data.is_file():
        sys.exit(f"{data}: real data absent (--data-dir, or $KTO_SHARED_DATA)")
    result = {"accounting": accounting(real_sequences(data, Path(args.model))[0])}
    with tempfile.TemporaryDirectory() as tmp:
        subset = first_rows(data, args.data_rows, Path(tmp))
        shards, pad_id = real_sequences(subset, Path(args.model))
        if args.repeats > 0:  # 0: kto-precompute end to end only
            lm = load_causal_lm(resolve_source(args.model), dtype=numerics.weights, attn_implementation="sdpa").to(device).eval()
            (sequences,) = shards
            result.update(compare(lm, sequences, pad_id, batch_tokens=args.batch_tokens, device=device, numerics=numerics, repeats=args.repeats))
            del lm
            C.free_memory()
        if args.end_to_end_repeats > 0:
            result["end_to_end"] = end_to_end(
                Path(args.model),
                args.end_to_end_repeats,
                subset,
                max_length=1024,
                eval_fraction=0.0,
                keep_caches=args.keep_caches,
                batch_tokens=args.batch_tokens,
            )
    result["rows_timed"] = args.data_rows
    return result


def synthetic_mix(args, mix: str, device, numerics: Numerics) -> dict:
    """feedback (the real SmolLM2), paired or synthetic (a random-init model of --shape)."""
    if mix == "feedback":
        if args.model is None:
            sys.exit("--model: a HF dir of SmolLM2-135M-Instruct (python examples/smollm2_to_hf.py DIR) for mix feedback")
        from kto.formats.compute.loading import load_causal_lm
        from kto.formats.compute.sources import resolve_source

        sequences, pad_id = feedback_sequences(Path(args.model))
        lm = load_causal_lm(resolve_source(args.model), dtype=numerics.weights, attn_implementation="sdpa").to(device).eval()
    else:
        lm = C.build_llama(args.shape, numerics.weights, device).eval()
        if mix == "paired":
            sequences, pad_id = C.paired_sequences(args.rows, args.max_len, lm.config.vocab_size)
        else:
            mix_rows = C.length_mix(args.rows, args.max_len, seed=0)
            sequences, pad_id = C.mix_sequences(mix_rows, lm.config.vocab_size, args.max_len, seed=0), C.PAD_ID
    result = compare(lm, sequences, pad_id, batch_tokens=args.batch_tokens, device=device, numerics=numerics, repeats=args.repeats)
    del lm
    C.free_memory()
    if mix == "feedback" and args.end_to_end_repeats > 0:
        result["end_to_end"] = end_to_end(Path(args.model), args.end_to_end_repeats, keep_caches=args.keep_caches, batch_tokens=args.batch_tokens)
    return result


def report(mix: str, r: dict) -> None:
    if "accounting" in r:
        a = r["accounting"]
        print(
            f"\n{mix}: exact layout accounting of the whole file: {a['computed_tokens']} of {a['represented_tokens']} represented tokens computed, "
            f"{a['saved_fraction']:.1%} saved, {a['packs']} packs over {a['sequences']} sequences; timed below: its first {r['rows_timed']} rows"
        )
    if "rows" in r:  # absent with --repeats 0 (kto-precompute end to end only)
        C.print_table(
            f"{mix}: tokens/s ratio {r['tokens_per_s_ratio']:.2f} (best), time ratio {r['median_time_ratio']:.2f} (median), CPU time ratio {r['cpu_time_ratio']:.2f} (best), "
            f"peak memory ratio {r['peak_memory_ratio']:.2f}, computed {r['computed_fraction']:.1%} of represented, "
            f"max |Δ log p| {r['max_abs_token_diff']:.2e}",
            r["rows"],
        )
    if "end_to_end" in r:
        e = r["end_to_end"]
        print(
            f"\nkto-precompute end to end on {e['data']}: wall time ratio shared/plain {e['best_wall_time_ratio']:.2f} (best), "
            f"{e['median_wall_time_ratio']:.2f} (median), CPU time ratio {e['best_cpu_time_ratio']:.2f} (best); plain {e['plain_s']} s "
            f"(CPU {e['plain_cpu_s']}), shared {e['shared_s']} s (CPU {e['shared_cpu_s']}); load {e['load_average']}"
        )


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.gather_cost is not None:
        from kto.formats.compute import shared_prefix

        shared_prefix.GATHER_COST = args.gather_cost
    device = C.default_device()
    numerics = parse_numerics(args.numerics, device)
    results: dict = {"args": {k: str(v) for k, v in vars(args).items()}}
    for mix in [m for m in args.mixes.split(",") if m not in ("", "none")]:
        t0 = time.perf_counter()
        results[mix] = (real_mix if mix in REAL_MIXES else synthetic_mix)(args, mix, device, numerics)
        # Print and save each mix as soon as it is measured: the slow mixes may not finish on a busy machine.
        results["versions"] = info = C.versions(device)
        print(
            f"\n{C.describe(info)} | {numerics.name} | batch budget {args.batch_tokens} tokens | repeats {args.repeats} | "
            f"{time.perf_counter() - t0:.0f} s | load {os.getloadavg()}"
        )
        report(mix, results[mix])
        sys.stdout.flush()
        if args.json_out:
            args.json_out.write_text(json.dumps(results, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
