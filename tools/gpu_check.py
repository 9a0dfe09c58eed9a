"""One-call device check of kto-offline on one GPU (issue 5); also runs on CPU with --quick.

Needs only torch, transformers, accelerate, pyarrow, safetensors, click and tokenizers, plus
peft for the LoRA section (a pure-Python wheel: carry it; no polars, no flash-attn, no network); nothing is downloaded: the model is a random-init Llama of
the chosen shape, the tokenizer is built from scratch with `tokenizers`, the data is generated.

  (a) correctness: chunked `kto.formats.compute.logprob.token_logps` vs the naive fp32 log_softmax,
      bf16 and fp32, values and gradients, relative errors (and both vs a float64 truth);
  (b) kto-precompute end to end through `kto.precompute.pipeline.run_precompute` on a realistic
      length mix (32–max_len tokens, 2 × rows sequences): real tokens/s of the scoring phase
      (headline) and of the whole command, MFU vs the matmul ceiling measured in this run,
      padding fraction, peak memory (with prefix sharing, kto-precompute's default, real tokens
      and MFU count what plain scoring would compute: the effective rate); then the same
      scorer vs the naive full-vocab path on a subset (tools/bench_precompute.py);
  (c) kto-train steps: step time and peak memory, policy-only vs resident reference
      (tools/bench_train_step.py);
  (c') kto-train LoRA steps (r = 16, every decoder linear layer): policy-only vs a resident
      reference that is the same base with the adapters disabled (TRL's way under LoRA);
  (c'') `kto-train --mixed-precision fp16` (CUDA only) with the loss scale started at 2^30, so that
      updates overflow: every skipped update said, counted in metrics.jsonl and the run's last
      line, the schedule held at it, every loss finite;
  (d) time to first step of a training run on the existing cache: the data path (manifest +
      open_cache + lengths() + epoch plan + first collate, tokenizer check, model identity),
      as a first run (shard sha256 verified) and a second one; then kto-train's own
      `setup()` + first `step_micro_batches()`, with the model load (`load_policy`) reported apart.
  (e) prefix-shared vs plain reference scoring (issue 13, tools/bench_prefix_sharing.py) on a
      paired mix (long shared prompts) and the synthetic mix (short prompts): ratio of real
      tokens/s and of peak memory, largest per-token difference.
  (f) kto-train's step with and without prefix sharing (issue 21, tools/bench_train_sharing.py)
      on the paired mix: step time ratio, tokens/saved per step, and the
      relative difference of the loss and the gradient norm.

Prints one table at the end and writes JSON to --json-out ($OUT/gpu_check.json if $OUT is set).

Time: a section starts only if its NEED_S guess fits in what is left of --time-budget-s. At the
CUDA default shape, llama-3.2-1b, the sections' guesses add up to 490 s, so under the default
budget of 420 s the last ones (train_lora, scoring_paths) are often skipped. A full run needs
`--time-budget-s 520` (490 s + the matmul ceiling and imports) and a call limit (timeout_s) of
at least 600 s; or run the skipped sections in a second call with --sections. The install first
removes build/ and *.egg-info: a device machine keeps ignored build outputs between calls, and
setuptools copies a stale build/lib into the wheel, deleted modules included.

    rm -rf build *.egg-info && python3 -m pip install -q --no-deps --no-build-isolation . && python tools/gpu_check.py
    python tools/gpu_check.py --shape tiny --quick            # CPU, < 30 s
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _bench_common as C
import bench_precompute
import bench_prefix_sharing
import bench_train_sharing
import bench_train_step

import kto.precompute.pipeline as pipeline
import kto.train.setup as train_setup
from kto.formats.cache import open_cache
from kto.formats.compute.identity import model_identity
from kto.formats.compute.loading import load_tokenizer
from kto.formats.compute.logprob import token_logps
from kto.formats.compute.numerics import parse_numerics
from kto.formats.compute.scoring import token_budget_batches
from kto.formats.compute.sources import resolve_source
from kto.formats.compute.tokenizer_check import require_cache_tokenizer
from kto.precompute.config import PrecomputeConfig
from kto.train.config import TrainConfig
from kto.train.data import MicroBatchShape, collate_micro_batch, epoch_plan
from kto.train.loop import step_micro_batches
from kto.train.rundir import lock_run_dir

# Figures to beat, from issue 5 (H200, random-init Llama-3.2-1B shape, bf16, SDPA).
BASELINE = {
    "naive_tok_s": "149-153k (~51% MFU)",
    "precompute_target": ">= 210k tok/s (~60% MFU)",
    "policy_only": "0.158 s, 10.7 GB",
    "resident": "0.221 s, 13.2 GB",
    "trl_precompute": "0.241 s, 9.2 GB",
}
CORRECTNESS_TOL = {"bfloat16": 2e-2, "float32": 1e-4}
# Every section, in the order the summary reports their errors; NEED_S gives each shape's seconds.
SECTIONS = ("correctness", "precompute", "scoring_paths", "train_cli", "train_fp16", "train", "train_lora", "startup", "prefix_sharing", "train_prefix_sharing")
# Seconds a section needs at the default sizes (H100/H200 guesses, generous): a section starts
# only if that much of --time-budget-s is left, so the whole call stays inside its limit.
NEED_S = {
    "tiny": dict(
        train_cli=30,
        train_fp16=30,
        train_lora=20,
        correctness=5,
        precompute=30,
        startup=10,
        train=30,
        scoring_paths=30,
        prefix_sharing=20,
        train_prefix_sharing=20,
    ),
    "smollm2-135m": dict(
        train_cli=60,
        train_fp16=60,
        train_lora=40,
        correctness=20,
        precompute=60,
        startup=15,
        train=40,
        scoring_paths=40,
        prefix_sharing=40,
        train_prefix_sharing=40,
    ),
    "llama-3.2-1b": dict(
        train_cli=60,
        train_fp16=60,
        train_lora=60,
        correctness=20,
        precompute=90,
        startup=20,
        train=60,
        scoring_paths=60,
        prefix_sharing=60,
        train_prefix_sharing=60,
    ),
    "llama-3.1-8b": dict(
        train_cli=180,
        train_fp16=150,
        train_lora=120,
        correctness=20,
        precompute=240,
        startup=60,
        train=150,
        scoring_paths=90,
        prefix_sharing=120,
        train_prefix_sharing=120,
    ),
}


def parse_args(argv=None) -> argparse.Namespace:
    cuda = torch.cuda.is_available()
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shape", choices=sorted(C.SHAPES), default=None, help="default: tiny with --quick or on CPU, else llama-3.2-1b")
    p.add_argument("--quick", action="store_true", help="tiny sizes, and the tiny shape unless --shape names one (the CPU test)")
    p.add_argument("--rows", type=int, default=None, help="precompute rows (2 sequences each)")
    p.add_argument("--max-len", type=int, default=None)
    p.add_argument("--batch-tokens", type=int, default=None)
    p.add_argument("--time-budget-s", type=float, default=420.0, help="skip later sections past this")
    p.add_argument("--precompute-dtype", default="auto", help="kto-precompute --dtype (auto: amp-bf16 on CUDA, fp32 on CPU)")
    p.add_argument("--train-precisions", default=None, help="comma list of bench_train_step precisions")
    p.add_argument("--json-out", type=Path, default=Path(os.environ["OUT"]) / "gpu_check.json" if os.environ.get("OUT") else Path("gpu_check.json"))
    p.add_argument("--sections", default=None, help="comma list: run only these sections (a rerun after a fix)")
    p.add_argument("--work-dir", type=Path, default=None, help="keep model, data and cache here (default: a temp dir)")
    args = p.parse_args(argv)
    if args.shape is None:
        # --quick alone must build the tiny model, not CUDA's default 1B one under tiny budgets.
        args.shape = "tiny" if args.quick or not cuda else "llama-3.2-1b"
    args.sections = frozenset(args.sections.split(",")) if args.sections else frozenset()
    if unknown := args.sections - set(SECTIONS):
        p.error(f"--sections: unknown {sorted(unknown)}; the sections are {sorted(SECTIONS)}")
    if args.sections & {"startup", "train_cli", "train_fp16"} and "precompute" not in args.sections:
        p.error("--sections: startup, train_cli and train_fp16 run on the precompute section's cache; name precompute too")
    big = args.shape == "llama-3.1-8b"
    defaults = dict(rows=32, max_len=128, batch_tokens=1024) if args.quick else dict(rows=1000 if big else 4000, max_len=2048, batch_tokens=16384)
    for k, v in defaults.items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    if args.train_precisions is None:
        args.train_precisions = "fp32" if not cuda else ("bf16" if big or args.quick else "bf16,amp-bf16")
    return args


class Budget:
    def __init__(self, seconds: float):
        self.end = time.perf_counter() + seconds

    def left(self) -> float:
        return self.end - time.perf_counter()


def check_token_logps(device, quick: bool) -> list[dict]:
    """Chunked vs naive fp32 log_softmax on random inputs: max relative error of log-probs and of
    the gradients (hidden, weight), plus each path's error vs float64 on the same rounded inputs."""
    n, h, v, chunk = (96, 32, 1000, 32) if quick else (4096, 2048, 128256, 1024)
    rows = []
    for dtype in (torch.bfloat16, torch.float32):
        g = torch.Generator(device).manual_seed(0)
        hidden = torch.randn(n, h, device=device, generator=g).to(dtype).requires_grad_()
        weight = (torch.randn(v, h, device=device, generator=g) * h**-0.5).to(dtype).requires_grad_()
        targets = torch.randint(0, v, (n,), device=device, generator=g)
        up = torch.randn(n, device=device, generator=g)
        chunked = token_logps(hidden, weight, targets, chunk_size=chunk)
        c_grads = torch.autograd.grad(chunked, (hidden, weight), up)
        naive = torch.log_softmax((hidden @ weight.T).float(), -1).gather(-1, targets[:, None]).squeeze(1)
        n_grads = torch.autograd.grad(naive, (hidden, weight), up)
        with torch.no_grad():
            truth = torch.log_softmax(hidden.double() @ weight.double().T, -1).gather(-1, targets[:, None]).squeeze(1)
        rel = _rel_err
        row = {
            "dtype": str(dtype).removeprefix("torch."),
            "tokens": n,
            "vocab": v,
            "logp_rel_err": rel(chunked, naive),
            "grad_hidden_rel_err": rel(c_grads[0], n_grads[0]),
            "grad_weight_rel_err": rel(c_grads[1], n_grads[1]),
            "chunked_vs_fp64": rel(chunked, truth),
            "naive_vs_fp64": rel(naive, truth),
        }
        row["ok"] = max(row["logp_rel_err"], row["grad_hidden_rel_err"], row["grad_weight_rel_err"]) < CORRECTNESS_TOL[row["dtype"]]
        rows.append(row)
        del hidden, weight, c_grads, n_grads, naive, chunked, truth
        C.free_memory()
    return rows


