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
mostly measures the others, CPU time what this process did.

    python tools/bench_prefix_sharing.py --model demo/smollm2              # CPU, ~10 min shared
    python tools/bench_prefix_sharing.py --mixes paired,synthetic --shape llama-3.2-1b  # GPU

Training-step mode (`--train-cache DIR`, repeatable; issue 21): kto-train's step
(`kto.train.step.forward_backward`: the no-grad KL pass, then the policy forward/backward per
micro-batch) on the first `--train-steps` steps of kto-train's own epoch plan over a
kto-precompute cache, with prefix sharing in both passes and without (`--no-prefix-sharing`),
taking turns, `--repeats` times. Per layout: best and median time of those steps, tokens/saved
and padding/* per step as metrics.jsonl reports them; and the relative difference of the first
step's loss and gradient norm. The policy is `--model` (HF dir), loaded as kto-train loads it.
`--train-accounting 4x1,8x1,...` first counts, without a model, the exact tokens each pass saves
over one epoch at those shapes, with kto-train's plan and with the plan before prompt groups,
and how many rows have their KL partner in their own step.

    python tools/bench_prefix_sharing.py --mixes none --model /work/bench/smollm2 --train-cache CACHE
    python tools/bench_prefix_sharing.py --model /work/bench/smollm2 --mixes kto_en_demo,dpo_en_demo --data-rows 6
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
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
    p.add_argument("--repeats", type=int, default=3)
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
    p.add_argument("--train-cache", type=Path, action="append", default=[], help="training-step mode: a kto-precompute cache (repeatable)")
    p.add_argument("--train-batch-size", type=int, default=8, help="training-step mode: rows per micro-batch")
    p.add_argument("--train-grad-accum", type=int, default=1, help="training-step mode: micro-batches per step")
    p.add_argument("--train-steps", type=int, default=2, help="training-step mode: steps timed per pass")
    p.add_argument("--train-no-warmup", action="store_true", help="training-step mode: no untimed step first (a busy CPU)")
    p.add_argument("--train-threads", type=int, default=None, help="training-step mode: torch threads (1: CPU time is the work done)")
    p.add_argument(
        "--train-accounting",
        default="",
        help="training-step mode: comma list of BATCHxACCUM shapes (e.g. 4x1,8x1,16x1,8x4) whose exact tokens saved per pass over one epoch are "
        "counted (no model), with kto-train's plan and with the plan without prompt groups",
    )
    return p.parse_args(argv)


def pipeline_sequences(data: Path, tokenizer, max_length: int, max_prompt_length: int, seed: int = 0):
    """Main and KL sequences as kto-precompute forms them for one shard: its tokenizing
    (`tokenize_example`, prompts cut there), then each row's prompt with a seeded partner's completion cut to fit
    (the same shape as its KL pairing: a derangement; the partner choice itself may differ)."""
    from kto.precompute.inputs.records import iter_examples
    from kto.precompute.plan import Truncation
    from kto.precompute.tokenize import leading_bos_id, tokenize_example

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


def real_sequences(data: Path, model_dir: Path, max_length: int = 1024) -> tuple[list[tuple[list, list, list]], int]:
    """Each shard's sequences exactly as kto-precompute scores them (its staging, pairing and
    cutting; precompute/pipeline.py's `_shard_sequences`), without scoring: the layout accounting
    below is then the manifest's, and the timed sequences are the CLI's."""
    from accelerate import PartialState

    from kto.formats.cache import ArrowFile
    from kto.formats.compute.models import load_tokenizer, resolve_source, tokenizer_identity
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


def end_to_end(model_dir: Path, repeats: int, data: Path | None = None, max_length: int = 256, eval_fraction: float = 0.2) -> dict:
    """kto-precompute on `data` (default examples/feedback.jsonl with the quickstart's flags), both
    layouts, taking turns; wall and process CPU time (the CPU time of its threads)."""
    from accelerate.state import AcceleratorState

    from kto.precompute.config import PrecomputeConfig
    from kto.precompute.pipeline import run_precompute

    data = data or REPO / "examples" / "feedback.jsonl"
    times: dict[bool, list[float]] = {False: [], True: []}
    cpu: dict[bool, list[float]] = {False: [], True: []}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(repeats):
            for share in (False, True):
                cfg = PrecomputeConfig(
                    data=(data,),
                    model=str(model_dir),
                    out=Path(tmp) / f"c{share}",
                    max_length=max_length,
                    eval_fraction=eval_fraction,
                    batch_tokens=4096,
                    overwrite=True,
                    prefix_sharing=share,
                )
                AcceleratorState._reset_state(reset_partial_state=True)
                for p in sorted(cfg.out.glob("**/*.arrow")) + sorted(cfg.out.glob("**/manifest.json")):
                    p.unlink()  # a fresh run each time (no resume), the model load included
                t0, c0 = time.perf_counter(), time.process_time()
                run_precompute(cfg)
                times[share].append(time.perf_counter() - t0)
                cpu[share].append(time.process_time() - c0)
    plain, shared = min(times[False]), min(times[True])
    return {
        "data": data.name,
        "plain_s": times[False],
        "shared_s": times[True],
        "plain_cpu_s": cpu[False],
        "shared_cpu_s": cpu[True],
        "best_wall_time_ratio": shared / plain,
        "median_wall_time_ratio": statistics.median(times[True]) / statistics.median(times[False]),
        "best_cpu_time_ratio": min(cpu[True]) / min(cpu[False]),
        "wall_time_reduction": 1 - shared / plain,
        "load_average": os.getloadavg(),
    }


