"""TrainConfig: every `kto-train` option, one documented field each. The CLI mirrors these
fields one to one (a test keeps the two in step), and `--config FILE` keys use the same names."""

from __future__ import annotations

import dataclasses
import math
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kto.formats import config_file
from kto.formats.cache import check_cache_dir
from kto.formats.compute.numerics import WEIGHT_DTYPES
from kto.formats.config_types import check_field_types
from kto.formats.errors import InputError
from kto.formats.files import output_dir
from kto.formats.hub import check_repo_id, is_hub_cache

from .loss_type import LossType
from .trackers import check_run_name, parse_report_to

# transformers.SchedulerType's values (tests/train/test_optim.py keeps the list in step), less
# the two whose step() needs a metric: a step-boundary loss is no eval metric to plateau on.
NEEDS_METRIC = ("reduce_lr_on_plateau", "greedy")
SCHEDULES = (
    "linear",
    "cosine",
    "cosine_with_restarts",
    "polynomial",
    "constant",
    "constant_with_warmup",
    "inverse_sqrt",
    "cosine_with_min_lr",
    "cosine_warmup_with_min_lr",
    "warmup_stable_decay",
)
KL_SCOPES = ("step", "microbatch")
MIXED_PRECISION = ("auto", "bf16", "fp16", "no")
DTYPES = WEIGHT_DTYPES
TEXT_PATHS = ("model",)  # text, a local directory given as a Path included
# A rank is a matrix width (peft's A is r × in): layers are far narrower than 2**31, and a rank
# above a layer's min(in, out) adds parameters but no rank (adapters.check_model warns). Past
# 2**63 torch.empty raised an overflow traceback after the model had loaded.
LORA_R_MAX = 2**31 - 1
# float32's largest and smallest normal numbers (torch.finfo(torch.float32).max and .tiny): the
# gradient reaching the policy's log-probs and AdamW's state are float32 whatever the flags' Python
# floats (the loss itself is float64: train/loss.py).
FP32_MAX = 3.4028234663852886e38
FP32_TINY = 1.1754943508222875e-38
LR_MAX = 1.0
"""Above it one AdamW step moves every weight farther than the size of the model's weights."""
SCALES = ("beta", "desirable_weight", "undesirable_weight", "sft_weight")
"""Flags that multiply the loss and so the gradient (β inside the sigmoid, the others outside)."""
# Far beyond what KTO runs use (the paper and TRL: β 0.01 to 1, class weights about 1, γ below 1,
# AdamW rates 1e-7 to 1e-3), yet not meaningless: not refused, but named as the likely cause
# when a run turns non-finite (train/guard.py). β 10 or 100 is a sharp loss, not a mistake.
USUAL_AT_MOST = {"beta": 1e3, "desirable_weight": 1e3, "undesirable_weight": 1e3, "sft_weight": 1e3, "lr": 1e-2}


