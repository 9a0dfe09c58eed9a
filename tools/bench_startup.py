"""Launch to first step: a second kto-train run on an existing cache against TRL's restart.

    python tools/bench_startup.py --model demo/smollm2 --cache demo/cache --data examples/feedback.jsonl \
        [--trl-path DIR] [--repeats 3]

Both are launched as fresh processes, interleaved (kto, TRL, kto, TRL, …), and timed from
`Popen` until the process says its first optimizer step begins, then stopped:

- kto-train prints `first step: set-up took X s, Y s of it loading the model` just before the
  first step's forward (kto.train.loop). The cache is warm: one untimed run first records the
  shard and tokenizer checks, as any earlier run on the cache has.
- TRL 1.16 `KTOTrainer` with `precompute_ref_log_probs=True` on the same JSONL and model (a child
  of this script, `--trl-child`), whose callback prints at `on_step_begin`. One untimed run first
  fills the datasets cache (tokenized rows and its reference log-probs), so the timed runs are
  TRL restarting on its own cached reference values. TRL is not a dependency: install it apart
  (`pip install --no-deps --target DIR trl==1.16.0`) and pass `--trl-path DIR`.

Both use batch 4 × accumulation 2, fp32 on CPU, no evaluation.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MARK = "first step"


def time_to_mark(cmd: list[str], env: dict, mark: str = MARK) -> tuple[float, str]:
    """Seconds from launch until a stderr line containing `mark`; the process is then stopped."""
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    lines = []
    try:
        for line in proc.stderr:
            lines.append(line)
            if mark in line:
                return time.perf_counter() - t, line.strip()
        raise SystemExit(f"{cmd[:4]} ended before its first step:\n{''.join(lines)[-3000:]}")
    finally:
        proc.kill()
        proc.wait()


def kto_cmd(args, out: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "kto.train.cli",
        "--cache",
        str(args.cache),
        "--model",
        str(args.model),
        "--out",
        str(out),
        "--batch-size",
        "4",
        "--grad-accum",
        "2",
        "--max-steps",
        "10",
        "--log-every",
        "1",
    ]


def trl_cmd(args, out: Path) -> list[str]:
    return [sys.executable, __file__, "--trl-child", "--model", str(args.model), "--data", str(args.data), "--out", str(out)]


def trl_child(args) -> None:
    """TRL's KTOTrainer up to its first step (imports are part of what is timed)."""
    from datasets import load_dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import KTOConfig, KTOTrainer

    class Mark(TrainerCallback):
        def on_step_begin(self, *a, **k):
            print(f"{MARK} (TRL)", file=sys.stderr, flush=True)

    data = load_dataset("json", data_files=str(args.data), split="train", cache_dir=str(args.out / "hf-cache"))
    data = data.remove_columns([c for c in data.column_names if c not in ("prompt", "completion", "label")])
    tok = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype="float32")
    cfg = KTOConfig(
        output_dir=str(args.out / "run"),
        per_device_train_batch_size=4,
        gradient_accumulation_steps=2,
        max_steps=10,
        max_length=256,
        learning_rate=5e-6,
        logging_steps=1000,
        save_strategy="no",
        report_to=[],
        precompute_ref_log_probs=True,
        use_cpu=True,
        dataloader_num_workers=0,
    )
    KTOTrainer(model=model, args=cfg, train_dataset=data, processing_class=tok, callbacks=[Mark()]).train()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, required=True)
    p.add_argument("--cache", type=Path)
    p.add_argument("--data", type=Path)
    p.add_argument("--trl-path", type=Path, default=None)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--before", type=Path, default=None, help="PYTHONPATH of an earlier kto to time alongside")
    p.add_argument("--trl-child", action="store_true")
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    if args.trl_child:
        trl_child(args)
        return 0
    env = {**os.environ, "TQDM_DISABLE": "1"}
    trl_env = {**env, "PYTHONPATH": os.pathsep.join(x for x in (str(args.trl_path or ""), env.get("PYTHONPATH", "")) if x)}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        variants = {"kto-train (second run on its cache)": lambda k: time_to_mark(kto_cmd(args, tmp / f"kto-{k}"), env)}
        if args.before:
            # The package as it was before (another checkout), where the first step began once
            # the separate step-0 check had printed its line.
            before_env = {**env, "PYTHONPATH": str(args.before)}
            variants["kto-train before (separate step-0 check)"] = lambda k: time_to_mark(kto_cmd(args, tmp / f"before-{k}"), before_env, mark="step-0 check:")
        if args.data:
            variants["TRL 1.16 KTOTrainer restart (precompute_ref_log_probs)"] = lambda k: time_to_mark(trl_cmd(args, tmp / "trl"), trl_env)
        for name, run in variants.items():
            print(f"warm-up {name}: {run('warm')[0]:.2f} s", flush=True)
        times: dict[str, list[float]] = {name: [] for name in variants}
        setup = []
        for k in range(args.repeats):
            for name, run in variants.items():
                seconds, line = run(k)
                times[name].append(seconds)
                if m := re.search(r"set-up took ([\d.]+) s, ([\d.]+) s of it loading", line):
                    setup.append((float(m.group(1)), float(m.group(2))))
                print(f"{name}: {seconds:.2f} s  {line}", flush=True)
    print("\nlaunch to first step (s): median / min over", args.repeats)
    for name, ts in times.items():
        print(f"  {name}: {statistics.median(ts):.2f} / {min(ts):.2f}")
    if setup:
        print(
            f"  kto-train set-up: median {statistics.median(s for s, _ in setup):.2f} s, of which model load "
            f"{statistics.median(m for _, m in setup):.2f} s; beyond model load {statistics.median(s - m for s, m in setup):.2f} s"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
