"""Memory per parameter: the table of docs/memory.md on paper, checked against CPU peaks.

Each variant runs in a fresh process (peaks do not mix): a random-init model of --shape, then
two kto-train steps (`kto.train.step.forward_backward` + AdamW through
tools/bench_train_step.py), and the peak resident memory minus what the process held before
the model was built, divided by the parameter count. On CPU everything is fp32, so on paper:

    full fine-tune            4 (weights) + 4 (grads) + 8 (AdamW m, v)   = 16 B/param
    + resident reference      + 4 (an fp32 copy; bf16 on GPUs: + 2)      = 20
    LoRA                      4 (frozen base) + 16 × adapter share        ≈ 4.1
    + resident reference      + 0 (the base with adapters disabled)       ≈ 4.1

plus activations, which do not scale with the parameter count (batch × length here is small).

    python tools/bench_memory.py                       # smollm2-135m shape, ~1-2 min on 2 cores
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _bench_common as C

VARIANTS = {
    "full": (0, "policy-only"),
    "full+resident-reference": (0, "resident-reference"),
    "lora": (16, "policy-only"),
    "lora+resident-reference": (16, "resident-reference"),
}
PAPER_CPU = {"full": 16.0, "full+resident-reference": 20.0, "lora": 4.0, "lora+resident-reference": 4.0}


def measure_one(variant: str, shape: str, batch_size: int, seq_len: int) -> dict:
    import bench_train_step as B
    import torch

    lora_r, name = VARIANTS[variant]
    device = torch.device("cpu")
    before = C._proc_status_kb("VmRSS") * 1024 / C.GB
    mem = C.PeakMemory(device)
    captured = {}
    inner = B.make_policy

    def counting_make_policy(*a, **kw):  # count parameters and adapter parameters on the way
        lm = inner(*a, **kw)
        captured["params"] = sum(p.numel() for p in lm.parameters())
        captured["trainable"] = sum(p.numel() for p in lm.parameters() if p.requires_grad)
        return lm

    B.make_policy = counting_make_policy
    row = B._time_variant(
        name,
        mem,
        shape=shape,
        precision="fp32",
        batch_size=batch_size,
        seq_len=seq_len,
        gradient_checkpointing=True,
        device=device,
        warmup=1,
        iters=1,
        lora_r=lora_r,
    )
    peak_over_start = row["peak_gb"] - before
    base = captured["params"] - (captured["trainable"] if lora_r else 0)
    return {
        "variant": variant,
        "params": captured["params"],
        "trainable": captured["trainable"],
        "peak_gb": row["peak_gb"],
        "added_gb": peak_over_start,
        "bytes_per_param": peak_over_start * C.GB / base,
        "paper_bytes_per_param": paper(variant, base, captured["trainable"]),
    }


def paper(variant: str, base: int, trainable: int) -> float:
    """The fp32 CPU figure on paper, per base parameter: PAPER_CPU plus the adapters' own 16 B."""
    extra = 16.0 * trainable / base if variant.startswith("lora") else 0.0
    return PAPER_CPU[variant] + extra


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shape", choices=sorted(C.SHAPES), default="smollm2-135m")
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--one", choices=sorted(VARIANTS), help=argparse.SUPPRESS)
    p.add_argument("--json-out", type=Path, default=None)
    args = p.parse_args(argv)
    if args.one:
        print(json.dumps(measure_one(args.one, args.shape, args.batch_size, args.seq_len)))
        return 0
    rows = []
    for variant in VARIANTS:
        cmd = [sys.executable, __file__, "--one", variant, "--shape", args.shape, "--batch-size", str(args.batch_size), "--seq-len", str(args.seq_len)]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
    info = C.versions(C.default_device())
    print(f"{C.describe(info)} | shape {args.shape} | fp32 | {args.batch_size}x{args.seq_len}, gradient checkpointing")
    C.print_table("peak memory per base parameter, measured vs on paper (activations not on paper)", rows)
    if args.json_out:
        args.json_out.write_text(json.dumps({"args": vars(args) | {"json_out": str(args.json_out)}, "versions": info, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