@dataclass(frozen=True)
class TrainConfig:
    cache: Path | None = None
    """Cache directory written by kto-precompute (required, but with eval_only)."""
    model: str | None = None
    """Policy initialisation: local HF dir, .gguf file or hub id (usually the reference model).
    Required. With eval_only: the model evaluated (also a run's final/ or checkpoint-STEP/)."""
    out: Path | None = None
    """Run directory: metrics.jsonl, checkpoint-STEP/, final/ (required, but with eval_only:
    then the directory of eval_results.json, and nothing is written without it)."""
    beta: float = 0.1
    """β: scale of the implicit reward β·(log πθ − log πref)."""
    desirable_weight: float = 1.0
    """w_D, weight of desirable rows' losses."""
    undesirable_weight: float = 1.0
    """w_U, weight of undesirable rows' losses."""
    auto_weights: bool = False
    """Pick w_D so that (w_D·n_D)/(w_U·n_U) lies in [1, 4/3] (the paper's advice)."""
    loss: str = "kto"
    """kto | apo_zero_unpaired."""
    sft_weight: float = 0.0
    """γ: adds γ · mean NLL of desirable completion tokens."""
    lr: float = 1e-6
    """Peak learning rate (AdamW)."""
    lr_schedule: str = "linear"
    """Any kind of transformers' get_scheduler that steps without a metric (SCHEDULES);
    `constant` has no warmup there, `constant_with_warmup` has."""
    lr_schedule_kwargs: dict = dataclasses.field(default_factory=dict)
    """get_scheduler's scheduler_specific_kwargs, e.g. {"min_lr_rate": 0.1} for cosine_with_min_lr."""
    warmup_ratio: float = 0.1
    """Share of the total steps spent warming up linearly from 0 (rounded down)."""
    warmup_steps: int = 0
    """Warmup steps; when above 0 it wins over warmup_ratio (as in transformers)."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    adam_beta1: float = 0.9
    """AdamW's β1 (transformers' adam_beta1)."""
    adam_beta2: float = 0.999
    """AdamW's β2 (transformers' adam_beta2; LLM recipes often take 0.95)."""
    adam_epsilon: float = 1e-8
    """AdamW's ε (transformers' adam_epsilon)."""
    max_grad_norm: float = 1.0
    """Clip the global gradient norm to this (0 disables)."""
    batch_size: int = 8
    """Examples per micro-batch, per process."""
    grad_accum: int = 1
    """Micro-batches per optimizer step, per process."""
    epochs: float = 1.0
    """Passes over the cache, maybe fractional: ⌈epochs × steps per epoch⌉ steps (ignored when
    max_steps is set)."""
    max_steps: int | None = None
    """Stop after this many optimizer steps."""
    seed: int = 0
    """Seed of the shuffles and of torch."""
    kl_scope: str = "step"
    """Pairs averaged into z: every micro-batch of the optimizer step, or one micro-batch."""
    mixed_precision: str = "auto"
    """Autocast: auto (bf16 on CUDA, none on CPU), bf16, fp16 or no."""
    dtype: str = "fp32"
    """Weight dtype. bf16 weights lose most KTO-sized updates below one ulp: opt in knowingly."""
    gradient_checkpointing: bool = False
    """Recompute activations in backward to save memory."""
    prefix_sharing: bool = True
    """Run each prompt shared by rows of a step once, followed by their completions, in the KL
    pass and the policy pass (the same numbers to fp32 rounding, less compute)."""
    keep_dropout: bool = False
    """Dropout is disabled by default (as TRL does): the reference numbers had none."""
    log_every: int = 10
    """Steps between metric lines."""
    save_every: int = 0
    """Steps between checkpoints (0: only the final model)."""
    save_each_epoch: bool = False
    """Also save a checkpoint after each epoch's last step (transformers' save_strategy epoch)."""
    save_total_limit: int = 0
    """Keep only the newest N checkpoints, deleting older ones after each save (0: keep all); a
    run that saves none (no save_every, no save_each_epoch) says so at start."""
    eval_cache: Path | None = None
    """A kto-precompute cache to evaluate on (e.g. CACHE/eval)."""
    eval_every: int = 0
    """Steps between evaluations (0: only at the end, when eval_cache is set)."""
    eval_each_epoch: bool = False
    """Also evaluate after each epoch's last step (transformers' eval_strategy epoch)."""
    eval_batch_size: int | None = None
    """Examples per eval micro-batch, per process (transformers' per_device_eval_batch_size;
    default: batch_size). The eval numbers are the same to fp32 rounding whatever it is."""
    resume: bool | Path = False
    """Continue from the latest OUT/checkpoint-STEP (True), or from this checkpoint of OUT (a path)."""
    report_to: str = "none"
    """Also log through accelerate's trackers: none, all (every installed one), or a comma list of
    tensorboard, wandb, mlflow, comet_ml, aim, clearml, dvclive, swanlab, trackio."""
    run_name: str | None = None
    """The run's name in the trackers that take one (default: the name of --out); TensorBoard's
    folder, OUT/tensorboard/RUN_NAME, so one folder name."""
    drift_tolerance: float | None = None
    """Max per-token |Δ| allowed at step 0 when --model is the reference (default by precision)."""
    chunk_size: int = 1024
    """Completion positions per LM-head chunk."""
    trust_remote_code: bool = False
    """Allow code from the model repo to run."""
    attn_implementation: str = "sdpa"
    """transformers attention implementation (match the cache's)."""
    # LoRA / QLoRA (train/adapters.py) and FSDP2 (train/sharding.py).
    lora_r: int = 0
    """LoRA rank (0: full fine-tune). The policy is --model plus adapters that start at zero."""
    lora_alpha: float = 16.0
    """LoRA scaling numerator: the update is (alpha / r) · B A."""
    lora_dropout: float = 0.0
    """Dropout on the LoRA branch's input while training."""
    lora_target_modules: str | None = None
    """Comma-separated module names to adapt (default: every linear layer of the decoder, not the LM head)."""
    load_in_4bit: bool = False
    """QLoRA: load the base weights in 4-bit NF4 (bitsandbytes); needs --lora-r."""
    load_in_8bit: bool = False
    """Load the base weights in 8-bit (bitsandbytes); needs --lora-r."""
    merge_adapters: bool = False
    """Also write OUT/final-merged/, the base with the adapters merged in (an ordinary HF model dir)."""
    fsdp: bool = False
    """Shard parameters, gradients and optimizer state with FSDP2 (as `accelerate launch --use_fsdp`)."""
    push_to_hub: str | None = None
    """Upload final/ (with its model card) to this hub model repo, ORG/NAME, after the run."""
    hub_private: bool = False
    """Create the --push-to-hub repo private."""
    eval_only: bool = False
    """Train nothing: evaluate --model on --eval-cache as the run's evaluations do (train/eval_only.py)."""
    base_model: str | None = None
    """eval_only: the base of a LoRA adapter directory or FSDP checkpoint given as --model
    (default: the base its adapter_config.json or its run names)."""

    def __post_init__(self):
        check_types(self)
        check_required(self)
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, float) and not math.isfinite(value):
                raise InputError(f"--{_flag(f.name)} {value}: must be a finite number")
        _choice("loss", self.loss, [t.value for t in LossType])
        if self.lr_schedule in NEEDS_METRIC:
            raise InputError(
                f"--lr-schedule {self.lr_schedule}: steps on an eval metric, which kto-train does not feed its scheduler; choose one of {', '.join(SCHEDULES)}"
            )
        _choice("lr-schedule", self.lr_schedule, SCHEDULES)
        _choice("kl-scope", self.kl_scope, KL_SCOPES)
        _choice("mixed-precision", self.mixed_precision, MIXED_PRECISION)
        _choice("dtype", self.dtype, DTYPES)
        parse_report_to(self.report_to)
        if self.run_name is not None:
            check_run_name(self.run_name)
        if not self.epochs > 0:
            raise InputError(f"--epochs {self.epochs}: must be positive")
        for name in ("batch_size", "grad_accum", "chunk_size", "eval_batch_size"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise InputError(f"--{_flag(name)} {getattr(self, name)}: must be at least 1")
        for name in ("beta", "lr"):
            if getattr(self, name) <= 0:
                raise InputError(f"--{_flag(name)} {getattr(self, name)}: must be positive")
        for name in ("desirable_weight", "undesirable_weight", "sft_weight", "weight_decay", "max_grad_norm"):
            if getattr(self, name) < 0:
                raise InputError(f"--{_flag(name)} {getattr(self, name)}: must not be negative")
        if self.drift_tolerance is not None and self.drift_tolerance < 0:
            raise InputError(f"--drift-tolerance {self.drift_tolerance}: must not be negative")
        if not 0 <= self.seed < 2**32:  # numpy's and torch's seeds, as transformers' set_seed takes them
            raise InputError(f"--seed {self.seed}: must be in [0, 2**32)")
        check_scale_flags(self)
        check_optimizer_flags(self)
        if not 0 <= self.warmup_ratio < 1:
            raise InputError(f"--warmup-ratio {self.warmup_ratio}: must be in [0, 1)")
        if self.max_steps is not None and self.max_steps < 1:
            raise InputError(f"--max-steps {self.max_steps}: must be at least 1")
        for name in ("log_every", "save_every", "eval_every", "save_total_limit", "warmup_steps"):
            if getattr(self, name) < 0:
                raise InputError(f"--{_flag(name)} {getattr(self, name)}: must not be negative")
        if (self.eval_every or self.eval_each_epoch) and self.eval_cache is None:  # would evaluate nothing, silently
            flag = f"--eval-every {self.eval_every}" if self.eval_every else "--eval-each-epoch"
            raise InputError(f"{flag}: needs --eval-cache (e.g. {self.cache}/eval, the split kto-precompute --eval-fraction writes)")
        if isinstance(self.resume, Path) and not re.fullmatch(r"checkpoint-\d+", self.resume.name):
            from .resume_hints import resume_name_refusal  # only this refusal needs it

            raise InputError(resume_name_refusal(self.resume, self.out))  # a checkpoint set aside says what it is, and the way back
        check_adapter_flags(self)
        if self.push_to_hub is not None:
            check_repo_id(self.push_to_hub)
        elif self.hub_private:
            raise InputError("--hub-private: needs --push-to-hub ORG/NAME")
        for name in ("cache", "eval_cache"):  # a file, a name too long: said with its flag (the run says a missing one)
            if isinstance(getattr(self, name), Path) and not is_hub_cache(getattr(self, name)):
                check_cache_dir(getattr(self, name), f"--{_flag(name)} {getattr(self, name)}", missing_ok=True)
        if not self.eval_only:
            output_dir(self.out, f"--out {self.out}")

    @property
    def loss_type(self) -> LossType:
        return LossType(self.loss)

    @property
    def eval_rows_per_batch(self) -> int:
        """--eval-batch-size, else --batch-size."""
        return self.eval_batch_size or self.batch_size


def check_types(cfg: TrainConfig) -> None:
    """Every field as its annotation says (formats/config_types.py, as PrecomputeConfig's). A
    list of module names, as peft takes it and a --config file may write it, is taken as text."""
    targets = cfg.lora_target_modules
    if isinstance(targets, (list, tuple)) and all(isinstance(v, str) for v in targets):
        object.__setattr__(cfg, "lora_target_modules", ",".join(targets))
    check_field_types(cfg, text_paths=TEXT_PATHS)


def check_required(cfg: TrainConfig) -> None:
    """--model always; --cache and --out to train; --eval-cache with --eval-only, --base-model only with it."""
    require_paths(vars(cfg))
    if cfg.eval_only and cfg.eval_cache is None:
        raise InputError("--eval-only: needs --eval-cache, the kto-precompute cache to evaluate --model on (e.g. CACHE/eval)")
    if not cfg.eval_only and cfg.base_model is not None:
        raise InputError("--base-model: only with --eval-only (training starts from --model; axolotl's base_model is --model here)")


def require_paths(values: Mapping[str, Any]) -> None:
    """--model always, --cache and --out to train: refused in one line when missing. With
    --eval-cache alone, the line says --eval-only too: that is what evaluates without training
    (evaluate_model's own hint came too late, after this refusal)."""
    for name in ("model",) if values.get("eval_only") else ("cache", "model", "out"):
        if values.get(name) is None:
            evaluate = name != "model" and values.get("cache") is None and values.get("eval_cache") is not None  # --cache given: meant to train
            hint = "; to evaluate --model on --eval-cache without training, add --eval-only" if evaluate else ""
            raise InputError(f"--{name} is required (on the command line or in --config){hint}")


def _flag(name: str) -> str:
    return name.replace("_", "-")


def _choice(flag: str, value: str, allowed) -> None:
    if value not in allowed:
        raise InputError(f"--{flag} {value}: choose one of {', '.join(allowed)}")


def planned_steps(cfg: TrainConfig, steps_per_epoch: int) -> int:
    """--max-steps, else ⌈epochs × steps per epoch⌉. The product is rounded to 9 decimals first:
    0.1 × 30 is 3.0000000000000004 in floating point, and one step more than a tenth of 30. No
    bound below float's range: nothing is built per step up front (optim.schedule_refusal samples)."""
    if cfg.max_steps:
        return cfg.max_steps
    steps = cfg.epochs * steps_per_epoch
    if not math.isfinite(steps):
        raise InputError(f"--epochs {cfg.epochs}: × {steps_per_epoch} steps per epoch is past floating point's range ({sys.float_info.max:.3g})")
    return max(1, math.ceil(round(steps, 9)))


def ignored_setting_notes(cfg: TrainConfig) -> list[str]:
    """Notes on settings that do nothing with the others given (a note, not a refusal: a
    --config file may carry one for another run)."""
    notes = []
    if cfg.save_total_limit and not (cfg.save_every or cfg.save_each_epoch):
        notes.append(
            f"note: --save-total-limit {cfg.save_total_limit} does nothing without --save-every N or --save-each-epoch: "
            "this run saves no checkpoint, only final/"
        )
    return notes


def field_names() -> list[str]:
    return [f.name for f in dataclasses.fields(TrainConfig)]


def load_config_file(path: Path) -> config_file.Resolved:
    """YAML (.yaml/.yml) or TOML (.toml) whose keys are TrainConfig field names (dashes or
    underscores) or TRL's and LLaMA-Factory's names for them (formats/config_keys.py)."""
    return config_file.resolve_config_file(path, config_file.TRAIN, field_names())


def check_scale_flags(cfg: TrainConfig) -> None:
    """β, the class weights and γ as float32 can hold them: above 3.4e38 each is inf there. The
    loss is computed in float64 (train/loss.py), but its gradient reaches the policy's float32
    log-probs scaled by them, inf or NaN (β × a reward of 0). Below that no bound is refused: they scale the loss,
    and AdamW's step and gradient clipping do not depend on its scale (TRL and transformers
    bound none of them); a gradient that overflows stops the run naming them (unusual_flags)."""
    for name in SCALES:
        if getattr(cfg, name) > FP32_MAX:
            raise InputError(
                f"--{_flag(name)} {getattr(cfg, name)}: must be at most {FP32_MAX:.4g}, float32's largest number; the loss's gradient reaches the float32 log-probs scaled by it, and there it is inf"
            )


def unusual_flags(cfg: TrainConfig) -> str:
    """The flags far above USUAL_AT_MOST, said as the likely cause of a non-finite loss, gradient
    norm or weight (train/guard.py); '' when none is. β, the class weights and γ multiply the
    gradient (a float32 gradient norm above 3.4e38 is inf); lr sizes each step."""
    named = [f"--{_flag(k)} {getattr(cfg, k):g} (usually at most {bound:g})" for k, bound in USUAL_AT_MOST.items() if getattr(cfg, k) > bound]
    return f"likely cause: {', '.join(named)}" if named else ""


def check_optimizer_flags(cfg: TrainConfig) -> None:
    """AdamW's settings: betas in [0, 1), an epsilon that float32 holds, an lr of at most 1 (its
    first step moves each weight by lr; --lr 9.2e18 exited 0 with weights of 9.2e18; transformers
    bounds none, but no AdamW run uses 1), and a decay that keeps the weights:
    its decoupled step is w ← w·(1 − lr·weight_decay), which at lr × weight_decay ≥ 1 erases or
    flips every weight (the fuzz's --weight-decay 2**63 exited 0 with weights of 9.5e11)."""
    for name in ("adam_beta1", "adam_beta2"):
        if not 0 <= getattr(cfg, name) < 1:
            raise InputError(f"--{_flag(name)} {getattr(cfg, name)}: must be in [0, 1)")
    if not 0 < cfg.adam_epsilon < math.inf:
        raise InputError(f"--adam-epsilon {cfg.adam_epsilon}: must be positive")
    if cfg.adam_epsilon < FP32_TINY:
        raise InputError(
            f"--adam-epsilon {cfg.adam_epsilon}: must be at least {FP32_TINY:.4g}, float32's smallest normal number; below it ε is 0 "
            "(or flushed to 0) in AdamW's float32 arithmetic, and its update m / (√v + ε) is 0/0 = NaN for every weight whose gradient is 0"
        )
    if cfg.lr > LR_MAX:
        raise InputError(
            f"--lr {cfg.lr}: must be at most {LR_MAX:g}; AdamW moves every weight by about lr at each step (its first step by exactly lr, "
            "whatever the gradient's size), and a language model's weights are mostly far smaller than 1: one step would overwrite the model "
            "(KTO fine-tunes at 5e-7 to 5e-6, LoRA at about 1e-4)"
        )
    if cfg.lr * cfg.weight_decay >= 1:
        raise InputError(
            f"--weight-decay {cfg.weight_decay} with --lr {cfg.lr}: AdamW multiplies every weight by 1 − lr × weight_decay "
            f"= {1 - cfg.lr * cfg.weight_decay:g} at each step at --lr, erasing or flipping it; lr × weight_decay must be below 1"
        )


def check_adapter_flags(cfg: TrainConfig) -> None:
    """The --lora-* and --load-in-* flag checks that need no model (TrainConfig.__post_init__);
    here rather than in adapters.py, which reads TrainConfig and so must not be imported by it."""
    if cfg.lora_r < 0:
        raise InputError(f"--lora-r {cfg.lora_r}: must not be negative (0 trains every weight)")
    if cfg.lora_r > LORA_R_MAX:
        raise InputError(f"--lora-r {cfg.lora_r}: must be in [0, 2**31)")
    if not cfg.lora_alpha > 0:
        raise InputError(f"--lora-alpha {cfg.lora_alpha}: must be positive")
    if not 0 <= cfg.lora_dropout < 1:
        raise InputError(f"--lora-dropout {cfg.lora_dropout}: must be in [0, 1)")
    if cfg.load_in_4bit and cfg.load_in_8bit:
        raise InputError("--load-in-4bit and --load-in-8bit: choose one")
    if cfg.lora_r == 0:  # adapters off (adapters.enabled), negative ranks refused above
        for name in ("load_in_4bit", "load_in_8bit"):
            if getattr(cfg, name) and not cfg.eval_only:  # --eval-only loads a QLoRA run's base as it trained
                raise InputError(f"--{name.replace('_', '-')}: needs adapters (--lora-r R > 0); quantized weights cannot be trained directly")
        if cfg.merge_adapters:
            raise InputError("--merge-adapters: needs adapters (--lora-r R > 0); with every weight trained, final/ is already the whole model")
        if cfg.lora_target_modules:
            raise InputError("--lora-target-modules: needs --lora-r R > 0")
        if not cfg.resume:  # a resumed run's command repeats a file's values; the run record checks them
            for name in ("lora_alpha", "lora_dropout"):
                if getattr(cfg, name) != DEFAULTS[name]:
                    raise InputError(f"--{_flag(name)}: needs --lora-r R > 0 (without it every weight is trained)")


DEFAULTS = {f.name: f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default for f in dataclasses.fields(TrainConfig)}
"""Each TrainConfig field's default (a default_factory's value too)."""