# Training-step mode (issue 21) -----------------------------------------------------------------


def epoch0_plan(cache_dir: Path, batch_size: int, grad_accum: int, seed: int = 0, grouped: bool = True):
    """The cache and kto-train's epoch-0 plan over it, one process; `grouped=False`: the plan
    without prompt groups (the plan before issue 21 kept a prompt's rows in one micro-batch)."""
    from kto.formats.cache import open_cache
    from kto.train.data import MicroBatchShape, epoch_plan, prompt_groups

    cache = open_cache(cache_dir)
    return cache, epoch_plan(cache.lengths(), MicroBatchShape(batch_size, grad_accum, 1), seed, 0, prompt_groups(cache) if grouped else None)


def cache_steps(cache_dir: Path, batch_size: int, grad_accum: int, steps: int | None, seed: int = 0, grouped: bool = True) -> list:
    """The first `steps` (None: all) optimizer steps of `epoch0_plan`, collated."""
    from kto.train.data import collate_micro_batch

    cache, plan = epoch0_plan(cache_dir, batch_size, grad_accum, seed, grouped)
    # Pad id 0: right padding is never attended nor scored, so its value changes no number.
    return [[collate_micro_batch(cache, slot, 0) for slot in step[0]] for step in plan[:steps]]


class _LayoutOnly(torch.nn.Module):
    """Stands in for CompletionLogps where only the layout counts: zeros of a forward's shape."""

    def forward(self, batch, score_mask=None):
        return torch.zeros(int(score_mask.sum()) if score_mask is not None else len(batch.targets))


