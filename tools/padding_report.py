"""Padding on real rows beside the shipped ones: the data-dependent figures of docs/benchmarks.md.

Padding depends on the lengths of the rows, not on the model's weights, so a 2-layer random
Llama over SmolLM2's tokenizer gives the exact figures of the real model in seconds. Per input
and --max-length:

- scoring (kto-precompute, plain layout): the share of padded token slots that hold padding
  when every row's main and KL sequence is batched by `token_budget_batches` at the budget
  (--batch-tokens; 4096 as the quickstart, 16384 the default);
- training (kto-train, one epoch at the quickstart's batch 4 × accumulation 2): `padding/policy`
  and `padding/kl` from metrics.jsonl, logged every step, as the mean over steps.

    python tools/padding_report.py                      # examples/ and ../shared/data, 256 and 1024
    python tools/padding_report.py --data a.json --max-length 512
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import pyarrow as pa
import pyarrow.ipc

from kto.formats.compute.scoring import padding_fraction, token_budget_batches
from kto.formats.manifest import read_manifest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from truncation_report import REPO, shared_data, smollm2_tokenizer, tiny_model


def sequence_lengths(cache: Path) -> list[int]:
    """Every row's main (prompt + completion) and KL (prompt + KL completion) length."""
    lengths: list[int] = []
    for shard in read_manifest(cache).shards:
        table = pa.ipc.open_file(pa.memory_map(str(cache / shard.name))).read_all()
        prompt = table["prompt_ids"].combine_chunks().value_lengths().to_numpy()
        main = table["completion_ids"].combine_chunks().value_lengths().to_numpy()
        kl = table["kl_completion_ids"].combine_chunks().value_lengths().to_numpy()
        lengths += (prompt + main).tolist() + (prompt + kl).tolist()
    return lengths


def scoring_padding(lengths: list[int], budget: int) -> float:
    return padding_fraction(lengths, token_budget_batches(lengths, list(range(len(lengths))), budget))


def run(*args: str) -> None:
    subprocess.run(args, check=True, stdout=subprocess.DEVNULL, env=os.environ)


def training_padding(cache: Path, model: Path, out: Path) -> dict[str, float]:
    run(
        "kto-train", "--cache", str(cache), "--model", str(model), "--out", str(out),
        "--batch-size", "4", "--grad-accum", "2", "--epochs", "1", "--log-every", "1", "--drift-tolerance", "1",
    )  # fmt: skip
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    train = [m for m in lines if "padding/policy" in m and m.get("split", "train") == "train"]
    return {key: statistics.fmean(m[key] for m in train) for key in ("padding/policy", "padding/kl")} | {"steps": len(train)}


def report(data: Path, max_length: int, budget: int, model: Path, work: Path) -> dict:
    cache = work / f"{data.stem}-{max_length}"
    run("kto-precompute", "--data", str(data), "--model", str(model), "--out", str(cache), "--max-length", str(max_length), "--overwrite")
    lengths = sequence_lengths(cache)
    train = training_padding(cache, model, work / f"run-{data.stem}-{max_length}")
    return {
        "file": data.name,
        "max_length": max_length,
        "sequences": len(lengths),
        f"scoring padding @{budget}": f"{scoring_padding(lengths, budget):.1%}",
        "scoring padding @16384": f"{scoring_padding(lengths, 16384):.1%}",
        "steps": train["steps"],
        "padding/policy": f"{train['padding/policy']:.1%}",
        "padding/kl": f"{train['padding/kl']:.1%}",
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, action="append", help="repeatable; default examples/feedback.jsonl and ../shared/data's two files")
    ap.add_argument("--max-length", type=int, action="append", help="repeatable; default 256 and 1024")
    ap.add_argument("--batch-tokens", type=int, default=4096, help="scoring budget besides 16384 (the quickstart's 4096)")
    args = ap.parse_args()
    data = args.data or [REPO / "examples" / "feedback.jsonl", shared_data() / "kto_en_demo.json", shared_data() / "dpo_en_demo.json"]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        model = tiny_model(smollm2_tokenizer(work / "tok"), work / "model")
        rows = [report(d, n, args.batch_tokens, model, work) for d in data for n in args.max_length or [256, 1024]]
    print("| " + " | ".join(rows[0]) + " |")
    print("|" + "---|" * len(rows[0]))
    for r in rows:
        print("| " + " | ".join(str(v) for v in r.values()) + " |")


if __name__ == "__main__":
    main()
