"""kto-train's step with and without prefix sharing (issue 21), side by side in one process.

Training-step mode (`--train-cache DIR`, repeatable): kto-train's step
(`kto.train.step.forward_backward`: the no-grad KL pass, then the policy forward/backward per
micro-batch) on the first `--train-steps` steps of kto-train's own epoch plan over a
kto-precompute cache, with prefix sharing in both passes and without (`--no-prefix-sharing`),
taking turns, `--repeats` times. Per layout: best and median time of those steps, tokens/saved
and padding/* per step as metrics.jsonl reports them; and the relative difference of the first
step's loss and gradient norm. The policy is `--model` (HF dir), loaded as kto-train loads it.
`--train-accounting 4x1,8x1,...` first counts, without a model, the exact tokens each pass saves
over one epoch at those shapes, with kto-train's plan and with the plan before prompt groups,
and how many rows have their KL partner in their own step. Every timing also records the
process CPU time: on a machine shared with other work, wall time mostly measures the others.

Reference scoring with and without prefix sharing, and kto-precompute end to end, are
tools/bench_prefix_sharing.py; tools/gpu_check.py runs `compare_train_steps` on the GPU.

    python tools/bench_train_sharing.py --model /work/bench/smollm2 --train-cache CACHE
    python tools/bench_train_sharing.py --model /work/bench/smollm2 --train-cache CACHE --train-accounting 4x1,8x1,16x1,32x1,8x4
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _bench_common as C

from kto.formats.compute.logprob import CompletionLogps
from kto.formats.compute.numerics import Numerics, parse_numerics


def parse_args(argv=None) -> argparse.Namespace:
    cuda = torch.cuda.is_available()
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None, help="HF dir of the policy (the caches' reference)")
    p.add_argument("--numerics", default="amp-bf16" if cuda else "fp32")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--json-out", type=Path, default=None)
    p.add_argument("--train-cache", type=Path, action="append", default=[], help="a kto-precompute cache (repeatable)")
    p.add_argument("--train-batch-size", type=int, default=8, help="rows per micro-batch")
    p.add_argument("--train-grad-accum", type=int, default=1, help="micro-batches per step")
    p.add_argument("--train-steps", type=int, default=2, help="steps timed per pass (the first of the epoch plan)")
    p.add_argument("--train-no-warmup", action="store_true", help="no untimed step first (a busy CPU)")
    p.add_argument("--train-threads", type=int, default=None, help="torch threads (1: CPU time is the work done)")
    p.add_argument(
        "--train-plain-plan",
        choices=("groups", "rows"),
        default="groups",
        help="the plain arm's steps: the same steps as the shared arm (groups, default: the same rows per step), or the "
        "epoch plan kto-train --no-prefix-sharing runs (rows: length-sorted segments, less padding; both arms then time the "
        "whole epoch, whatever --train-steps says)",
    )
    p.add_argument(
        "--train-accounting",
        default="",
        help="comma list of BATCHxACCUM shapes (e.g. 4x1,8x1,16x1,8x4) whose exact tokens saved per pass over one epoch are "
        "counted (no model), with kto-train's plan and with the plan without prompt groups",
    )
    return p.parse_args(argv)


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

    def forward(self, batch, score_mask=None, scored=None):
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
    """Steps of the synthetic paired mix (C.paired_sequences: a chosen and a rejected row per
    prompt, next to each other as a paired file's rows are), without a cache. The step's work does
    not depend on the reference log-probs, but its gradient does: they are set to a random-init
    model's log-probs, −log V per completion token, so that β(r − z) stays near 0 and the loss
    does not saturate (reference 0 gave sums near −10⁴ and a gradient of exactly 0 in bf16)."""
    from kto.formats.compute.logprob import make_token_batch
    from kto.train.data import KTOMicroBatch, row_columns

    (prompts, completions, _), pad_id = C.paired_sequences(rows, max_len, vocab_size)
    n = len(prompts) // 2  # main sequences first, then the KL ones (pipeline_sequences)
    out = []
    for start in range(0, min(n, steps * batch_size), batch_size):
        idx = list(range(start, min(n, start + batch_size)))
        uniform = -math.log(vocab_size)
        ref = torch.tensor([uniform * len(completions[i]) for i in idx], dtype=torch.float64)
        ref_kl = torch.tensor([uniform * len(completions[n + i]) for i in idx], dtype=torch.float64)
        out.append(
            [
                KTOMicroBatch(
                    policy=make_token_batch([prompts[i] for i in idx], [completions[i] for i in idx], pad_id),
                    kl=make_token_batch([prompts[i] for i in idx], [completions[n + i] for i in idx], pad_id),
                    columns=row_columns(ref_logp=ref, ref_kl_logp=ref_kl, desirable=torch.tensor([i % 2 == 0 for i in idx])),
                    valid=torch.ones(len(idx), dtype=torch.bool),
                )
            ]
        )
    return out


class _WithNumerics(torch.nn.Module):
    """The forward (plain or packed batch) under `numerics.context`, as accelerate.prepare runs
    mixed precision; backward runs outside autocast."""

    def __init__(self, inner: torch.nn.Module, numerics: Numerics, device: torch.device):
        super().__init__()
        self.inner, self.numerics, self.device_type = inner, numerics, device.type

    def forward(self, *args, **kwargs):
        with self.numerics.context(self.device_type):
            return self.inner(*args, **kwargs)


def _step_pass(model, steps, settings, device) -> tuple[float, float, dict, list[float], float]:
    """Every step once: wall time, this process's CPU time (all its threads: on a machine shared
    with other jobs, the work done rather than the wait), summarized stats over the steps, each
    step's loss, and the first step's gradient norm."""
    from kto.train.step import StepStats, forward_backward, summarize

    total, losses, norm = StepStats.zeros("cpu"), [], 0.0
    cpu0 = time.process_time()
    with C.Timer(device) as t:
        for k, batches in enumerate(steps):
            stats = forward_backward(model, [b.to(device) for b in batches], settings, C.OneProcess())
            if k == 0:
                norm = float(torch.linalg.vector_norm(torch.stack([p.grad.double().norm() for p in model.parameters() if p.grad is not None])))
            model.zero_grad(set_to_none=True)
            losses.append(float(stats.loss_sum / stats.examples))
            total = total.plus(StepStats(*(x.cpu() for x in stats)))
    return t.seconds, time.process_time() - cpu0, summarize(total), losses, norm


def syncs_in_step(model, batches, settings, device) -> int | None:
    """How many times one call of kto-train's step (forward_backward, the batches already on the
    device) waits for the device to read a value back: torch's CUDA sync debug mode warns once
    per wait. None off CUDA. Each wait idles the device while the CPU catches up."""
    from kto.train.step import forward_backward

    if torch.device(device).type != "cuda":
        return None
    moved = [b.to(device) for b in batches]
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            forward_backward(model, moved, settings, C.OneProcess())
        finally:
            torch.cuda.set_sync_debug_mode("default")
    model.zero_grad(set_to_none=True)
    return sum("synchroniz" in str(w.message) for w in caught)


def _rel_diff(value: float, reference: float) -> float:
    if reference == 0:  # a saturated loss: no gradient to compare, and 0 would read as a match
        raise RuntimeError("the plain step's gradient norm is 0: the loss saturated; check the reference log-probs")
    return abs(value - reference) / reference


def step_arms(lm, numerics: Numerics, device) -> tuple[torch.nn.Module, dict]:
    """The policy as kto-train's step calls it (under the numerics' autocast) and the loss
    settings of the two arms, keyed by prefix sharing (False: plain, True: shared)."""
    from kto.train.loss import LossType
    from kto.train.step import LossSettings

    model = _WithNumerics(CompletionLogps(lm.train()), numerics, device)
    settings = {share: LossSettings(0.1, 1.0, 1.0, LossType.KTO, 0.0, "step", kl_prefix_sharing=share, policy_prefix_sharing=share) for share in (False, True)}
    return model, settings


def compare_train_steps(lm, steps: list, *, device, numerics: Numerics, repeats: int, warmup: bool = True, plain_steps: list | None = None) -> dict:
    """kto-train's step over `steps` with and without prefix sharing, taking turns (after one
    untimed step of each, unless `warmup` is off). `plain_steps`: other steps for the plain arm
    (kto-train --no-prefix-sharing's own plan over the same rows); the loss and gradient-norm
    comparison then says nothing and is left out."""
    model, settings = step_arms(lm, numerics, device)
    arm = {False: steps if plain_steps is None else plain_steps, True: steps}
    for share in (False, True) if warmup else ():  # kernel choice, allocator growth
        _step_pass(model, arm[share][:1], settings[share], device)
    syncs = {share: syncs_in_step(model, arm[share][0], settings[share], device) for share in (False, True)}
    times: dict[bool, list[float]] = {False: [], True: []}
    cpu: dict[bool, list[float]] = {False: [], True: []}
    seen: dict[bool, tuple] = {}
    for _ in range(repeats):
        for share in (False, True):
            seconds, cpu_s, line, losses, norm = _step_pass(model, arm[share], settings[share], device)
            times[share].append(seconds)
            cpu[share].append(cpu_s)
            seen[share] = (line, losses, norm)
    rows = []
    for share in (False, True):
        line = seen[share][0]
        rows.append(
            {
                "layout": "prefix-shared" if share else "plain",
                "steps": len(arm[share]),
                "best_s": min(times[share]),
                "median_s": statistics.median(times[share]),
                "best_cpu_s": min(cpu[share]),
                "tokens/saved": line["tokens/saved"],
                "padding/policy": line["padding/policy"],
                "padding/kl": line["padding/kl"],
                "tokens_per_step": line["tokens"] / len(arm[share]),
                "device_waits_first_step": syncs[share],
            }
        )
    (_, plain_losses, plain_norm), (_, shared_losses, shared_norm) = seen[False], seen[True]
    return {
        "rows": rows,
        "best_time_ratio": rows[1]["best_s"] / rows[0]["best_s"],
        "median_time_ratio": rows[1]["median_s"] / rows[0]["median_s"],
        "best_cpu_time_ratio": rows[1]["best_cpu_s"] / rows[0]["best_cpu_s"],
        "saved_fraction": rows[1]["tokens/saved"] / rows[1]["tokens_per_step"],
        "max_loss_rel_diff": None if plain_steps else max(abs(a - b) / max(abs(a), 1e-12) for a, b in zip(plain_losses, shared_losses)),
        "grad_norm_rel_diff": None if plain_steps else _rel_diff(shared_norm, plain_norm),
    }


def train_step_mode(args, device, numerics: Numerics, results: dict) -> None:
    """--train-cache: compare_train_steps on each cache with --model, printed and saved as it goes."""
    from kto.formats.compute.loading import load_causal_lm
    from kto.formats.compute.sources import resolve_source
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
        # Two plans put other rows into their first steps: only whole epochs compare.
        n_steps = None if args.train_plain_plan == "rows" else args.train_steps
        steps = cache_steps(cache_dir, args.train_batch_size, args.train_grad_accum, n_steps)
        plain_steps = None
        if args.train_plain_plan == "rows":
            plain_steps = cache_steps(cache_dir, args.train_batch_size, args.train_grad_accum, None, grouped=False)
        r = compare_train_steps(lm, steps, device=device, numerics=numerics, repeats=args.repeats, warmup=not args.train_no_warmup, plain_steps=plain_steps)
        results.setdefault("train_step", {})[str(cache_dir)] = r
        results["versions"] = info = C.versions(device)
        print(f"\n{C.describe(info)} | {numerics.name} | load {Path('/proc/loadavg').read_text().split()[:3] if Path('/proc/loadavg').exists() else '?'}")
        agreement = (
            f"loss rel diff {r['max_loss_rel_diff']:.1e}, grad norm rel diff {r['grad_norm_rel_diff']:.1e}"
            if plain_steps is None
            else "plain arm on kto-train --no-prefix-sharing's own plan (other rows per step: no loss comparison)"
        )
        C.print_table(
            f"train step on {cache_dir} (batch {args.train_batch_size} x accum {args.train_grad_accum}, {len(steps)} steps): "
            f"time ratio shared/plain {r['best_time_ratio']:.3f} (best), {r['median_time_ratio']:.3f} (median), CPU time {r['best_cpu_time_ratio']:.3f} (best); "
            f"saved {r['saved_fraction']:.1%} of tokens; {agreement}",
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


def main(argv=None) -> int:
    args = parse_args(argv)
    if not args.train_cache:
        sys.exit("--train-cache: a kto-precompute cache to train on (repeatable)")
    device = C.default_device()
    numerics = parse_numerics(args.numerics, device)
    results: dict = {"args": {k: str(v) for k, v in vars(args).items()}}
    train_step_mode(args, device, numerics, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