def _rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| / max |b|, in float64."""
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


def write_data(path: Path, rows: int, max_len: int, vocab_size: int, seed: int = 0) -> Path:
    """JSONL of random words with lengths from `length_mix`: with the word-level tokenizer a
    prompt of k words is k + 1 tokens (BOS) and a completion of m words m + 1 (EOS)."""
    rng = np.random.default_rng(seed)
    words = lambda n: " ".join(f"w{i}" for i in rng.integers(C.FIRST_WORD_ID, vocab_size, n).tolist())
    with open(path, "w") as f:
        for i, r in enumerate(C.length_mix(rows, max_len, seed)):
            f.write(json.dumps({"prompt": words(r.prompt - 1), "completion": " " + words(r.completion - 1), "label": bool(i % 2)}) + "\n")
    return path


class ScoringProbe:
    """run_precompute's `on_scored` hook: adds up the scoring time and what was scored."""

    def __init__(self, batch_tokens: int):
        self.batch_tokens, self.seconds, self.lengths, self.scored, self.padded, self.lm = batch_tokens, 0.0, [], 0, 0, None

    def __call__(self, shard) -> None:
        self.seconds += shard.seconds
        self.lengths += shard.lengths
        self.scored += shard.completion_tokens
        batches = token_budget_batches(shard.lengths, shard.keys, self.batch_tokens)
        self.padded += sum(len(b) * max(shard.lengths[i] for i in b) for b in batches)
        self.lm = shard.scorer.lm


