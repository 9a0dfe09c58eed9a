"""kto-train: set up, then for each step: batches → forward/backward → optimizer → log → save.

The reference model is never loaded: its numbers come from the cache.
"""

from __future__ import annotations

import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

from kto.formats.errors import InputError
from kto.formats.logprob import CompletionLogps
from kto.formats.numerics import train_numerics
from kto.formats.models import load_causal_lm, load_tokenizer, model_identity, resolve_source

from .checkpoint import Position, latest_checkpoint, load_training_state, save_checkpoint, save_model_dir
from .checks import DEFAULT_DRIFT_TOLERANCE, check_tokenizer, class_balance, step0_drift
from .config import TrainConfig
from .data import BatchShape, ShardedCache, collate, epoch_plan, steps_per_epoch
from .evaluate import evaluate
from .metrics import MetricsWriter
from .optim import build_optimizer, build_scheduler
from .step import LossSettings, all_reduce_sum, forward_backward, optimizer_step, summarize

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def log(msg: str, accelerator) -> None:
    if accelerator.is_main_process:
        print(msg, file=sys.stderr, flush=True)


def make_accelerator(cfg: TrainConfig):
    from accelerate import Accelerator

    mixed = cfg.mixed_precision
    if mixed == "auto":
        mixed = "bf16" if torch.cuda.is_available() else "no"
    log_with = None if cfg.report_to == "none" else cfg.report_to
    # gradient_accumulation_steps stays 1: step.py accumulates and normalises explicitly.
    # cpu=True without CUDA: accelerate only starts a gloo group for several CPU processes then.
    return Accelerator(mixed_precision=mixed, log_with=log_with, project_dir=str(cfg.out), cpu=not torch.cuda.is_available())


def disable_dropout(lm) -> None:
    for module in lm.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    for name in ("attention_dropout", "hidden_dropout", "resid_pdrop", "embd_pdrop", "attn_pdrop", "dropout"):
        if isinstance(getattr(lm.config, name, None), float):
            setattr(lm.config, name, 0.0)


def apply_class_balance(cfg: TrainConfig, counts, accelerator) -> TrainConfig:
    b = class_balance(counts.desirable, counts.undesirable, cfg.desirable_weight, cfg.undesirable_weight)
    log(f"classes: n_D = {b.n_desirable}, n_U = {b.n_undesirable}, (w_D·n_D)/(w_U·n_U) = {b.ratio:.3f}", accelerator)
    if not b.ok and b.n_desirable and b.n_undesirable:
        if cfg.auto_weights:
            log(f"--auto-weights: desirable weight {cfg.desirable_weight} -> {b.suggested_desirable_weight:.4f}", accelerator)
            return replace(cfg, desirable_weight=b.suggested_desirable_weight)
        log(f"warning: ratio outside [1, 4/3]; --desirable-weight {b.suggested_desirable_weight:.4f} (or --auto-weights) brings it inside", accelerator)
    return cfg


