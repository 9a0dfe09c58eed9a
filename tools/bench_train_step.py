"""One KTO training step: kto's policy-only step vs the same step with a resident reference (issue 3).

  policy-only (kto-train): `kto.train.step.forward_backward` (KL pass under no_grad, policy
      forward/backward through `CompletionLogps`, `kto_loss`) then `optimizer_step` (AdamW);
      the reference numbers come from the cache, so no reference model is in memory.
  resident reference (TRL's KTOTrainer without precompute): the reference model, a frozen copy
      kept in memory, scores the policy and KL sequences under no_grad every step, then the same
      policy work as above.

Both variants call the package's real functions with the same batch, precision and optimizer;
only a small stand-in replaces the accelerate.Accelerator (one process, no DDP), and a wrapper
running `kto.formats.compute.numerics.Numerics.context` plays the part of accelerate's mixed precision.
Printed per variant: median step time after warmup, peak memory (weights + gradients + AdamW
state + activations), and the ratios policy-only / resident (the FLOP floor is 5/7 with
gradient checkpointing: policy forward + recompute + backward + KL forward = 2+2+4+2 = 10 vs 14
units with the 2+2 reference forwards; 8/12 = 2/3 without). If `import trl` works, TRL's
KTOTrainer is timed too.

    python tools/bench_train_step.py                                     # CPU: small, ~1-2 min
    python tools/bench_train_step.py --shape llama-3.2-1b --batch-size 4 --seq-len 1024 --gradient-checkpointing
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import functools
import json
import statistics
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _bench_common as C

from kto.formats import schema as S
from kto.formats.compute.logprob import CompletionLogps, make_token_batch, sequence_sums
from kto.formats.compute.numerics import Numerics, parse_numerics
from kto.train.config import TrainConfig
from kto.train.data import KTOMicroBatch, row_columns
from kto.train.loss import LossType
from kto.train.model import disable_dropout
from kto.train.optim import build_optimizer, build_scheduler
from kto.train.step import LossSettings, forward_backward, optimizer_step

PRECISIONS = ("bf16", "amp-bf16", "fp32", "fp32-autocast-bf16")
ALIASES = {"fp32-autocast-bf16": "amp-bf16"}
SETTINGS = LossSettings(beta=0.1, desirable_weight=1.0, undesirable_weight=1.0, loss_type=LossType.KTO, sft_weight=0.0, kl_scope="step")


class WithNumerics(torch.nn.Module):
    """Runs the wrapped forward in `numerics.context` (autocast for amp-*), as accelerate.prepare
    does for mixed precision; backward then runs outside autocast, as it should."""

    def __init__(self, inner: torch.nn.Module, numerics: Numerics):
        super().__init__()
        self.inner, self.numerics = inner, numerics

    def forward(self, *args, **kwargs):
        with self.numerics.context(args[0].device.type):
            return self.inner(*args, **kwargs)


def precision_numerics(precision: str, device) -> Numerics:
    """bf16 (pure bf16 weights), amp-bf16 (fp32 weights under bf16 autocast: kto-train's CUDA
    default; `fp32-autocast-bf16` is an alias) or fp32, in kto.formats.compute.numerics' names."""
    return parse_numerics(ALIASES.get(precision, precision), device)


def make_policy(shape: str, precision: str, device, gradient_checkpointing: bool, lora_r: int = 0):
    """Random-init policy set up as kto-train sets it up (dropout off, no KV cache, train mode);
    with lora_r, kto-train's LoRA adapters (every decoder linear layer, B = 0) on a frozen base."""
    lm = C.build_llama(shape, precision_numerics(precision, device).weights, device)
    disable_dropout(lm)
    if gradient_checkpointing:
        lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    lm.config.use_cache = False
    if lora_r:
        from kto.train.adapters import add_adapters

        cfg = SimpleNamespace(
            lora_r=lora_r,
            lora_alpha=2.0 * lora_r,
            lora_dropout=0.0,
            lora_target_modules=None,
            seed=0,
            load_in_4bit=False,
            load_in_8bit=False,
            gradient_checkpointing=gradient_checkpointing,
            model=shape,
        )
        lm = add_adapters(cfg, lm)
    return lm.train()