def precompute_e2e(work: Path, args, device, ceiling: float) -> dict:
    """kto-precompute on generated data through run_precompute (the CLI's code)."""
    # Saved in bf16 on CUDA (half the bytes to write and read); amp-bf16 loads it as fp32.
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    with C.Timer(device) as t_build:
        model_dir = C.save_model_dir(work / "model", args.shape, dtype, device)
    data = write_data(work / "data.jsonl", args.rows, args.max_len, C.SHAPES[args.shape]["vocab_size"])
    cfg = PrecomputeConfig(
        data=(data,),
        model=str(model_dir),
        out=work / "cache",
        max_length=args.max_len,
        batch_tokens=args.batch_tokens,
        rows_per_shard=16 if args.quick else 4096,
        overwrite=True,
        dtype=args.precompute_dtype,
    )
    mem = C.PeakMemory(device).reset()
    probe = ScoringProbe(args.batch_tokens)
    with C.Timer(device) as t:
        manifests = pipeline.run_precompute(cfg, on_scored=probe)
    real = sum(probe.lengths)
    flops = C.scoring_flops(probe.lm.config, C.param_counts(probe.lm)["non_embedding"], probe.lengths, probe.scored)
    del probe.lm
    return {
        "model_dir": str(model_dir),
        "cache_dir": str(cfg.out),
        "numerics": manifests[0].content.dtype,
        "rows": manifests[0].counts.rows,
        "sequences": len(probe.lengths),
        "real_tokens": real,
        "scoring_s": probe.seconds,
        "tokens_per_s": real / probe.seconds,
        "mfu": flops / probe.seconds / ceiling,
        "end_to_end_s": t.seconds,
        "end_to_end_tokens_per_s": real / t.seconds,
        # Padding of the plain layout's batches (the probe sees lengths, not packs).
        "padding_fraction": 1 - real / probe.padded,
        "prefix_sharing": cfg.prefix_sharing,
        "model_build_save_s": t_build.seconds,
        **mem.report(),
    }


