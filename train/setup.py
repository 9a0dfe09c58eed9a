"""Everything kto-train does before its first step, gathered into one `Run`.

The reference model is never loaded: its numbers come from the cache.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, replace

import numpy as np
import torch

from kto.formats.errors import InputError
from kto.formats.logprob import CompletionLogps
from kto.formats.models import load_causal_lm, load_tokenizer, model_identity, require_cache_tokenizer, resolve_source

from .checkpoint import Position, latest_checkpoint, load_training_state
from .checks import class_balance
from .config import TrainConfig
from .data import BatchShape, ShardedCache, steps_per_epoch
from .metrics import MetricsWriter
from .optim import build_optimizer, build_scheduler
from .step import LossSettings

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def log(msg: str, accelerator) -> None:
    if accelerator.is_main_process:
        print(msg, file=sys.stderr, flush=True)


@dataclass
class Run:
    """The state of one training run; `position` advances, everything else is fixed."""

    cfg: TrainConfig
    accelerator: object
    cache: ShardedCache
    tokenizer: object
    model: torch.nn.Module  # CompletionLogps, wrapped by accelerate (DDP with several processes)
    optimizer: torch.optim.Optimizer
    scheduler: object
    settings: LossSettings
    shape: BatchShape
    lengths: np.ndarray
    steps_per_epoch: int
    total_steps: int
    position: Position
    is_reference: bool
    """--model is the model the cache was scored with (and we did not resume): check step 0."""
    metrics: MetricsWriter | None
    eval_cache: ShardedCache | None = None
    plan_identity: dict | None = None
    plan: np.ndarray | None = None
    """The current epoch's plan [steps, world, accum, batch], built once per epoch."""
    plan_epoch: int = -1


def make_accelerator(cfg: TrainConfig):
    from accelerate import Accelerator

    mixed = cfg.mixed_precision
    if mixed == "auto":
        mixed = "bf16" if torch.cuda.is_available() else "no"
    if cfg.dtype == "fp16" and mixed != "no":
        # fp16 weights under autocast: GradScaler cannot unscale fp16 gradients, and bf16
        # autocast over fp16 weights mixes two half formats.
        raise InputError(f"--dtype fp16: needs --mixed-precision no (it resolved to {mixed})")
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


def load_policy(cfg: TrainConfig, init):
    lm = load_causal_lm(init, dtype=DTYPES[cfg.dtype], attn_implementation=cfg.attn_implementation, trust_remote_code=cfg.trust_remote_code)
    if not cfg.keep_dropout:
        disable_dropout(lm)
    if cfg.gradient_checkpointing:
        # Newer transformers 5.x rename gradient_checkpointing_enable (removed in v6); 5.17 on
        # the GPU image has only the old name.
        if hasattr(lm, "activation_checkpointing_enable"):
            lm.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    lm.config.use_cache = False
    return lm.train()


def setup(cfg: TrainConfig) -> Run:
    accelerator = make_accelerator(cfg)
    torch.manual_seed(cfg.seed)
    cache = ShardedCache(cfg.cache)
    manifest = cache.manifest
    source = resolve_source(cfg.model)
    tokenizer = load_tokenizer(source, trust_remote_code=cfg.trust_remote_code)
    require_cache_tokenizer(tokenizer, manifest.content["tokenizer"], cfg.model)
    eval_cache = open_eval_cache(cfg, manifest)
    cfg = apply_class_balance(cfg, manifest.counts, accelerator)
    if not cfg.resume and ((cfg.out / "metrics.jsonl").exists() or latest_checkpoint(cfg.out)):
        raise InputError(f"--out {cfg.out}: holds an earlier run; pass --resume to continue it, or choose another directory")
    cfg.out.mkdir(parents=True, exist_ok=True)

    resume_from = latest_checkpoint(cfg.out) if cfg.resume else None
    if cfg.resume and resume_from is None:
        log(f"--resume: no checkpoint in {cfg.out}; starting from --model", accelerator)
    lm = load_policy(cfg, resolve_source(str(resume_from)) if resume_from else source)

    shape = BatchShape(cfg.batch_size, cfg.grad_accum, accelerator.num_processes)
    per_epoch = steps_per_epoch(cache.num_rows, shape)
    total_steps = cfg.max_steps or per_epoch * cfg.epochs
    model = CompletionLogps(lm, chunk_size=cfg.chunk_size)
    optimizer = build_optimizer(model, cfg)
    scheduler = build_scheduler(optimizer, cfg, total_steps)
    model, optimizer = accelerator.prepare(model, optimizer)

    position = Position(0, 0, 0)
    plan = plan_identity(cfg, manifest.fingerprint, accelerator.num_processes, total_steps)
    if resume_from is not None:
        position, saved = load_training_state(resume_from, optimizer, scheduler)
        differs = sorted(k for k in plan if saved.get(k) != plan[k])
        if differs:
            raise InputError(
                f"--resume: {resume_from} was made with other " + ", ".join(f"{k} ({saved.get(k)} there, {plan[k]} now)" for k in differs)
                + "; the data order and LR schedule depend on them"
            )
        log(f"resumed from {resume_from} at step {position.global_step}", accelerator)
    if accelerator.is_main_process and cfg.report_to != "none":
        accelerator.init_trackers("kto", config={k: str(v) for k, v in vars(cfg).items()})
    metrics = None
    if accelerator.is_main_process:
        metrics = MetricsWriter(cfg.out / "metrics.jsonl", accelerator, resume_step=position.global_step if cfg.resume else None)
    log(f"{cache.num_rows} rows, {per_epoch} steps per epoch of {shape.rows_per_step} rows, {total_steps} steps", accelerator)
    return Run(
        cfg=cfg, accelerator=accelerator, cache=cache, tokenizer=tokenizer, model=model, optimizer=optimizer,
        scheduler=scheduler,
        settings=LossSettings(cfg.beta, cfg.desirable_weight, cfg.undesirable_weight, cfg.loss_type, cfg.sft_weight, cfg.kl_scope),
        shape=shape, lengths=cache.lengths(), steps_per_epoch=per_epoch, total_steps=total_steps, position=position,
        is_reference=resume_from is None and model_identity(source) == manifest.content["model"], metrics=metrics,
        eval_cache=eval_cache, plan_identity=plan,
    )


def plan_identity(cfg: TrainConfig, cache_fingerprint: str, world_size: int, total_steps: int) -> dict:
    """Everything the epoch plans and the LR schedule depend on."""
    return {"cache_fingerprint": cache_fingerprint, "batch_size": cfg.batch_size, "grad_accum": cfg.grad_accum,
            "world_size": world_size, "seed": cfg.seed, "total_steps": total_steps}


def open_eval_cache(cfg: TrainConfig, manifest) -> ShardedCache | None:
    """The eval cache must come from the same reference model and tokenizer as the training
    cache, or its rewards would be measured against another reference."""
    if cfg.eval_cache is None:
        return None
    cache = ShardedCache(cfg.eval_cache)
    for part in ("model", "tokenizer"):
        if cache.manifest.content[part] != manifest.content[part]:
            raise InputError(f"--eval-cache {cfg.eval_cache}: made with another {part} than --cache {cfg.cache}")
    return cache
