"""What checkpoint checksums cost: the time a save spends hashing its files into checksums.json,
and the time `--resume` spends checking a checkpoint (every file's sha256, the weights finite,
the training state loadable), against the save itself.

    python tools/bench_checkpoint.py --shape smollm2-135m --out /tmp/bench-ckpt

A random-init Llama of `--shape` (fp32) with an AdamW state after one step, saved through
kto-train's own `save_checkpoint` (train/checkpoint.py) three times; the figures are medians.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import time
from pathlib import Path

import torch
from _bench_common import SHAPES, build_llama, build_tokenizer

from kto.formats.shards import tree_hashes
from kto.train.checkpoint import Position, checkpoint_problem, checksum_problem, nonfinite_problem, save_checkpoint


def timed(fn, *args) -> float:
    t = time.perf_counter()
    fn(*args)
    return time.perf_counter() - t


def finite_weights(path: Path) -> None:
    for w in path.glob("*.safetensors"):
        nonfinite_problem(w)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", default="smollm2-135m", choices=sorted(SHAPES))
    ap.add_argument("--out", type=Path, default=Path("/tmp/bench-ckpt"))
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    lm = build_llama(args.shape, torch.float32, torch.device("cpu"))
    tokenizer = build_tokenizer(lm.config.vocab_size)
    optimizer = torch.optim.AdamW(lm.parameters(), lr=1e-6)
    lm(input_ids=torch.tensor([[1, 8, 9, 10]])).logits.float().mean().backward()
    optimizer.step()  # the AdamW moments exist, as in any checkpoint after step 1
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)

    shutil.rmtree(args.out, ignore_errors=True)
    args.out.mkdir(parents=True)
    rows = {
        "save (with checksums.json)": [],
        "  of it: hashing every file": [],
        "resume check (all)": [],
        "  of it: sha256 of every file": [],
        "  of it: weights finite": [],
    }
    for k in range(args.repeats):
        path = args.out / f"checkpoint-{k + 1}"
        position = Position(k + 1, 0, k + 1)
        rows["save (with checksums.json)"].append(timed(save_checkpoint, args.out, lm, tokenizer, optimizer, scheduler, position, {}))
        rows["  of it: hashing every file"].append(timed(tree_hashes, path))
        rows["resume check (all)"].append(timed(checkpoint_problem, path))
        rows["  of it: sha256 of every file"].append(timed(checksum_problem, path))
        rows["  of it: weights finite"].append(timed(finite_weights, path))
    size = sum(p.stat().st_size for p in (args.out / "checkpoint-1").rglob("*") if p.is_file())
    print(f"{args.shape}: {sum(p.numel() for p in lm.parameters()) / 1e6:.1f}M parameters, checkpoint {size / 1e9:.2f} GB, median of {args.repeats}")
    for name, values in rows.items():
        print(f"{name:32s} {statistics.median(values):7.2f} s")
    shutil.rmtree(args.out, ignore_errors=True)


if __name__ == "__main__":
    main()