def plan_accounting(cache_dir: Path, batch_size: int, grad_accum: int, grouped: bool) -> dict:
    """Exact tokens saved by kto-train's step over one epoch of a cache, per pass, as a share of
    the tokens the pass represents (valid rows), from the layouts the step would run (its own
    code with `_LayoutOnly` as the model: no scoring); and the share of rows whose KL partner
    (the next row of the cycle) is trained in the same step, and in an earlier one."""
    from kto.train.data import collate_micro_batch
    from kto.train.packing import completion_logps
    from kto.train.step import kl_local_sums

    cache, plan = epoch0_plan(cache_dir, batch_size, grad_accum, grouped=grouped)
    model, saved, represented = _LayoutOnly(), {"policy": 0, "kl": 0}, {"policy": 0, "kl": 0}
    with torch.no_grad():
        for step in plan:
            batches = [collate_micro_batch(cache, slot, 0) for slot in step[0]]
            saved["kl"] += kl_local_sums(model, batches, share=True).saved_tokens
            for b in batches:
                saved["policy"] += completion_logps(model, b.policy, b.valid, True)[1].saved
                represented["policy"] += int((b.policy.attention_mask.sum(1) * b.valid).sum())
                represented["kl"] += int((b.kl.attention_mask.sum(1) * b.valid).sum())
    step_of = np.zeros(cache.num_rows, dtype=np.int64)
    for k, step in enumerate(plan):  # plan[k] runs k-th
        step_of[step[step >= 0]] = k
    partner_step = np.roll(step_of, -1)  # row r's partner is row r + 1 of the cycle
    out = {f"{k}_saved": saved[k] / represented[k] for k in saved}
    out["both_saved"] = (saved["policy"] + saved["kl"]) / (represented["policy"] + represented["kl"])
    out.update(
        steps=len(plan),
        kl_partner_in_step=float(np.mean(partner_step == step_of)),
        kl_partner_trained_before=float(np.mean(partner_step < step_of)),
    )
    return out


def paired_steps(rows: int, max_len: int, vocab_size: int, batch_size: int, steps: int) -> list:
    """Steps of the synthetic paired mix (paired_sequences: a chosen and a rejected row per
    prompt, next to each other as a paired file's rows are), without a cache: reference
    log-probs 0 (the step's work does not depend on their values)."""
    from kto.formats.compute.logprob import make_token_batch
    from kto.train.data import KTOMicroBatch, row_columns

    (prompts, completions, _), pad_id = paired_sequences(rows, max_len, vocab_size)
    n = len(prompts) // 2  # main sequences first, then the KL ones (pipeline_sequences)
    out = []
    for start in range(0, min(n, steps * batch_size), batch_size):
        idx = list(range(start, min(n, start + batch_size)))
        zeros = torch.zeros(len(idx), dtype=torch.float64)
        out.append(
            [
                KTOMicroBatch(
                    policy=make_token_batch([prompts[i] for i in idx], [completions[i] for i in idx], pad_id),
                    kl=make_token_batch([prompts[i] for i in idx], [completions[n + i] for i in idx], pad_id),
                    columns=row_columns(ref_logp=zeros, ref_kl_logp=zeros.clone(), desirable=torch.tensor([i % 2 == 0 for i in idx])),
                    valid=torch.ones(len(idx), dtype=torch.bool),
                )
            ]
        )
    return out


class _OneProcess:
    """What kto.train.step asks of an accelerate.Accelerator, for one process without DDP."""

    num_processes = 1

    def no_sync(self, model):
        return contextlib.nullcontext()

    def backward(self, loss):
        loss.backward()


class _WithNumerics(torch.nn.Module):
    """The forward (plain or packed batch) under `numerics.context`, as accelerate.prepare runs
    mixed precision; backward runs outside autocast."""

    def __init__(self, inner: torch.nn.Module, numerics: Numerics, device: torch.device):
        super().__init__()
        self.inner, self.numerics, self.device_type = inner, numerics, device.type

    def forward(self, *args):
        with self.numerics.context(self.device_type):
            return self.inner(*args)


def _step_pass(model, steps, settings, device) -> tuple[float, float, dict, list[float], float]:
    """Every step once: wall time, this process's CPU time (all its threads: on a machine shared
    with other jobs, the work done rather than the wait), summarized stats over the steps, each
    step's loss, and the first step's gradient norm."""
    from kto.train.step import StepStats, forward_backward, summarize

    total, losses, norm = StepStats.zeros("cpu"), [], 0.0
    cpu0 = time.process_time()
    with C.Timer(device) as t:
        for k, batches in enumerate(steps):
            stats = forward_backward(model, [b.to(device) for b in batches], settings, _OneProcess())
            if k == 0:
                norm = float(torch.linalg.vector_norm(torch.stack([p.grad.double().norm() for p in model.parameters() if p.grad is not None])))
            model.zero_grad(set_to_none=True)
            losses.append(float(stats.loss_sum / stats.examples))
            total = total.plus(StepStats(*(x.cpu() for x in stats)))
    return t.seconds, time.process_time() - cpu0, summarize(total), losses, norm