class AdaptersDisabled(torch.nn.Module):
    """The resident reference under LoRA, TRL's way: the policy's own base with the adapters
    switched off (`PeftModel.disable_adapter`), so it costs no weight memory, only compute."""

    def __init__(self, scorer: torch.nn.Module, peft_model):
        super().__init__()
        self.scorer, self.peft_model = scorer, peft_model

    def forward(self, *args, **kwargs):
        with self.peft_model.disable_adapter():
            return self.scorer(*args, **kwargs)


def synthetic_batch(vocab_size: int, batch_size: int, seq_len: int, seed: int = 0) -> KTOMicroBatch:
    """B rows of exactly seq_len tokens (prompt = seq_len // 4), half desirable; each row's KL
    sequence is its prompt with the next row's completion. Reference sums are zeros here and
    filled by `with_reference_logps`."""
    g = torch.Generator().manual_seed(seed)
    n_prompt = max(1, seq_len // 4)
    prompts = [torch.randint(C.FIRST_WORD_ID, vocab_size, (n_prompt,), generator=g).tolist() for _ in range(batch_size)]
    completions = [torch.randint(C.FIRST_WORD_ID, vocab_size, (seq_len - n_prompt,), generator=g).tolist() for _ in range(batch_size)]
    kl = completions[1:] + completions[:1]
    zeros = torch.zeros(batch_size, dtype=torch.float64)
    return KTOMicroBatch(
        policy=make_token_batch(prompts, completions, C.PAD_ID),
        kl=make_token_batch(prompts, kl, C.PAD_ID),
        columns=row_columns(ref_logp=zeros, ref_kl_logp=zeros.clone(), desirable=torch.arange(batch_size) % 2 == 0),
        valid=torch.ones(batch_size, dtype=torch.bool),
    )


def with_reference_logps(scorer, batch: KTOMicroBatch) -> KTOMicroBatch:
    """The batch with ref_logp / ref_kl_logp computed by `scorer` under no_grad (the resident
    reference's per-step work; kto-precompute does the same once and caches it)."""
    with torch.no_grad():
        ref = sequence_sums(scorer(batch.policy.input_ids, batch.policy.score_mask), batch.policy.score_mask)
        ref_kl = sequence_sums(scorer(batch.kl.input_ids, batch.kl.score_mask), batch.kl.score_mask)
    return dataclasses.replace(batch, columns={**batch.columns, S.REF_LOGP: ref, S.REF_KL_LOGP: ref_kl})


def train_step(model, batch: KTOMicroBatch, optimizer, scheduler, ref_scorer=None) -> None:
    """One optimizer step of kto-train (`ref_scorer` None) or of a resident-reference trainer."""
    acc = C.OneProcess()
    if ref_scorer is not None:
        batch = with_reference_logps(ref_scorer, batch)
    forward_backward(model, [batch], SETTINGS, acc)
    optimizer_step(model, optimizer, scheduler, acc, max_grad_norm=1.0)


def time_steps(step, device, warmup: int, iters: int) -> list[float]:
    for _ in range(warmup):
        step()
    times = []
    for _ in range(iters):
        with C.Timer(device) as t:
            step()
        times.append(t.seconds)
    return times


def run_variant(name: str, **setup) -> dict:
    """Build a fresh policy (and a reference copy for 'resident-reference'), time `iters` steps.

    `setup`: the keyword arguments of `_time_variant` (shape, precision, batch_size, seq_len,
    gradient_checkpointing, device; warmup, iters and lora_r have defaults there).
    Peak memory is reset before the first (warmup) step, so it includes AdamW's state, which is
    allocated then. An out-of-memory error becomes a result row instead of a crash.
    """
    mem = C.PeakMemory(setup["device"])
    batch = f"{setup['batch_size']}x{setup['seq_len']}"
    row = {"variant": name, "precision": setup["precision"], "batch": batch, "grad_ckpt": setup["gradient_checkpointing"], "lora_r": setup.get("lora_r", 0)}
    try:
        row.update(_time_variant(name, mem, **setup))
    except torch.OutOfMemoryError:
        row.update(error="out of memory", peak_gb=mem.peak_gb())
    C.free_memory()  # the models and optimizer state of _time_variant are unreachable by now
    return row


def _time_variant(
    name: str, mem: C.PeakMemory, *, shape, precision, batch_size, seq_len, gradient_checkpointing, device, warmup: int = 1, iters: int = 3, lora_r: int = 0
) -> dict:
    lm = make_policy(shape, precision, device, gradient_checkpointing, lora_r)
    numerics = precision_numerics(precision, device)
    model = WithNumerics(CompletionLogps(lm), numerics)
    batch = synthetic_batch(lm.config.vocab_size, batch_size, seq_len).to(device)
    ref_scorer = None
    if name.startswith("resident-reference"):
        ref_scorer = AdaptersDisabled(model, lm) if lora_r else WithNumerics(CompletionLogps(copy.deepcopy(lm).eval().requires_grad_(False)), numerics)
    # At step 0 the policy is the reference; policy-only reads these numbers "from the cache".
    batch = with_reference_logps(ref_scorer or model, batch)
    adamw = {f.name: f.default for f in dataclasses.fields(TrainConfig) if f.name.startswith("adam_")}  # kto-train's defaults
    optimizer = build_optimizer(model, SimpleNamespace(lr=1e-6, weight_decay=0.0, **adamw))
    scheduler = build_scheduler(optimizer, SimpleNamespace(warmup_ratio=0.0, warmup_steps=0, lr_schedule="constant", lr_schedule_kwargs={}), warmup + iters)
    mem.reset()
    times = time_steps(functools.partial(train_step, model, batch, optimizer, scheduler, ref_scorer), device, warmup, iters)
    step_s = statistics.median(times)
    tokens = batch.policy.num_tokens + batch.kl.num_tokens
    return {"step_s": step_s, "min_step_s": min(times), "tokens_per_s": tokens / step_s, **mem.report()}


def compare(**setup) -> dict:
    """Both variants on the same `setup` (run_variant's), plus the ratios policy-only / resident."""
    rows = [run_variant(v, **setup) for v in ("policy-only", "resident-reference")]
    out = {"rows": rows}
    if all("step_s" in r for r in rows[:2]):
        out["time_ratio"] = rows[0]["step_s"] / rows[1]["step_s"]
        out["memory_ratio"] = rows[0]["peak_gb"] / rows[1]["peak_gb"]
    return out


def run_trl(
    *, shape: str, precision: str, batch_size: int, seq_len: int, gradient_checkpointing: bool, device, steps: int = 4, precompute_ref: bool = False
) -> dict:
    """TRL's KTOTrainer on text of the same shape (word-level tokenizer: 1 word = 1 token).

    Step time = median over steps after the first, measured by a callback around each optimizer
    step; peak memory from the start of train(). init_s is KTOTrainer's construction (dataset
    tokenization and, with precompute_ref, model hashing and its reference pass); with
    precompute_ref no reference model is passed, so none stays resident while training.
    """
    import tempfile

    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import KTOConfig, KTOTrainer

    numerics = precision_numerics(precision, device)
    tok = C.build_tokenizer(C.SHAPES[shape]["vocab_size"])
    n_prompt = max(1, seq_len // 4) - 1  # BOS is added in front of the prompt
    n_completion = seq_len - n_prompt - 2  # and EOS after the completion
    g = torch.Generator().manual_seed(0)
    words = lambda n: " ".join(f"w{i}" for i in torch.randint(C.FIRST_WORD_ID, tok.vocab_size, (n,), generator=g).tolist())
    n_rows = batch_size * steps
    data = Dataset.from_list([{"prompt": words(n_prompt), "completion": " " + words(n_completion), "label": i % 2 == 0} for i in range(n_rows)])
    lm = make_policy(shape, precision, device, gradient_checkpointing)
    ref = None if precompute_ref else copy.deepcopy(lm).eval().requires_grad_(False)
    times: list[float] = []

    class StepTimer(TrainerCallback):
        def on_step_begin(self, *a, **k):
            C.sync(device)
            self.t = time.perf_counter()

        def on_step_end(self, *a, **k):
            C.sync(device)
            times.append(time.perf_counter() - self.t)

    mem = C.PeakMemory(device)
    with tempfile.TemporaryDirectory() as out:
        cfg = KTOConfig(
            output_dir=out,
            per_device_train_batch_size=batch_size,
            max_steps=steps,
            max_length=seq_len,
            learning_rate=1e-6,
            bf16=numerics.autocast is not None,
            gradient_checkpointing=gradient_checkpointing,
            gradient_checkpointing_kwargs={"use_reentrant": False},
            logging_steps=1000,
            save_strategy="no",
            report_to=[],
            precompute_ref_log_probs=precompute_ref,
            use_cpu=device.type == "cpu",
            dataloader_num_workers=0,
            remove_unused_columns=False,
        )
        with C.Timer(device) as init:
            trainer = KTOTrainer(model=lm, ref_model=ref, args=cfg, train_dataset=data, processing_class=tok, callbacks=[StepTimer()])
        mem.reset()
        trainer.train()
    steady = times[1:] or times
    row = {
        "variant": f"trl-{'precompute-ref' if precompute_ref else 'resident-reference'}",
        "precision": precision,
        "batch": f"{batch_size}x{seq_len}",
        "grad_ckpt": gradient_checkpointing,
        "step_s": statistics.median(steady),
        "min_step_s": min(steady),
        **mem.report(),
        "init_s": init.seconds,
    }
    del trainer, lm, ref
    C.free_memory()
    return row


def trl_rows(device, steps: int, **kw) -> list[dict]:
    try:
        import trl  # noqa: F401
    except ImportError:
        print("TRL: skipped (`import trl` failed; pip install trl datasets to compare)")
        return []
    rows = []
    for precompute_ref in (False, True):
        try:
            rows.append(run_trl(device=device, steps=steps, precompute_ref=precompute_ref, **kw))
        except torch.OutOfMemoryError:
            rows.append({"variant": f"trl (precompute_ref={precompute_ref})", "error": "out of memory"})
            C.free_memory()
        except Exception as exc:  # a TRL API change must not hide the figures above
            rows.append({"variant": f"trl (precompute_ref={precompute_ref})", "error": f"{type(exc).__name__}: {exc}"[:200]})
    return rows


def parse_args(argv=None) -> argparse.Namespace:
    cuda = torch.cuda.is_available()
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shape", choices=sorted(C.SHAPES), default="llama-3.2-1b" if cuda else "smollm2-135m")
    p.add_argument("--batch-size", type=int, default=4 if cuda else 2)
    p.add_argument("--seq-len", type=int, default=1024 if cuda else 256)
    p.add_argument("--gradient-checkpointing", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--precision", choices=PRECISIONS, default="bf16" if cuda else "fp32")
    p.add_argument("--device", default="cuda" if cuda else "cpu")
    p.add_argument("--warmup", type=int, default=2 if cuda else 1)
    p.add_argument("--iters", type=int, default=10 if cuda else 2)
    p.add_argument("--trl", action=argparse.BooleanOptionalAction, default=True, help="also time TRL's KTOTrainer if installed")
    p.add_argument("--json-out", type=Path, default=None)
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device)
    cfg = dict(
        shape=args.shape,
        precision=args.precision,
        batch_size=args.batch_size,
        seq_len=args.seq_len,
        gradient_checkpointing=args.gradient_checkpointing,
        device=device,
    )
    result = compare(**cfg, warmup=args.warmup, iters=args.iters)
    rows = result["rows"] + (trl_rows(steps=args.warmup + args.iters + 1, **cfg) if args.trl else [])
    info = C.versions(device)
    print(
        f"{C.describe(info)} | shape {args.shape} ({args.precision}, {args.batch_size}x{args.seq_len}, "
        f"gradient checkpointing {'on' if args.gradient_checkpointing else 'off'})"
    )
    C.print_table("KTO step: policy-only (kto-train) vs resident reference", rows)
    if "time_ratio" in result:
        print(
            f"\npolicy-only / resident: time {result['time_ratio']:.3f}, peak memory {result['memory_ratio']:.3f} "
            f"(FLOP floor {'5/7 = 0.714' if args.gradient_checkpointing else '2/3 = 0.667'})"
        )
    if args.json_out:
        args.json_out.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "versions": info, **result, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