def train(cfg: TrainConfig) -> Path:
    accelerator = make_accelerator(cfg)
    torch.manual_seed(cfg.seed)
    cache = ShardedCache(cfg.cache)
    manifest = cache.manifest
    source = resolve_source(cfg.model)
    tokenizer = load_tokenizer(source, trust_remote_code=cfg.trust_remote_code)
    check_tokenizer(tokenizer, manifest, cfg.model)
    cfg = apply_class_balance(cfg, manifest.counts, accelerator)
    if not cfg.resume and ((cfg.out / "metrics.jsonl").exists() or latest_checkpoint(cfg.out)):
        raise InputError(f"--out {cfg.out}: holds an earlier run; pass --resume to continue it, or choose another directory")
    cfg.out.mkdir(parents=True, exist_ok=True)

    resume_from = latest_checkpoint(cfg.out) if cfg.resume else None
    if cfg.resume and resume_from is None:
        log(f"--resume: no checkpoint in {cfg.out}; starting from --model", accelerator)
    init = resolve_source(str(resume_from)) if resume_from else source
    lm = load_causal_lm(init, dtype=DTYPES[cfg.dtype], attn_implementation=cfg.attn_implementation, trust_remote_code=cfg.trust_remote_code)
    is_reference = resume_from is None and model_identity(source) == manifest.content["model"]
    if not cfg.keep_dropout:
        disable_dropout(lm)
    if cfg.gradient_checkpointing:
        lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    lm.config.use_cache = False
    lm.train()

    shape = BatchShape(cfg.batch_size, cfg.grad_accum, accelerator.num_processes)
    per_epoch = steps_per_epoch(cache.num_rows, shape)
    total_steps = cfg.max_steps or per_epoch * cfg.epochs
    model = CompletionLogps(lm, chunk_size=cfg.chunk_size)
    optimizer = build_optimizer(model, cfg)
    scheduler = build_scheduler(optimizer, cfg, total_steps)
    model, optimizer = accelerator.prepare(model, optimizer)

    position = Position(0, 0, 0)
    if resume_from is not None:
        position, fingerprint = load_training_state(resume_from, optimizer, scheduler)
        if fingerprint != manifest.fingerprint:
            raise InputError(f"--resume: {resume_from} was trained on another cache than --cache {cfg.cache}")
        log(f"resumed from {resume_from} at step {position.global_step}", accelerator)
    if accelerator.is_main_process and cfg.report_to != "none":
        accelerator.init_trackers("kto", config={k: str(v) for k, v in vars(cfg).items()})
    metrics = MetricsWriter(cfg.out / "metrics.jsonl", accelerator, resume_step=position.global_step if cfg.resume else None) if accelerator.is_main_process else None

    settings = LossSettings(cfg.beta, cfg.desirable_weight, cfg.undesirable_weight, cfg.loss_type, cfg.sft_weight, cfg.kl_scope)
    lengths = cache.lengths()
    pad_id = tokenizer.pad_token_id
    log(f"{cache.num_rows} rows, {per_epoch} steps per epoch of {shape.rows_per_step} rows, {total_steps} steps", accelerator)

    window = None
    window_start = time.perf_counter()
    plan_epoch, plan = -1, None
    while position.global_step < total_steps:
        if plan_epoch != position.epoch:
            plan, plan_epoch = epoch_plan(lengths, shape, cfg.seed, position.epoch), position.epoch
        slots = plan[position.step_in_epoch, accelerator.process_index]
        batches = [collate(cache, s, pad_id, with_token_logps=is_reference and position.global_step == 0).to(accelerator.device) for s in slots]
        if is_reference and position.global_step == 0:
            check_drift(model, batches[0], cfg, accelerator, manifest.content["dtype"])
        stats = forward_backward(model, batches, settings, accelerator)
        grad_norm = optimizer_step(model, optimizer, scheduler, accelerator, cfg.max_grad_norm)
        stats = all_reduce_sum(stats, accelerator)
        window = stats if window is None else window + stats
        position = advance(position, per_epoch)
        step = position.global_step
        if cfg.log_every and (step % cfg.log_every == 0 or step == total_steps):
            elapsed = time.perf_counter() - window_start
            line = summarize(window)
            line.update(lr=scheduler.get_last_lr()[0], grad_norm=grad_norm, epoch=position.epoch + position.step_in_epoch / per_epoch,
                        tokens_per_s=line.pop("tokens") / max(elapsed, 1e-9), peak_memory_gb=peak_memory_gb(accelerator))
            if metrics:
                metrics.write(step, line)
            log(f"step {step}/{total_steps} loss {line['loss']:.4f} kl {line['kl']:.4f} margin {line['rewards/margins']:.4f}", accelerator)
            window, window_start = None, time.perf_counter()
        if cfg.eval_cache and cfg.eval_every and step % cfg.eval_every == 0 and step < total_steps:
            run_eval(model, cfg, settings, pad_id, accelerator, metrics, step)
        if cfg.save_every and step % cfg.save_every == 0 and step < total_steps:
            save(cfg, accelerator, model, tokenizer, optimizer, scheduler, position, manifest.fingerprint)
    if cfg.eval_cache:
        run_eval(model, cfg, settings, pad_id, accelerator, metrics, position.global_step)
    final = save_final(cfg, accelerator, model, tokenizer)
    if metrics:
        metrics.close()
    accelerator.end_training()
    return final


def advance(p: Position, per_epoch: int) -> Position:
    nxt = p.step_in_epoch + 1
    return Position(p.global_step + 1, p.epoch + nxt // per_epoch, nxt % per_epoch)


def check_drift(model, batch, cfg: TrainConfig, accelerator, cache_numerics: str) -> None:
    """--model is the reference: its log-probs must reproduce the cached ones on batch one."""
    if batch.ref_token_logps is None or all(x is None for x in batch.ref_token_logps):
        log("step-0 check skipped: the cache has no per-token log-probs (--no-token-logps)", accelerator)
        return
    drift = step0_drift(model, batch)
    numerics = train_numerics(cfg.dtype, accelerator.mixed_precision)
    tolerance = cfg.drift_tolerance if cfg.drift_tolerance is not None else DEFAULT_DRIFT_TOLERANCE[numerics.compute]
    log(f"step-0 check: max |Δ log p| per token vs cache = {drift.max_abs:.2e} over {drift.tokens} tokens "
        f"(tolerance {tolerance:g}; cache numerics {cache_numerics}, this run {numerics.name})", accelerator)
    if drift.max_abs > tolerance:
        hint = (f"the cache was scored with {cache_numerics} and this run computes with {numerics.name}"
                if cache_numerics != numerics.name else "attention implementation or library versions differ from kto-precompute's")
        raise InputError(
            f"--model {cfg.model}: step-0 log-probs differ from the cache by up to {drift.max_abs:.3g} per token "
            f"(tolerance {tolerance:g}); {hint}. Match them, or raise --drift-tolerance knowingly."
        )


def peak_memory_gb(accelerator) -> float:
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 1e9
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6


def run_eval(model, cfg, settings, pad_id, accelerator, metrics, step: int) -> None:
    result = evaluate(model, ShardedCache(cfg.eval_cache), settings, pad_id, cfg.batch_size, accelerator)
    if metrics:
        metrics.write(step, result, split="eval")
    log(f"eval @ {step}: loss {result['loss']:.4f} margin {result['rewards/margins']:.4f}", accelerator)


def save(cfg, accelerator, model, tokenizer, optimizer, scheduler, position, fingerprint) -> None:
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        path = save_checkpoint(cfg.out, accelerator.unwrap_model(model).lm, tokenizer, optimizer, scheduler, position, fingerprint)
        log(f"saved {path}", accelerator)
    accelerator.wait_for_everyone()


def save_final(cfg, accelerator, model, tokenizer) -> Path:
    from kto.formats.atomic import atomic_dir

    final = cfg.out / "final"
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        with atomic_dir(final) as tmp:
            save_model_dir(accelerator.unwrap_model(model).lm, tokenizer, tmp)
        log(f"saved {final}", accelerator)
    accelerator.wait_for_everyone()
    return final