def compare_train_steps(lm, steps: list, *, device, numerics: Numerics, repeats: int, warmup: bool = True) -> dict:
    """kto-train's step over `steps` with and without prefix sharing, taking turns (after one
    untimed step of each, unless `warmup` is off)."""
    from kto.train.loss import LossType
    from kto.train.step import LossSettings

    model = _WithNumerics(CompletionLogps(lm.train()), numerics, device)
    settings = {share: LossSettings(0.1, 1.0, 1.0, LossType.KTO, 0.0, "step", kl_prefix_sharing=share, policy_prefix_sharing=share) for share in (False, True)}
    for share in (False, True) if warmup else ():  # kernel choice, allocator growth
        _step_pass(model, steps[:1], settings[share], device)
    times: dict[bool, list[float]] = {False: [], True: []}
    cpu: dict[bool, list[float]] = {False: [], True: []}
    seen: dict[bool, tuple] = {}
    for _ in range(repeats):
        for share in (False, True):
            seconds, cpu_s, line, losses, norm = _step_pass(model, steps, settings[share], device)
            times[share].append(seconds)
            cpu[share].append(cpu_s)
            seen[share] = (line, losses, norm)
    rows = []
    for share in (False, True):
        line = seen[share][0]
        rows.append(
            {
                "layout": "prefix-shared" if share else "plain",
                "steps": len(steps),
                "best_s": min(times[share]),
                "median_s": statistics.median(times[share]),
                "best_cpu_s": min(cpu[share]),
                "tokens/saved": line["tokens/saved"],
                "padding/policy": line["padding/policy"],
                "padding/kl": line["padding/kl"],
                "tokens_per_step": line["tokens"] / len(steps),
            }
        )
    (_, plain_losses, plain_norm), (_, shared_losses, shared_norm) = seen[False], seen[True]
    return {
        "rows": rows,
        "best_time_ratio": rows[1]["best_s"] / rows[0]["best_s"],
        "median_time_ratio": rows[1]["median_s"] / rows[0]["median_s"],
        "best_cpu_time_ratio": rows[1]["best_cpu_s"] / rows[0]["best_cpu_s"],
        "saved_fraction": rows[1]["tokens/saved"] / rows[0]["tokens_per_step"],
        "max_loss_rel_diff": max(abs(a - b) / max(abs(a), 1e-12) for a, b in zip(plain_losses, shared_losses)),
        "grad_norm_rel_diff": abs(shared_norm - plain_norm) / plain_norm,
    }


def train_step_mode(args, device, numerics: Numerics, results: dict) -> None:
    """--train-cache: compare_train_steps on each cache with --model, printed and saved as it goes."""
    from kto.formats.compute.models import load_causal_lm, resolve_source
    from kto.train.model import disable_dropout

    if args.model is None:
        sys.exit("--model: the HF dir of the policy (the caches' reference) for --train-cache")
    lm = load_causal_lm(resolve_source(args.model), dtype=numerics.weights, attn_implementation="sdpa").to(device)
    disable_dropout(lm)
    lm.config.use_cache = False
    if args.train_threads:
        torch.set_num_threads(args.train_threads)
    for cache_dir in args.train_cache:
        if args.train_accounting:
            accounting_table(args, cache_dir, results)
        steps = cache_steps(cache_dir, args.train_batch_size, args.train_grad_accum, args.train_steps)
        r = compare_train_steps(lm, steps, device=device, numerics=numerics, repeats=args.repeats, warmup=not args.train_no_warmup)
        results.setdefault("train_step", {})[str(cache_dir)] = r
        results["versions"] = info = C.versions(device)
        print(f"\n{C.describe(info)} | {numerics.name} | load {Path('/proc/loadavg').read_text().split()[:3] if Path('/proc/loadavg').exists() else '?'}")
        C.print_table(
            f"train step on {cache_dir} (batch {args.train_batch_size} x accum {args.train_grad_accum}, {len(steps)} steps): "
            f"time ratio shared/plain {r['best_time_ratio']:.3f} (best), {r['median_time_ratio']:.3f} (median), CPU time {r['best_cpu_time_ratio']:.3f} (best); saved {r['saved_fraction']:.1%} of tokens; "
            f"loss rel diff {r['max_loss_rel_diff']:.1e}, grad norm rel diff {r['grad_norm_rel_diff']:.1e}",
            r["rows"],
        )
        sys.stdout.flush()
        if args.json_out:
            args.json_out.write_text(json.dumps(results, indent=2, default=str))