def scoring_paths(args, device, ceiling: float) -> list[dict]:
    """kto scorer(s) vs the naive full-vocab path on a subset of the mix, same batches, fresh
    random models: pure bf16 weights on CUDA (the issue's baseline), then kto under amp-bf16
    (kto-precompute's CUDA default) to relate the two; fp32 on CPU."""
    rows = max(8, args.rows // 4)
    seqs = C.mix_sequences(C.length_mix(rows, args.max_len, seed=1), C.SHAPES[args.shape]["vocab_size"], args.max_len, seed=1)
    runs = [("bf16", ("kto", "naive")), ("amp-bf16", ("kto",))] if device.type == "cuda" else [("fp32", ("kto", "naive"))]
    out = []
    for name, paths in runs:
        numerics = parse_numerics(name, device)
        lm = C.build_llama(args.shape, numerics.weights, device).eval()
        out += bench_precompute.compare_paths(lm, *seqs, batch_tokens=args.batch_tokens, device=device, ceiling=ceiling, numerics=numerics, paths=paths)
        del lm
        C.free_memory()
    return out


def prefix_sharing(args, device) -> dict:
    """Prefix-shared vs plain scoring, taking turns (tools/bench_prefix_sharing.py), on a paired
    mix and the synthetic mix, with the numerics kto-precompute uses by default."""
    numerics = parse_numerics(args.precompute_dtype, device)
    lm = C.build_llama(args.shape, numerics.weights, device).eval()
    rows = max(8, args.rows // 4)
    vocab = lm.config.vocab_size
    mixes = {
        "paired": C.paired_sequences(rows, args.max_len, vocab),
        "synthetic": (C.mix_sequences(C.length_mix(rows, args.max_len, seed=2), vocab, args.max_len, seed=2), C.PAD_ID),
    }
    out = {}
    for name, (sequences, pad_id) in mixes.items():
        r = bench_prefix_sharing.compare(
            lm, sequences, pad_id, batch_tokens=args.batch_tokens, device=device, numerics=numerics, repeats=1 if args.quick else 3
        )
        out[name] = {k: v for k, v in r.items() if k != "rows"} | {"numerics": numerics.name, "rows": r["rows"]}
    del lm
    C.free_memory()
    return out


def train_prefix_sharing(args, device) -> dict:
    """kto-train's step, prefix-shared and plain, taking turns, on the paired mix (a chosen and a
    rejected row per prompt), policy of the shape in the first train precision, no checkpointing,
    8 rows a step (kto-train's default; tools/profile_train_sharing.py gives other sizes)."""
    from kto.train.model import disable_dropout

    numerics = bench_train_step.precision_numerics(args.train_precisions.split(",")[0], device)
    lm = C.build_llama(args.shape, numerics.weights, device)
    disable_dropout(lm)
    lm.config.use_cache = False
    batch, steps = (2, 1) if args.quick else (8, 4)  # kto-train's default batch size
    data = bench_train_sharing.paired_steps(2 * batch * steps, args.max_len, lm.config.vocab_size, batch, steps)
    r = bench_train_sharing.compare_train_steps(lm, data, device=device, numerics=numerics, repeats=1 if args.quick else 3, warmup=not args.quick)
    del lm
    C.free_memory()
    return {k: v for k, v in r.items() if k != "rows"} | {"numerics": numerics.name, "rows": r["rows"]}


def train_compare(args, device, precision: str, lora_r: int = 0) -> list[dict]:
    """bench_train_step.compare's two rows (policy-only, resident reference) with its ratios."""
    b, t, iters = (2, 64, 2) if args.quick else (4, 1024, 10)
    r = bench_train_step.compare(
        shape=args.shape,
        precision=precision,
        batch_size=b,
        seq_len=t,
        gradient_checkpointing=True,
        device=device,
        warmup=1 if args.quick else 2,
        iters=iters,
        lora_r=lora_r,
    )
    return [{**row, "time_ratio": r.get("time_ratio"), "memory_ratio": r.get("memory_ratio")} for row in r["rows"]]


def train_steps(args, device) -> list[dict]:
    return [row for precision in args.train_precisions.split(",") for row in train_compare(args, device, precision)]


LORA_R = 16


def train_lora_steps(args, device) -> list[dict]:
    """LoRA steps (peft, kto-train's adapters.add_adapters) on the shape, weights in the first
    train precision: policy-only vs resident reference = the base with adapters disabled."""
    return train_compare(args, device, args.train_precisions.split(",")[0], lora_r=LORA_R)


def startup(cache_dir: Path, model_dir: Path, device, batch_size: int, out_dir: Path) -> dict:
    """Time to first step of kto-train on an existing cache, model load apart.

    data path (the issue's list): manifest + open_cache, tokenizer check, model identity,
    lengths(), epoch plan, first collate. Run twice: the first run verifies the shard's sha256
    and records it, the second (what a second training run pays) reuses the record.
    real setup: `check_inputs` + `setup` (under the run directory's lock) + `step_micro_batches`, the code kto-train runs,
    with its model load (`Run.model_load_s`, timed by setup itself) reported apart; what is left includes creating
    the Accelerator and moving the model to the device in accelerator.prepare.
    """
    out = {}
    for run in ("first_run", "second_run"):
        with C.Timer(device) as t:
            cache = open_cache(cache_dir)
            source = resolve_source(str(model_dir))
            tok = load_tokenizer(source)
            require_cache_tokenizer(tok, cache.manifest.content.tokenizer, str(model_dir))
            is_reference = cache.manifest.content.scored_with(model_identity(source))
            plan = epoch_plan(cache.lengths(), MicroBatchShape(batch_size, 1, 1), seed=0, epoch=0)
            collate_micro_batch(cache, plan[0, 0, 0], tok.pad_token_id, with_token_logps=is_reference).to(device)
        out[f"{run}_s"] = t.seconds
    # kto-train collates each step's batch between optimizer steps, so this adds to step time.
    later = [plan[k, 0, 0] for k in range(1, min(6, len(plan)))]
    if later:
        with C.Timer(device) as t:
            for idx in later:
                collate_micro_batch(cache, idx, tok.pad_token_id).to(device)
        out["collate_per_step_s"] = t.seconds / len(later)
    cfg = TrainConfig(cache=cache_dir, model=str(model_dir), out=out_dir, batch_size=batch_size, max_steps=1)
    with C.Timer(device) as t:  # what kto-train's train() does before its first step
        inputs = train_setup.check_inputs(cfg)
        with lock_run_dir(cfg.out, inputs.accelerator):
            run = train_setup.setup(inputs)
            step_micro_batches(run, run.position)
    # setup() times its own model load (Run.model_load_s).
    out.update(setup_s=t.seconds, model_load_s=run.model_load_s, setup_excl_model_load_s=t.seconds - run.model_load_s)
    del run
    C.free_memory()
    return out


def run_kto_train(cmd: list[str], out_dir: Path, timeout_s: float):
    """Run a kto-train command line within `timeout_s`; (the finished process, with its output,
    and metrics.jsonl's training lines). A timeout or an exit other than 0 raises."""
    import subprocess

    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=max(timeout_s, 1.0))
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"kto-train ran past the {timeout_s:.0f} s left of the time budget") from None
    if done.returncode != 0:
        raise RuntimeError(f"kto-train exited {done.returncode}: {(done.stderr or done.stdout).strip()[-600:]}")
    lines = [json.loads(x) for x in (out_dir / "metrics.jsonl").read_text().splitlines() if x.strip()]
    return done, [x for x in lines if "loss" in x]


