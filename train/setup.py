"""Everything kto-train does before its first step, gathered into one `Run`.

The reference model is never loaded: its numbers come from the cache.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from kto.formats.cache import ShardedCache, open_cache
from kto.formats.compute.logprob import CompletionLogps
from kto.formats.compute.models import (
    ModelSource,
    check_cache_tokenizer,
    load_causal_lm,
    load_completion_logps,
    load_tokenizer,
    model_identity,
    resolve_source,
)
from kto.formats.compute.numerics import torch_dtype
from kto.formats.errors import InputError, log, on_main
from kto.formats.memory import MemoryMeter

from . import adapters, sharding, trackers
from .checkpoint import Position, load_training_state
from .checks import class_balance, loss_is_identically_zero
from .config import TrainConfig
from .data import MicroBatchShape, steps_per_epoch
from .metrics import MetricsWriter
from .optim import build_optimizer, build_scheduler
from .rundir import config_record, open_run_dir, write_record
from .step import LossSettings

if TYPE_CHECKING:
    from accelerate import Accelerator
    from transformers import PreTrainedTokenizerBase

    from kto.formats.manifest import Counts, Manifest


@dataclass
class Run:
    """The state of one training run; `position` advances, everything else is fixed."""

    cfg: TrainConfig
    accelerator: object
    cache: ShardedCache
    pad_id: int
    model: torch.nn.Module  # CompletionLogps, wrapped by accelerate (DDP with several processes)
    optimizer: torch.optim.Optimizer
    scheduler: object
    settings: LossSettings
    shape: MicroBatchShape
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
    last_checkpoint: Path | None = None
    """The newest checkpoint saved or resumed from: named when the run stops on a non-finite value."""
    memory: MemoryMeter = field(default_factory=MemoryMeter)
    started: float | None = None
    """perf_counter() when setup began; cleared once the first step has logged its start-up time."""
    model_load_s: float = 0.0
    """Seconds spent in `load_policy` (reading the weights)."""
    tokenizer_source: ModelSource | None = None
    loaded_tokenizer: object | None = None

    @property
    def tokenizer(self) -> PreTrainedTokenizerBase:
        """Loaded on first use (saving a checkpoint) when start-up did not need it: a second run
        on a cache remembers the tokenizer check and the pad id (formats.compute.models.check_cache_tokenizer)."""
        if self.loaded_tokenizer is None:
            self.loaded_tokenizer = load_tokenizer(self.tokenizer_source, trust_remote_code=self.cfg.trust_remote_code)
        return self.loaded_tokenizer


def make_accelerator(cfg: TrainConfig) -> Accelerator:
    from accelerate import Accelerator

    mixed = cfg.mixed_precision
    if mixed == "auto":
        mixed = "bf16" if torch.cuda.is_available() else "no"
    if cfg.dtype == "fp16" and mixed != "no":
        # fp16 weights under autocast: GradScaler cannot unscale fp16 gradients, and bf16
        # autocast over fp16 weights mixes two half formats.
        raise InputError(f"--dtype fp16: needs --mixed-precision no (it resolved to {mixed})")
    log_with = trackers.log_with(cfg.report_to)  # a missing tracker is refused here, before any model loads
    # gradient_accumulation_steps stays 1: step.py accumulates and normalises explicitly.
    # cpu=True without CUDA: accelerate only starts a gloo group for several CPU processes then.
    plugin = sharding.fsdp_plugin(cfg)
    accelerator = Accelerator(mixed_precision=mixed, log_with=log_with, project_dir=str(cfg.out), cpu=not torch.cuda.is_available(), fsdp_plugin=plugin)
    return sharding.promote_cpu_state(accelerator, plugin)


def _is_dropout_name(name: str) -> bool:
    name = name.lower()
    return "dropout" in name or "pdrop" in name


def disable_dropout(lm: torch.nn.Module) -> None:
    """Dropout off everywhere it can hide, so train-mode forwards are deterministic (a training
    forward equals an evaluation one: the step-0 check reads the first step's own forward) and the
    saved config tells the truth.

    `nn.Dropout` modules are not enough: Llama's and Qwen2's attention layers copy
    `config.attention_dropout` into a plain float attribute when they are built, and that copy
    is what runs in train mode. So every float attribute named like *dropout* / *pdrop* on every
    module is zeroed too, and the same fields of the config and its sub-configs.
    """
    for module in lm.modules():
        if isinstance(module, torch.nn.modules.dropout._DropoutNd):
            module.p = 0.0
        for name, value in list(vars(module).items()):
            if _is_dropout_name(name) and isinstance(value, float):
                setattr(module, name, 0.0)
    _zero_config_dropout(lm.config, seen=set())


def _zero_config_dropout(config, seen: set) -> None:
    if id(config) in seen:
        return
    seen.add(id(config))
    for name, value in list(vars(config).items()):
        if _is_dropout_name(name) and isinstance(value, float):
            setattr(config, name, 0.0)
        elif hasattr(value, "to_dict") and hasattr(value, "model_type"):  # a nested sub-config
            _zero_config_dropout(value, seen)


def apply_class_balance(cfg: TrainConfig, counts: Counts, accelerator: Accelerator) -> TrainConfig:
    zero = loss_is_identically_zero(counts.desirable, counts.undesirable, cfg.desirable_weight, cfg.undesirable_weight, cfg.sft_weight)
    if zero:
        raise InputError(zero)
    b = class_balance(counts.desirable, counts.undesirable, cfg.desirable_weight, cfg.undesirable_weight)
    log(f"classes: n_D = {b.n_desirable}, n_U = {b.n_undesirable}, (w_D·n_D)/(w_U·n_U) = {b.ratio:.3f}", accelerator)
    if b.ok or not (b.n_desirable and b.n_undesirable):
        return cfg
    if b.suggested_desirable_weight is None:  # w_U = 0: no w_D balances the classes
        if cfg.auto_weights:
            raise InputError("--auto-weights with --undesirable-weight 0: no desirable weight balances a class that is not in the loss")
        log("warning: --undesirable-weight 0 leaves the undesirable rows out of the loss; no --desirable-weight brings the ratio inside [1, 4/3]", accelerator)
        return cfg
    if cfg.auto_weights:
        log(f"--auto-weights: desirable weight {cfg.desirable_weight} -> {b.suggested_desirable_weight:.6g}", accelerator)
        return replace(cfg, desirable_weight=b.suggested_desirable_weight)
    log(f"warning: ratio outside [1, 4/3]; --desirable-weight {b.advised_desirable_weight} (or --auto-weights) brings it inside", accelerator)
    return cfg


def load_policy(cfg: TrainConfig, init: ModelSource, adapt: Callable[[torch.nn.Module], torch.nn.Module] = lambda lm: lm, **load: Any) -> CompletionLogps:
    """The policy from `init` (--model or a checkpoint) in train mode, dropout and checkpointing
    set, then `adapt` (adapters) on it; accelerate places it unless `load` holds a device_map."""

    def adjust(lm: torch.nn.Module) -> torch.nn.Module:
        prepare_for_training(cfg, lm)
        return adapt(lm)

    return load_completion_logps(
        init,
        dtype=torch_dtype(cfg.dtype),
        attn_implementation=cfg.attn_implementation,
        trust_remote_code=cfg.trust_remote_code,
        chunk_size=cfg.chunk_size,
        training=True,
        adjust=adjust,
        **load,
    )


def prepare_for_training(cfg: TrainConfig, lm: torch.nn.Module) -> None:
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


def load_base(cfg: TrainConfig) -> torch.nn.Module:
    """--model as it is on disk, unquantized, in --dtype: what adapters are merged into."""
    return load_causal_lm(
        resolve_source(cfg.model), dtype=torch_dtype(cfg.dtype), attn_implementation=cfg.attn_implementation, trust_remote_code=cfg.trust_remote_code
    )


def build_policy(cfg: TrainConfig, source: ModelSource, resume_from: Path | None, accelerator: Accelerator) -> CompletionLogps:
    """The model to train: --model; a whole-model checkpoint; or --model plus adapters (fresh, or
    from an adapter checkpoint). A sharded (FSDP) checkpoint's weights are loaded after prepare."""
    sharded = sharding.is_sharded_checkpoint(resume_from)
    if resume_from is not None:
        sharding.check_checkpoint(resume_from, accelerator)
        adapters.check_checkpoint_kind(cfg, resume_from)
    whole = resume_from is not None and not sharded and not adapters.enabled(cfg)
    init = resolve_source(str(resume_from)) if whole else source
    if not adapters.enabled(cfg):
        return load_policy(cfg, init)

    def with_adapters(lm: torch.nn.Module) -> torch.nn.Module:
        if resume_from is not None and not sharded:
            return adapters.load_adapters(cfg, lm, resume_from)
        if resume_from is not None:
            adapters.check_adapter_settings(cfg, lm, resume_from)
        return adapters.add_adapters(cfg, lm)

    quantization = adapters.quantization_config(cfg, "cuda" if torch.cuda.is_available() else "cpu")
    # bitsandbytes weights cannot be moved after loading: put them on this process's device.
    device_map = {"": torch.cuda.current_device() if torch.cuda.is_available() else "cpu"} if quantization else None
    policy = load_policy(cfg, init, with_adapters, quantization_config=quantization, device_map=device_map)
    lm = policy.lm
    log(
        f"LoRA r = {cfg.lora_r} on {', '.join(sorted(lm.peft_config['default'].target_modules))}: "
        f"{sum(p.numel() for p in lm.parameters() if p.requires_grad):,} trainable parameters",
        accelerator,
    )
    return policy


@dataclass
class Inputs:
    """Everything checked before kto-train touches --out (see check_inputs)."""

    cfg: TrainConfig
    accelerator: object
    cache: ShardedCache
    eval_cache: ShardedCache | None
    source: object
    pad_id: int
    tokenizer: object | None
    """None when a remembered tokenizer check made loading it unnecessary (see Run.tokenizer)."""
    lengths: np.ndarray
    shape: MicroBatchShape
    steps_per_epoch: int
    total_steps: int
    record: dict
    """RUN/kto_run.json: the resolved configuration plus the identities of data and model."""
    is_reference: bool
    """--model is the model the cache was scored with."""
    started: float = 0.0
    """perf_counter() when the start-up checks began."""


def check_inputs(cfg: TrainConfig) -> Inputs:
    """Every start-up check that can fail on the user's input, before anything is written to
    --out: precision flags, the manifest and every shard's footer and row count, the tokenizer,
    the eval cache, the model's identity. A failure here leaves --out as it was."""
    started = time.perf_counter()
    accelerator = make_accelerator(cfg)
    adapters.check_environment(cfg, "cuda" if torch.cuda.is_available() else "cpu")  # peft, bitsandbytes: before the cache and the model
    torch.manual_seed(cfg.seed)
    cache = open_cache(cfg.cache)
    lengths = cache.lengths()
    cache.vocab_size()  # tokenizer/tokenizer.json readable (the shards' values are checked against it)
    manifest = cache.manifest
    source = resolve_source(cfg.model)
    pad_id, tokenizer = check_cache_tokenizer(source, manifest.content.tokenizer, cfg.model, cache.dir, trust_remote_code=cfg.trust_remote_code)
    adapters.check_model(cfg, source)
    eval_cache = open_eval_cache(cfg, manifest)
    cfg = apply_class_balance(cfg, manifest.counts, accelerator)
    shape = MicroBatchShape(cfg.batch_size, cfg.grad_accum, accelerator.num_processes)
    per_epoch = steps_per_epoch(cache.num_rows, shape)
    total_steps = cfg.max_steps or per_epoch * cfg.epochs
    identity = model_identity(source)
    derived = {
        "total_steps": total_steps,
        "world_size": accelerator.num_processes,
        "cache_fingerprint": manifest.fingerprint,
        "eval_cache_fingerprint": eval_cache.manifest.fingerprint if eval_cache else None,
        "model_identity": identity,
    }
    return Inputs(
        cfg=cfg,
        accelerator=accelerator,
        cache=cache,
        eval_cache=eval_cache,
        source=source,
        pad_id=pad_id,
        tokenizer=tokenizer,
        lengths=lengths,
        shape=shape,
        steps_per_epoch=per_epoch,
        total_steps=total_steps,
        record={"config": config_record(cfg), "derived": derived},
        is_reference=manifest.content.scored_with(identity),
        started=started,
    )


def setup(inp: Inputs) -> Run:
    """Under the run directory's lock: pick the checkpoint, load the policy, build the optimizer,
    restore the training state, then record the configuration and open metrics.jsonl."""
    cfg, accelerator = inp.cfg, inp.accelerator
    resume_from = on_main(lambda: open_run_dir(cfg, inp.record, lambda msg: log(msg, accelerator)), accelerator)
    load_started = time.perf_counter()
    model = build_policy(cfg, inp.source, resume_from, accelerator)
    model_load_s = time.perf_counter() - load_started
    optimizer = build_optimizer(model, cfg)
    scheduler = build_scheduler(optimizer, cfg, inp.total_steps)
    sharding.before_prepare(accelerator, model.lm)
    model, optimizer = accelerator.prepare(model, optimizer)

    plan = plan_identity(cfg, inp.cache.manifest.fingerprint, accelerator.num_processes, inp.total_steps)
    position = restore_training_state(cfg, resume_from, plan, model, optimizer, scheduler, accelerator)
    is_reference = resume_from is None and inp.is_reference
    if not is_reference:
        why = (
            "the policy was resumed from a checkpoint, so it is no longer the reference"
            if resume_from
            else f"--model {cfg.model} is not the model the cache was scored with (its identity differs from the manifest's)"
        )
        log(f"step-0 check skipped: {why}", accelerator)
    metrics = open_records(cfg, inp.record, position, accelerator)
    log(f"{inp.cache.num_rows} rows, {inp.steps_per_epoch} steps per epoch of {inp.shape.rows_per_step} rows, {inp.total_steps} steps", accelerator)
    return Run(
        cfg=cfg,
        accelerator=accelerator,
        cache=inp.cache,
        pad_id=inp.pad_id,
        model=model,
        optimizer=optimizer,
        scheduler=scheduler,
        settings=LossSettings(cfg.beta, cfg.desirable_weight, cfg.undesirable_weight, cfg.loss_type, cfg.sft_weight, cfg.kl_scope),
        shape=inp.shape,
        lengths=inp.lengths,
        steps_per_epoch=inp.steps_per_epoch,
        total_steps=inp.total_steps,
        position=position,
        is_reference=is_reference,
        metrics=metrics,
        eval_cache=inp.eval_cache,
        plan_identity=plan,
        last_checkpoint=resume_from,
        started=inp.started,
        model_load_s=model_load_s,
        tokenizer_source=inp.source,
        loaded_tokenizer=inp.tokenizer,
    )


def restore_training_state(
    cfg: TrainConfig,
    resume_from: Path | None,
    plan: dict,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    accelerator: Accelerator,
) -> Position:
    """Where training starts: step 0, or the checkpoint's position with its optimizer and
    scheduler state restored, once its plan is this run's (else the data order would differ)."""
    if resume_from is None:
        return Position(0, 0, 0)
    if sharding.is_sharded_checkpoint(resume_from):
        position, saved = sharding.load_checkpoint(resume_from, model, optimizer, scheduler, accelerator, adapters.enabled(cfg))
    else:
        position, saved = load_training_state(resume_from, optimizer, scheduler)
    differs = sorted(k for k in plan if saved.get(k) != plan[k])
    if differs:
        raise InputError(
            f"--resume: {resume_from} was made with other "
            + ", ".join(f"{k} ({saved.get(k)} there, {plan[k]} now)" for k in differs)
            + "; the data order and LR schedule depend on them"
        )
    log(f"resumed from {resume_from} at step {position.global_step}", accelerator)
    return position


def open_records(cfg: TrainConfig, record: dict, position: Position, accelerator: Accelerator) -> MetricsWriter | None:
    """Main process: write kto_run.json, start the trackers, open metrics.jsonl (None elsewhere)."""
    if not accelerator.is_main_process:
        return None
    write_record(cfg.out, record)
    if accelerator.log_with:
        trackers.start(accelerator, cfg.run_name or cfg.out.resolve().name, vars(cfg))
    return MetricsWriter(cfg.out / "metrics.jsonl", accelerator, resume_step=position.global_step if cfg.resume else None)


def plan_identity(cfg: TrainConfig, cache_fingerprint: str, world_size: int, total_steps: int) -> dict:
    """Everything the epoch plans and the LR schedule depend on."""
    return {
        "cache_fingerprint": cache_fingerprint,
        "batch_size": cfg.batch_size,
        "grad_accum": cfg.grad_accum,
        "world_size": world_size,
        "seed": cfg.seed,
        "total_steps": total_steps,
    }


def check_held_out(eval_manifest: Manifest, train_manifest: Manifest, cfg: TrainConfig) -> None:
    """Refuse an eval cache that holds training rows. The same fingerprint means the same inputs,
    split, seed and scoring, i.e. the same rows; a shard with the same sha256 holds the same rows
    (the shard carries its cache's fingerprint). Both read the manifests only."""
    where = f"--eval-cache {cfg.eval_cache}"
    if eval_manifest.fingerprint == train_manifest.fingerprint:
        raise InputError(
            f"{where}: the same rows as --cache {cfg.cache} (same fingerprint {train_manifest.fingerprint[:16]}…); evaluate on a held-out split such as CACHE/eval"
        )
    train_shards = {s.sha256: s.name for s in train_manifest.shards}
    shared = [(s.name, train_shards[s.sha256]) for s in eval_manifest.shards if s.sha256 in train_shards]
    if shared:
        name, train_name = shared[0]
        raise InputError(f"{where}: its {name} is --cache {cfg.cache}'s {train_name} (same sha256): the eval rows are training rows")


def open_eval_cache(cfg: TrainConfig, manifest: Manifest) -> ShardedCache | None:
    """The eval cache must come from the same reference model and tokenizer as the training
    cache, or its rewards would be measured against another reference."""
    if cfg.eval_cache is None:
        return None
    cache = open_cache(cfg.eval_cache)
    cache.lengths()  # every shard present and readable before --out is touched
    check_held_out(cache.manifest, manifest, cfg)
    for part in ("model", "tokenizer"):
        if getattr(cache.manifest.content, part) != getattr(manifest.content, part):
            raise InputError(f"--eval-cache {cfg.eval_cache}: made with another {part} than --cache {cfg.cache}")
    return cache