def accounting_table(args, cache_dir: Path, results: dict) -> None:
    """--train-accounting: `plan_accounting` per shape, both plans, printed and saved."""
    rows = []
    for shape in args.train_accounting.split(","):
        batch, accum = (int(x) for x in shape.split("x"))
        for grouped in (True, False):
            r = plan_accounting(cache_dir, batch, accum, grouped)
            rows.append({"shape": shape, "plan": "prompt groups" if grouped else "rows (before)", **r})
    results.setdefault("train_accounting", {})[str(cache_dir)] = rows
    C.print_table(f"tokens saved per pass over one epoch of {cache_dir} (exact layout accounting, seed 0, one process)", rows)
    sys.stdout.flush()


def real_mix(args, mix: str, device, numerics: Numerics) -> dict:
    """A ../shared/data file: the whole file's layout accounting, then both layouts timed on
    its first --data-rows rows, scoring and kto-precompute end to end."""
    from kto.formats.compute.models import load_causal_lm, resolve_source

    if args.model is None:
        sys.exit(f"--model: a HF dir of SmolLM2-135M-Instruct for mix {mix}")
    data = args.data_dir / f"{mix}.json"
    if not data.is_file():
        sys.exit(f"{data}: real data absent (--data-dir, or $KTO_SHARED_DATA)")
    result = {"accounting": accounting(real_sequences(data, Path(args.model))[0])}
    with tempfile.TemporaryDirectory() as tmp:
        subset = first_rows(data, args.data_rows, Path(tmp))
        shards, pad_id = real_sequences(subset, Path(args.model))
        lm = load_causal_lm(resolve_source(args.model), dtype=numerics.weights, attn_implementation="sdpa").to(device).eval()
        (sequences,) = shards
        result.update(compare(lm, sequences, pad_id, batch_tokens=args.batch_tokens, device=device, numerics=numerics, repeats=args.repeats))
        del lm
        C.free_memory()
        if args.end_to_end_repeats > 0:
            result["end_to_end"] = end_to_end(Path(args.model), args.end_to_end_repeats, subset, max_length=1024, eval_fraction=0.0)
    result["rows_timed"] = args.data_rows
    return result


def synthetic_mix(args, mix: str, device, numerics: Numerics) -> dict:
    """feedback (the real SmolLM2), paired or synthetic (a random-init model of --shape)."""
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
    result = compare(lm, sequences, pad_id, batch_tokens=args.batch_tokens, device=device, numerics=numerics, repeats=args.repeats)
    del lm
    C.free_memory()
    if mix == "feedback" and args.end_to_end_repeats > 0:
        result["end_to_end"] = end_to_end(Path(args.model), args.end_to_end_repeats)
    return result


def report(mix: str, r: dict) -> None:
    if "accounting" in r:
        a = r["accounting"]
        print(
            f"\n{mix}: exact layout accounting of the whole file: {a['computed_tokens']} of {a['represented_tokens']} represented tokens computed, "
            f"{a['saved_fraction']:.1%} saved, {a['packs']} packs over {a['sequences']} sequences; timed below: its first {r['rows_timed']} rows"
        )
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
    if args.train_cache:
        train_step_mode(args, device, numerics, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