def train_cli(cache_dir: Path, model_dir: Path, out_dir: Path, quick: bool, timeout_s: float) -> dict:
    """`kto-train` itself, in a subprocess, on the precompute section's cache: a few steps at the
    defaults (fp32 weights, mixed precision auto = bf16 on CUDA, the step-0 check against the
    cached log-probs, since the policy is the reference) and the final save. What the sections
    above time piece by piece, run as a user runs it. The cache's rows each have their own
    prompt, so prefix sharing (on by default) finds nothing to pack: `tokens_saved` stays 0, and
    the packed step is train_prefix_sharing's to check."""
    steps = 2 if quick else 4
    cmd = [sys.executable, "-m", "kto.train.cli", "--cache", str(cache_dir), "--model", str(model_dir), "--out", str(out_dir)]
    cmd += ["--max-steps", str(steps), "--log-every", "1", "--batch-size", "2" if quick else "8"]
    t0 = time.perf_counter()
    done, train = run_kto_train(cmd, out_dir, timeout_s)
    wall = time.perf_counter() - t0
    if len(train) != steps or not all(np.isfinite(x["loss"]) for x in train):
        raise RuntimeError(f"kto-train wrote {len(train)} training lines for {steps} steps: {train[-1:]}")
    drift = [x for x in done.stdout.splitlines() + done.stderr.splitlines() if "step-0" in x]
    return {
        "wall_s": wall,
        "steps": steps,
        "loss": [x["loss"] for x in train],
        "tokens_saved": [x.get("tokens/saved") for x in train],
        "step0_check": drift[:2],
        "final_saved": (out_dir / "final").is_dir(),
    }


