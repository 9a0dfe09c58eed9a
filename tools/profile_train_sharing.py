"""Where kto-train's prefix-shared step spends its time on a GPU (issue 21), in one call.

gpu_check's `train_prefix_sharing` gives the step time ratio; this says why it is what it is:

  (1) the ratio at several batch sizes (rows per step; the paired mix, 2 rows per prompt), so
      a fixed per-step cost shows as a ratio that falls with the batch;
  (2) per layout, one profiled pass over the steps: wall time, the time the device was busy
      (its kernels' self time summed) and so its idle share, and the top kernels and ops;
  (3) the CPU time of laying a step out (split_sequences + shared_layout for both passes),
      the work the shared step adds before its forwards can launch.

    python tools/profile_train_sharing.py                        # on the GPU: 1B shape
    python tools/profile_train_sharing.py --shape tiny --batches 2 --max-len 128   # CPU smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _bench_common as C
import bench_train_sharing as B
import bench_train_step


def parse_args(argv=None) -> argparse.Namespace:
    cuda = torch.cuda.is_available()
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shape", choices=sorted(C.SHAPES), default="llama-3.2-1b" if cuda else "tiny")
    p.add_argument("--precision", default="amp-bf16" if cuda else "fp32")
    p.add_argument("--batches", default="4,8,16", help="rows per step, comma list")
    p.add_argument("--profile-batch", type=int, default=8)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--max-len", type=int, default=2048)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument(
        "--json-out", type=Path, default=Path(os.environ["OUT"]) / "profile_train_sharing.json" if os.environ.get("OUT") else Path("profile_train_sharing.json")
    )
    return p.parse_args(argv)


def _self_device_us(e) -> float:
    return float(getattr(e, "self_device_time_total", getattr(e, "self_cuda_time_total", 0.0)))


def profile_pass(model, steps, settings, device, top: int = 15) -> dict:
    """One profiled pass: wall, device-busy time, and the top ops by self device (or CPU) time."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        t0 = time.perf_counter()
        B._step_pass(model, steps, settings, device)
        wall = time.perf_counter() - t0
    events = prof.key_averages()
    on_device = device.type == "cuda"
    key = _self_device_us if on_device else (lambda e: float(e.self_cpu_time_total))
    # Kernels only (not the CPU-side ops that launch them) make up the device's busy time.
    busy_us = sum(_self_device_us(e) for e in events if on_device and e.device_type == torch.autograd.DeviceType.CUDA)
    ranked = sorted(events, key=key, reverse=True)[:top]
    return {
        "wall_s": wall,
        "device_busy_s": busy_us / 1e6 if on_device else None,
        "device_idle_fraction": 1 - busy_us / 1e6 / wall if on_device else None,
        "top": [{"name": e.key[:90], "calls": e.count, "self_ms": key(e) / 1e3, "cpu_total_ms": e.cpu_time_total / 1e3} for e in ranked],
    }


def layout_cpu_seconds(steps) -> float:
    """CPU time to lay out every step's two passes as the shared step does (plan, pack, index)."""
    from kto.train.packing import shared_layout, split_sequences

    t0 = time.process_time()
    for batches in steps:
        for mb in batches:
            for tb in (mb.kl, mb.policy):
                prompts, completions = split_sequences(tb.input_ids, tb.score_mask)
                shared_layout(prompts, completions, [True] * len(prompts), "cuda")
    return time.process_time() - t0


def main(argv=None) -> int:
    from kto.train.model import disable_dropout

    args = parse_args(argv)
    device = C.default_device()
    numerics = bench_train_step.precision_numerics(args.precision, device)
    lm = C.build_llama(args.shape, numerics.weights, device)
    disable_dropout(lm)
    lm.config.use_cache = False
    vocab = lm.config.vocab_size
    out: dict = {"args": {k: str(v) for k, v in vars(args).items()}, "versions": C.versions(device), "ratios": {}}
    for batch in [int(b) for b in args.batches.split(",")]:
        data = B.paired_steps(2 * batch * args.steps, args.max_len, vocab, batch, args.steps)
        r = B.compare_train_steps(lm, data, device=device, numerics=numerics, repeats=args.repeats)
        out["ratios"][batch] = {k: v for k, v in r.items() if k != "rows"} | {"rows": r["rows"], "layout_cpu_s_per_step": layout_cpu_seconds(data) / len(data)}
        print(
            f"batch {batch}: best ratio {r['best_time_ratio']:.3f}, median {r['median_time_ratio']:.3f}, saved {r['saved_fraction']:.1%}, "
            f"plain {r['rows'][0]['best_s'] / len(data):.4f} s/step, shared {r['rows'][1]['best_s'] / len(data):.4f} s/step, "
            f"layout {out['ratios'][batch]['layout_cpu_s_per_step'] * 1e3:.1f} ms CPU/step",
            flush=True,
        )
        C.free_memory()
    data = B.paired_steps(2 * args.profile_batch * args.steps, args.max_len, vocab, args.profile_batch, args.steps)
    model, settings = B.step_arms(lm, numerics, device)
    out["profile"] = {}
    for share in (False, True):
        B._step_pass(model, data[:1], settings[share], device)  # warm
        p = profile_pass(model, data, settings[share], device)
        out["profile"]["shared" if share else "plain"] = p
        print(
            f"\n{'shared' if share else 'plain'} (batch {args.profile_batch}, {len(data)} steps): wall {p['wall_s']:.3f} s, device busy {p['device_busy_s']}, idle {p['device_idle_fraction']}"
        )
        for t in p["top"]:
            print(f"  {t['self_ms']:9.2f} ms self  {t['cpu_total_ms']:9.2f} ms cpu  {t['calls']:6d}x  {t['name']}")
    args.json_out.parent.mkdir(parents=True, exist_ok=True)
    args.json_out.write_text(json.dumps(out, indent=2, default=str))
    print(f"\n{C.describe(C.versions(device))}\nwrote {args.json_out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