# Run in the kto-train subprocess of train_fp16: a loss scale of 2^30 makes the first updates
# overflow fp16 (the default 2^16 seldom does on a random model), so the skip path runs, and the
# scale halves at each skip until steps train.
_FORCED_SCALE = """
import sys, torch
_init = torch.amp.GradScaler.__init__
def _forced(self, *args, **kwargs):
    kwargs["init_scale"] = 2.0**30
    _init(self, *args, **kwargs)
torch.amp.GradScaler.__init__ = _forced
from kto.train.cli import main
sys.argv[0] = "kto-train"
main()
"""


def train_fp16(cache_dir: Path, model_dir: Path, out_dir: Path, timeout_s: float) -> dict:
    """`kto-train --mixed-precision fp16` (CUDA only), with the loss scaler started at 2^30 so
    that its first updates overflow: each skipped update must be said once on stderr, counted in
    metrics.jsonl's `updates_skipped` and in the run's last line, and must leave the linear
    schedule where it was (the next step trains with the same lr); every loss stays finite."""
    import re

    steps = 24  # each skip halves the scale: from 2^30, about 14 skips reach 2^16, the default
    cmd = [sys.executable, "-c", _FORCED_SCALE, "--cache", str(cache_dir), "--model", str(model_dir), "--out", str(out_dir)]
    cmd += ["--max-steps", str(steps), "--log-every", "1", "--batch-size", "4", "--mixed-precision", "fp16", "--lr-schedule", "linear", "--warmup-ratio", "0"]
    done, train = run_kto_train(cmd, out_dir, timeout_s)
    said = [int(m.group(1)) for m in re.finditer(r"step (\d+): fp16 loss scaling skipped this update", done.stderr + done.stdout)]
    counted = [x["step"] for x in train if x.get("updates_skipped")]
    last = [x for x in (done.stderr + done.stdout).splitlines() if "fp16 loss scaling skipped" in x and "of this run" in x]
    lr = {x["step"]: x["lr"] for x in train}
    # A skipped update does not step the schedule: the step after it trains with the same rate.
    schedule_held = all(lr.get(s + 1, lr[s]) == lr[s] for s in said if s in lr)
    schedule_moved = all(lr[s + 1] < lr[s] for s in lr if s + 1 in lr and s not in said)
    ok = (
        len(train) == steps
        and all(np.isfinite(x["loss"]) for x in train)
        and said == counted
        and 0 < len(said) < steps  # some skipped, and some trained: schedule_moved is not vacuous
        and bool(last) == bool(said)
        and schedule_held
        and schedule_moved
    )
    return {
        "ok": ok,
        "steps": steps,
        "skipped_steps_said": said,
        "skipped_steps_in_metrics": counted,
        "last_line": last[:1],
        "schedule_held_at_skips": schedule_held,
        "schedule_moved_otherwise": schedule_moved,
        "loss": [x["loss"] for x in train],
    }


def run_section(name: str, results: dict, budget: Budget, shape: str, fn, only: frozenset[str] = frozenset()):
    """Run one section (unless `only` names others); a crash or a spent budget is recorded, not
    raised, so the JSON survives."""
    if only and name not in only:
        return None
    need_s = NEED_S[shape][name]
    if budget.left() < need_s:
        results[name] = {"skipped": f"time budget ({budget.left():.0f} s left, ~{need_s:.0f} s needed)"}
        return None
    t0 = time.perf_counter()
    try:
        results[name] = fn()
    except Exception as exc:
        traceback.print_exc()
        results[name] = {"error": f"{type(exc).__name__}: {exc}"[:300]}
    print(f"[gpu_check] {name}: {time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)
    return results[name]


def summary_rows(r: dict) -> list[dict]:
    """The final table: one line per figure, with the issue's baseline or target beside it."""
    rows = [{"check": "matmul ceiling TFLOP/s", "value": r["matmul_ceiling"]["flops_per_s"] / 1e12, "target": "751 (H200 bf16)"}]
    for c in r.get("correctness") or []:
        if isinstance(c, dict) and "dtype" in c:
            rows.append(
                {
                    "check": f"token_logps rel err {c['dtype']} (logp/grad_h/grad_w)",
                    "value": f"{c['logp_rel_err']:.1e}/{c['grad_hidden_rel_err']:.1e}/{c['grad_weight_rel_err']:.1e}",
                    "target": f"< {CORRECTNESS_TOL[c['dtype']]:g} ({'ok' if c['ok'] else 'FAIL'})",
                }
            )
    p = r.get("precompute", {})
    if "tokens_per_s" in p:
        rows += [
            {"check": f"precompute real tok/s (scoring, {p['numerics']})", "value": p["tokens_per_s"], "target": BASELINE["precompute_target"]},
            {"check": "precompute MFU", "value": p["mfu"], "target": "~0.60"},
            {"check": "precompute real tok/s (end to end)", "value": p["end_to_end_tokens_per_s"], "target": "TRL ~22k"},
            {"check": "precompute padding fraction", "value": p["padding_fraction"], "target": "< 0.10"},
            {"check": "precompute peak GB", "value": p["peak_gb"], "target": ""},
        ]
    for s in r.get("scoring_paths") or []:
        if isinstance(s, dict) and "tokens_per_s" in s:
            rows.append(
                {
                    "check": f"scoring {s['path']} {s['numerics']}: tok/s, MFU, peak GB",
                    "value": f"{s['tokens_per_s']:,.0f}, {s['mfu']:.3f}, {s['peak_gb']:.2f}",
                    "target": {"naive": BASELINE["naive_tok_s"], "kto": "peak <= 0.5x naive"}.get(s["path"], "vs kto"),
                }
            )
    for t in r.get("train") or []:
        if isinstance(t, dict) and "variant" in t:
            value = t.get("error") or f"{t['step_s']:.3f} s, {t['peak_gb']:.2f} GB"
            rows.append(
                {
                    "check": f"train {t['variant']} {t['precision']} {t['batch']} ckpt",
                    "value": value,
                    "target": {"policy-only": BASELINE["policy_only"], "resident-reference": BASELINE["resident"]}.get(t["variant"], "vs policy-only"),
                }
            )
            if t["variant"] == "resident-reference" and t.get("time_ratio"):
                rows.append(
                    {
                        "check": "train ratio policy-only/resident (time, mem)",
                        "value": f"{t['time_ratio']:.3f}, {t['memory_ratio']:.3f}",
                        "target": "~0.714 floor",
                    }
                )
    for t in r.get("train_lora") or []:
        if isinstance(t, dict) and "variant" in t:
            value = t.get("error") or f"{t['step_s']:.3f} s, {t['peak_gb']:.2f} GB"
            ref = "base with adapters disabled" if t["variant"] == "resident-reference" else "cached reference"
            rows.append({"check": f"train LoRA r{t['lora_r']} {t['variant']} {t['precision']} {t['batch']}", "value": value, "target": ref})
    for name, m in (r.get("prefix_sharing") or {}).items():
        if isinstance(m, dict) and "tokens_per_s_ratio" in m:
            rows.append(
                {
                    "check": f"prefix-shared/plain {name} {m['numerics']}: tok/s, peak mem, max |dlogp|",
                    "value": f"{m['tokens_per_s_ratio']:.2f}, {m['peak_memory_ratio']:.2f}, {m['max_abs_token_diff']:.1e}",
                    "target": "paired > 1; synthetic >= 0.97",
                }
            )
    t = r.get("train_prefix_sharing") or {}
    if "best_time_ratio" in t:
        rows.append(
            {
                "check": f"train step prefix-shared/plain {t['numerics']}: time, saved, loss/grad-norm rel diff",
                "value": f"{t['best_time_ratio']:.2f}, {t['saved_fraction']:.1%}, {t['max_loss_rel_diff']:.1e}/{t['grad_norm_rel_diff']:.1e}",
                "target": "time <= 0.80 (paired)",
            }
        )
        waits = [row.get("device_waits_first_step") for row in t.get("rows", [])]
        if None not in waits and len(waits) == 2:
            rows.append({"check": "train step device waits (sync debug mode), plain / prefix-shared", "value": f"{waits[0]} / {waits[1]}", "target": ""})
    s = r.get("startup", {})
    if "second_run_s" in s:
        rows += [
            {"check": "2nd run to first batch, data path s", "value": s["second_run_s"], "target": "< 1"},
            {"check": "1st run to first batch, data path s (sha256)", "value": s["first_run_s"], "target": ""},
            {"check": "kto-train setup()+first batch excl. model load s", "value": s["setup_excl_model_load_s"], "target": "< 1"},
            {"check": "kto-train model load s (load_policy)", "value": s["model_load_s"], "target": ""},
        ]
        if "collate_per_step_s" in s:
            rows.append({"check": "collate per step s (on the step's critical path)", "value": s["collate_per_step_s"], "target": ""})
    c = r.get("train_cli", {})
    if "loss" in c:
        rows.append(
            {
                "check": f"kto-train CLI, {c['steps']} steps + final save: wall s, losses",
                "value": f"{c['wall_s']:.1f}, " + "/".join(f"{x:.4f}" for x in c["loss"]),
                "target": "exit 0, finite",
            }
        )
        rows += [{"check": "kto-train CLI step-0 check", "value": line[:100], "target": ""} for line in c["step0_check"]]
    f = r.get("train_fp16", {})
    if "ok" in f:
        rows.append(
            {
                "check": "kto-train fp16, loss scale 2^30: skips said / in metrics; lr held at them",
                "value": f"{f['skipped_steps_said']} / {f['skipped_steps_in_metrics']}; {f['schedule_held_at_skips']}",
                "target": f"equal, some, True ({'ok' if f['ok'] else 'FAIL'})",
            }
        )
    for name in SECTIONS:
        if isinstance(r.get(name), dict) and ("error" in r[name] or "skipped" in r[name]):
            rows.append({"check": name, "value": r[name].get("error") or r[name].get("skipped"), "target": ""})
    rows.append({"check": "polars imported", "value": r["polars_imported"], "target": "False"})
    return rows


def main(argv=None) -> int:
    args = parse_args(argv)
    budget = Budget(args.time_budget_s)
    device = C.default_device()
    results: dict = {"args": {k: str(v) for k, v in vars(args).items()}, "versions": C.versions(device)}
    results["matmul_ceiling"] = C.matmul_ceiling(device, n=1024 if args.quick else None)
    ceiling = results["matmul_ceiling"]["flops_per_s"]
    with contextlib.ExitStack() as stack:
        work = args.work_dir or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="gpu_check-")))
        work.mkdir(parents=True, exist_ok=True)
        # NEED_S is per shape at the default sizes; --quick's sizes fit tiny's budgets whatever the shape.
        shape = "tiny" if args.quick else args.shape
        run_section("correctness", results, budget, shape, lambda: check_token_logps(device, args.quick), args.sections)
        # issue 21's sections first: its GPU figures were the ones pending.
        run_section("prefix_sharing", results, budget, shape, lambda: prefix_sharing(args, device), args.sections)
        run_section("train_prefix_sharing", results, budget, shape, lambda: train_prefix_sharing(args, device), args.sections)
        pre = run_section("precompute", results, budget, shape, lambda: precompute_e2e(work, args, device, ceiling), args.sections)
        if isinstance(pre, dict) and "cache_dir" in pre:
            cache_dir, model_dir = Path(pre["cache_dir"]), Path(pre["model_dir"])
            run_section("startup", results, budget, shape, lambda: startup(cache_dir, model_dir, device, 2 if args.quick else 4, work / "run"), args.sections)
            run_section(
                "train_cli", results, budget, shape, lambda: train_cli(cache_dir, model_dir, work / "cli_run", args.quick, budget.left()), args.sections
            )
            if device.type == "cuda":  # accelerate runs no fp16 autocast on CPU (kto-train refuses it there)
                run_section("train_fp16", results, budget, shape, lambda: train_fp16(cache_dir, model_dir, work / "fp16_run", budget.left()), args.sections)
        run_section("train", results, budget, shape, lambda: train_steps(args, device), args.sections)
        run_section("train_lora", results, budget, shape, lambda: train_lora_steps(args, device), args.sections)
        run_section("scoring_paths", results, budget, shape, lambda: scoring_paths(args, device, ceiling), args.sections)
    results["polars_imported"] = "polars" in sys.modules
    results["elapsed_s"] = args.time_budget_s - budget.left()
    failed = [n for n in SECTIONS if isinstance(results.get(n), dict) and "error" in results[n]]
    failed += ["train_fp16"] if results.get("train_fp16", {}).get("ok") is False else []
    failed += ["correctness"] if any(not c.get("ok", True) for c in results.get("correctness") or [] if isinstance(c, dict)) else []
    results["ok"] = not failed and not results["polars_imported"]
    results["versions_at_end"] = info = C.versions(device)
    print(f"\n{C.describe(info)} | shape {args.shape} | {args.rows} rows, lengths 32-{args.max_len} | {results['elapsed_s']:.0f} s")
    C.print_table("gpu_check summary", summary_rows(results))
    args.json_out.parent.mkdir(parents=True, exist_ok=True)
    args.json_out.write_text(json.dumps(results, indent=2, default=str))
    print(f"\nwrote {args.json_out}" + ("" if results["ok"] else f"; FAILED: {sorted(set(failed)) or 'polars imported'}"))
    return 0 if results["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
