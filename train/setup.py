"""Everything kto-train does before its first step, gathered into one `Run`.

The reference model is never loaded: its numbers come from the cache.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

import numpy as np
import torch

from kto.formats import schema as S
from kto.formats.cache import ShardedCache, open_cache
from kto.formats.compute.identity import model_identity
from kto.formats.compute.load_options import check_attention_implementation
from kto.formats.compute.logprob import check_cache_positions
from kto.formats.compute.numerics import train_numerics
from kto.formats.compute.shared_prefix import sharing_refusal
from kto.formats.compute.sources import ModelSource, resolve_source
from kto.formats.compute.tokenizer_check import ChatTemplateDiffers, check_cache_tokenizer
from kto.formats.compute.weights_check import checked_source
from kto.formats.errors import InputError, log, on_main
from kto.formats.hub import create_push_repo
from kto.formats.launch_agreement import check_launch_agreement, launch_settings, versions
from kto.formats.memory import MemoryMeter
from kto.formats.runrecord import METRICS_NAME, REFERENCE_IDENTITY, read_run_config

from . import adapters, sharding, trackers
from .checkpoint import Position
from .checks import class_balance, loss_is_identically_zero
from .config import TEXT_PATHS, TrainConfig, planned_steps
from .data import MicroBatchShape, fitted_shape, prompt_groups, steps_per_epoch
from .eval_cache import note_changed_inputs, open_eval_cache, refuse_eval_split
from .metrics import MetricsWriter, close_after_failure
from .optim import check_schedule, warmup_note
from .policy import Policy
from .resume_record import FP16_RESUMES_ON_CUDA, IN_FORCE, config_record, keep_recorded, made_with, recorded_precision, settings_digest
from .rundir import open_run_dir, refuse_before_the_lock, refuse_foreign, set_aside_later, write_record
from .step import LossSettings

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from accelerate import Accelerator
    from transformers import PreTrainedTokenizerBase

    from kto.formats.manifest import CacheContent, Counts, Manifest


@dataclass
class Run:
    """One training run. `check_inputs` fills the fields up to `started` (nothing is written to
    --out yet); `setup`, under the run directory's lock, adds the policy, the position and the
    records. Then `position` and the epoch plan advance; everything else is fixed."""

    cfg: TrainConfig
    accelerator: Accelerator
    cache: ShardedCache
    eval_cache: ShardedCache | None
    source: ModelSource
    pad_id: int
    tokenizer: PreTrainedTokenizerBase | None
    """None when a remembered tokenizer check made loading it unnecessary (see Policy.tokenizer)."""
    chat_template: str | None
    """The template the cache's prompts were rendered with, saved with every checkpoint and final/
    in place of --model's: kto-precompute's --chat-template, or the cache's model's own where
    --model's differs from it (check_tokenizer); None: --model's own, the one rendered with."""
    lengths: np.ndarray
    groups: np.ndarray | None
    """[rows] prompt group of each row (data.prompt_groups): the plan keeps a group in one
    micro-batch. None without prefix sharing: the plan is then the cycle's segments (fresher KL
    partners, less padding; train/data.py)."""
    shape: MicroBatchShape
    steps_per_epoch: int
    total_steps: int
    settings: LossSettings
    record: dict
    """RUN/kto_run.json: the resolved configuration plus the identities of data and model."""
    is_reference: bool
    """--model is the model the cache was scored with (and, once set up, we did not resume): check step 0."""
    started: float | None
    """perf_counter() when the start-up checks began; cleared once the first step has logged its start-up time."""
    policy: Policy | None = None
    position: Position = Position(0, 0, 0)
    metrics: MetricsWriter | None = None
    plan: np.ndarray | None = None
    """The current epoch's plan [steps, world, accum, batch], built once per epoch."""
    plan_epoch: int = -1
    memory: MemoryMeter = field(default_factory=MemoryMeter)
    records_closed: bool = False
    """metrics.jsonl and the trackers were closed (train/loop.py close_records)."""
    skipped_updates: list[int] = field(default_factory=list)
    """The steps of the run whose update fp16's loss scaler skipped (train/loop.py), a resumed
    run's from its checkpoint's (Position.skipped_updates) on."""

    @property
    def model(self) -> torch.nn.Module:
        """The policy's model (CompletionLogps, wrapped by accelerate)."""
        return self.policy.model

    @property
    def model_load_s(self) -> float:
        """Seconds setup spent reading the policy's weights."""
        return self.policy.load_s


def mixed_precision_in_force(cfg: TrainConfig) -> str:
    """--mixed-precision with `auto` resolved (bf16 on CUDA, no on CPU), refused where it cannot run."""
    mixed = cfg.mixed_precision
    if mixed == "auto":
        mixed = "bf16" if torch.cuda.is_available() else "no"
    if mixed == "fp16" and not torch.cuda.is_available():
        there = _recorded_precision(cfg.out) if cfg.resume else None
        if there == "fp16":  # bf16 or no: refused as another precision than the run's
            raise InputError(f"--mixed-precision fp16 --resume: accelerate runs no fp16 autocast on CPU, and {FP16_RESUMES_ON_CUDA}")
        if there is not None:
            raise InputError(f"--mixed-precision fp16: accelerate runs no fp16 autocast on CPU; give --mixed-precision {there}, the run's own")
        raise InputError("--mixed-precision fp16: accelerate runs no fp16 autocast on CPU (the run would be fp32); give --mixed-precision bf16 or no")
    if cfg.dtype == "fp16" and mixed != "no":
        # fp16 weights under autocast: GradScaler cannot unscale fp16 gradients, and bf16
        # autocast over fp16 weights mixes two half formats.
        raise InputError(f"--dtype fp16: needs --mixed-precision no (it resolved to {mixed})")
    return mixed


def _recorded_precision(out: Path) -> str | None:
    """The precision the run in `out` trained with (resume_record.recorded_precision); None where
    there is no record or it does not say (the run directory's own checks, under its lock, say why)."""
    try:
        saved = read_run_config(out)
    except InputError:
        return None
    return None if saved is None else recorded_precision(saved)


def precision_said(cfg: TrainConfig, accelerator: Accelerator) -> str:
    """The numerics this run computes in, for the line that stands where the step-0 check would
    say them (a resume's, or another model's): `auto` named with what it came to here."""
    mixed = accelerator.mixed_precision
    given = f"mixed precision {mixed}" + (" (auto here)" if cfg.mixed_precision == "auto" else "")
    return f"this run computes in {train_numerics(cfg.dtype, mixed).name} (--dtype {cfg.dtype}, {given})"


def launch_settings_of(cfg: TrainConfig) -> dict[str, str]:
    """What each process of a launch compares with the others' (formats/launch_agreement.py):
    every setting but the paths (each machine may keep the cache, the model and the run
    directory elsewhere; the cache's fingerprint and the model's identity speak for what they
    hold), and the versions."""
    return launch_settings(cfg, text_paths=(*TEXT_PATHS, "base_model"), extra=versions())


def make_accelerator(cfg: TrainConfig) -> Accelerator:
    from accelerate import Accelerator

    mixed = mixed_precision_in_force(cfg)
    log_with = trackers.log_with(cfg.report_to)  # a missing tracker is refused here, before any model loads
    # gradient_accumulation_steps stays 1: step.py accumulates and normalises explicitly.
    # cpu=True without CUDA: accelerate only starts a gloo group for several CPU processes then.
    plugin = sharding.fsdp_plugin(cfg)
    if cfg.dtype == "fp16" and cfg.lora_r == 0:
        # AdamW then keeps its moments in fp16: eps = 1e-8 rounds to 0 and small squared
        # gradients underflow, so a weight with a tiny or zero gradient divides by 0 (NaN at
        # step 2 on CPU). LoRA is fine: peft keeps the adapters in fp32 over fp16 base weights.
        raise InputError(
            "--dtype fp16: full fine-tuning of fp16 weights puts AdamW's state in fp16, where it underflows (NaN after one update); "
            "use --dtype bf16, or --dtype fp32 with --mixed-precision fp16, or LoRA (--lora-r) over fp16 weights"
        )
    accelerator = Accelerator(mixed_precision=mixed, log_with=log_with, project_dir=str(cfg.out), cpu=not torch.cuda.is_available(), fsdp_plugin=plugin)
    return sharding.promote_cpu_state(accelerator, plugin)


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
        # The weight the warning advises (the shortest inside the range), not the range's edge,
        # where rounding may leave the ratio a hair outside it.
        log(f"--auto-weights: desirable weight {cfg.desirable_weight} -> {b.advised_desirable_weight}", accelerator)
        return replace(cfg, desirable_weight=float(b.advised_desirable_weight))
    log(f"warning: ratio outside [1, 4/3]; --desirable-weight {b.advised_desirable_weight} (or --auto-weights) brings it inside", accelerator)
    return cfg


def check_inputs(cfg: TrainConfig) -> Run:
    """Every start-up check that can fail on the user's input, before anything is written to
    --out: precision flags, the manifest and every shard's footer and row count, the tokenizer,
    the eval cache, the model's identity. A failure here leaves --out as it was."""
    started = time.perf_counter()
    check_schedule(cfg)
    accelerator = make_accelerator(cfg)
    check_launch_agreement(lambda: launch_settings_of(cfg), accelerator)  # before --out, step 1 or a collective that other flags would hang
    adapters.check_environment(cfg, "cuda" if torch.cuda.is_available() else "cpu")  # peft, bitsandbytes: before the cache and the model
    torch.manual_seed(cfg.seed)
    # Before anything writes to the cache (the tokenizer check's memo): an --out refused here
    # (inside a cache, or holding what is not ours) leaves the cache as it was too.
    on_main(lambda: refuse_foreign(cfg.out), accelerator)
    cache = open_cache(cfg.cache)
    refuse_eval_split(cfg, cache.manifest)  # before its shards are read: the manifest says
    lengths = cache.lengths()
    cache.vocab_size()  # tokenizer/tokenizer.json readable (the shards' values are checked against it)
    manifest = cache.manifest
    source = resolve_source(cfg.model)
    pad_id, tokenizer, chat_template = check_tokenizer(cfg, source, cache, accelerator)
    source = checked_source(source, trust_remote_code=cfg.trust_remote_code)  # weights vs config.json; the one skeleton, load included
    check_attention_implementation(source, cfg.attn_implementation, trust_remote_code=cfg.trust_remote_code)
    build = source.skeleton
    adapters.check_model(cfg, build() if adapters.enabled(cfg) else None)
    packs = cfg.prefix_sharing and packs_allowed(build, accelerator)
    eval_cache = open_eval_cache(cfg, cache, accelerator)
    note_changed_inputs(cfg, cache, eval_cache, accelerator)
    check_positions(build, cfg.model, cache, eval_cache)
    cfg = apply_class_balance(cfg, manifest.counts, accelerator)
    shape, lowered = fitted_shape(cache.num_rows, MicroBatchShape(cfg.batch_size, cfg.grad_accum, accelerator.num_processes))
    for note in lowered:
        log(f"note: {note}", accelerator)
    cfg = replace(cfg, batch_size=shape.batch_size, grad_accum=shape.grad_accum)  # the record holds what ran; a resume lowers them alike
    per_epoch = steps_per_epoch(cache.num_rows, shape)
    total_steps = planned_steps(cfg, per_epoch)
    check_schedule(cfg, total_steps)  # every step's rate over the run's real steps, before the model loads
    identity = model_identity(source)
    is_reference = manifest.content.scored_with(identity)
    check_drift_tolerance(cfg, manifest, is_reference, resumes=bool(cfg.resume))  # before --out is touched
    record = {"config": config_record(cfg), "derived": derived_record(total_steps, accelerator, cache, eval_cache, identity, packs), **made_with()}
    create_model_repo(cfg, record, accelerator)  # last
    return Run(
        cfg=cfg,
        accelerator=accelerator,
        cache=cache,
        eval_cache=eval_cache,
        source=source,
        pad_id=pad_id,
        tokenizer=tokenizer,
        chat_template=chat_template,
        lengths=lengths,
        groups=prompt_groups(cache) if cfg.prefix_sharing else None,
        shape=shape,
        steps_per_epoch=per_epoch,
        total_steps=total_steps,
        settings=loss_settings(cfg, packs),
        record=record,
        is_reference=is_reference,
        started=started,
    )


def create_model_repo(cfg: TrainConfig, record: dict, accelerator: Accelerator) -> None:
    """--push-to-hub's repo, created (or its write access checked) once the inputs passed, and a
    --resume as far as it can be checked without changing --out (rundir.refuse_before_the_lock):
    a refused command leaves no empty repo on the Hub. Before the lock and the model's load: a
    token that cannot write stops the run in seconds, with --out as it was."""
    if cfg.push_to_hub:
        on_main(lambda: refuse_before_the_lock(cfg, record), accelerator)
        on_main(lambda: create_push_repo(cfg.push_to_hub, dataset=False, private=cfg.hub_private), accelerator)


def derived_record(total_steps: int, accelerator: Accelerator, cache: ShardedCache, eval_cache: ShardedCache | None, identity: dict, packs: bool) -> dict:
    """The run record's `derived` part: what start-up worked out from the flags, caches and model."""
    return {
        "total_steps": total_steps,
        "world_size": accelerator.num_processes,
        "cache_fingerprint": cache.manifest.fingerprint,
        "eval_cache_fingerprint": eval_cache.manifest.fingerprint if eval_cache else None,
        "model_identity": identity,
        REFERENCE_IDENTITY: cache.manifest.content.model,  # --eval-only and score check other caches against it
        "steps_share_prefixes": packs,  # prefix_sharing asked, and --model's layers allow it (packs_allowed)
        IN_FORCE: accelerator.mixed_precision,  # no | bf16 | fp16: what `auto` came to here (resume_record.py compares it on --resume)
    }


def not_the_reference(cfg: TrainConfig, manifest: Manifest) -> str:
    """--model is not the cache's reference, said with both (the reference as the manifest records
    it); where --model is the path the cache's model was read from, that the files there changed."""
    if same_path(cfg, manifest):
        return f"--model {cfg.model} is the path --cache {cfg.cache} was scored with, but the files there changed since the cache was made"
    return f"--model {cfg.model} is not {manifest.reference_model}, the model --cache {cfg.cache} was scored with"


def same_path(cfg: TrainConfig, manifest: Manifest) -> bool:
    """Is --model the path (or hub id) the manifest records as the cache's model (info.model_path)?
    A recorded absolute path is compared with --model made absolute; a relative one (caches made
    before it was made absolute, relative to a directory nobody recorded) only as a hub id, as typed."""
    recorded = manifest.info.get("model_path") if isinstance(manifest.info, dict) else None
    if not isinstance(recorded, str) or not recorded:
        return False
    given = os.path.expanduser(str(cfg.model))
    if os.path.isabs(recorded):
        return os.path.abspath(given) == os.path.normpath(recorded)
    return given == recorded and not os.path.exists(given)


def check_drift_tolerance(cfg: TrainConfig, manifest: Manifest, is_reference: bool, resumes: bool) -> None:
    """A --drift-tolerance given (flag, --config or TrainConfig: None is the default, the
    numerics' own tolerance; loop.py check_drift) asks for the step-0 check. Where that check
    cannot run, it was ignored without a word; refused instead, naming why. A resumed run
    (`resumes`: --resume; a resume finds a checkpoint or is refused, rundir.py open_run_dir), whose
    check ran when it started, is not refused (setup says the check is skipped). The advice says
    "the tolerance", not the flag: from a --config file, the refusal leads with the file's key."""
    if cfg.drift_tolerance is None or resumes:
        return
    given = f"--drift-tolerance {cfg.drift_tolerance:g}"
    if not is_reference:
        other = "rerun kto-precompute with the model now there" if same_path(cfg, manifest) else f"train {manifest.reference_model}"
        raise InputError(
            f"{given}: the step-0 check compares --model with the cache's reference, and {not_the_reference(cfg, manifest)}; leave the tolerance out, or {other}"
        )
    if not manifest.content.store_token_logps:
        raise InputError(
            f"{given}: the step-0 check compares per-token log-probs, and --cache {cfg.cache} was made with --no-token-logps; "
            "leave the tolerance out, or rerun kto-precompute without --no-token-logps"
        )


def check_tokenizer(
    cfg: TrainConfig, source: ModelSource, cache: ShardedCache, accelerator: Accelerator
) -> tuple[int, PreTrainedTokenizerBase | None, str | None]:
    """--model's tokenizer against the cache's (check_cache_tokenizer). Returns the pad id, the
    tokenizer if it was loaded, and the chat template checkpoints and final/ are saved with
    (None: --model's own; rendered_with).

    One that differs in its chat template only is taken, with a note, not refused: the cached
    token ids do not depend on it (kto-precompute rendered and tokenized the prompts; vocabulary,
    special tokens and pipeline, which decide ids, are the cache's), so training is as right as
    with the cache's model. What the template does decide is how final/ is served, which must be
    the format the rows were rendered in: the cache's template (its tokenizer/, checked against
    the manifest) is saved in place of --model's. Without that text it is refused: final/ would
    carry a template the policy was never trained in. Such a model's tokenizer is loaded
    and compared on every start (check_cache_tokenizer remembers matches only)."""
    content = cache.manifest.content
    try:
        pad_id, tokenizer = check_cache_tokenizer(source, content.tokenizer, cfg.model, cache.dir, trust_remote_code=cfg.trust_remote_code)
        return pad_id, tokenizer, rendered_with(cache, accelerator)
    except ChatTemplateDiffers as refused:
        tokenizer, identity = refused.tokenizer, refused.identity
    where = f"--cache {cfg.cache}'s prompts were rendered with"
    digest = content.saved_tokenizer["chat_template"]
    if digest == NO_TEMPLATE:
        # The cache's tokenizer had no template, so its rows are text prompts (kto-precompute
        # refuses conversational rows without one, and a --chat-template would be this digest):
        # no template is the format trained on, and none is lost by keeping --model's. Saving
        # final/ without a template instead would take from it the chat format its base model
        # was made for, which serving a chat model needs; --model's is the right one to keep.
        log(
            f"note: --model {cfg.model} has a chat template and --cache {cfg.cache}'s tokenizer none: its rows are text prompts, not rendered "
            "with a template (the cached token ids do not depend on it); checkpoints and final/ keep --model's template",
            accelerator,
        )
        return tokenizer.pad_token_id, tokenizer, None
    path, text, why = cache_template(cache, digest)
    if text is None:
        raise InputError(
            f"--model {cfg.model}: its chat template is not the one {where}, and {path}, that template, {why}: final/ would be saved "
            "with a template the policy was not trained in (the token ids are unaffected). Restore the cache's tokenizer/, or give a --model with the cache's template"
        ) from None
    log(template_note(cfg, content, identity["chat_template"] == NO_TEMPLATE), accelerator)
    kwargs_note(cache, accelerator)
    return tokenizer.pad_token_id, tokenizer, text


# tokenizer_identity's chat_template of a tokenizer without one (the sha256 of no text).
NO_TEMPLATE = hashlib.sha256(b"").hexdigest()


def template_note(cfg: TrainConfig, content: CacheContent, model_has_none: bool) -> str:
    """The note on a --model whose chat template is not the one the cache's prompts were rendered
    with. Rerunning kto-precompute with --model is advised only where --model has a template: a
    --model without one renders no conversation (kto-precompute refuses such rows)."""
    same = "the cached token ids do not depend on it (vocabulary, special tokens and pipeline are the cache's), and checkpoints and final/ are saved with the cache's template, the format trained on"
    if model_has_none:
        return f"note: --model {cfg.model} has no chat template, and --cache {cfg.cache}'s prompts were rendered with one; {same}"
    again = " and without --chat-template" if content.chat_template else ""
    return (
        f"note: --model {cfg.model}'s chat template is not the one --cache {cfg.cache}'s prompts were rendered with; {same}. "
        f"To train on --model's template, rerun kto-precompute with this --model{again}"
    )


def cache_template(cache: ShardedCache, digest: str | None) -> tuple[Path, str | None, str]:
    """(path, text, why not): the chat template in the cache's tokenizer/ when its sha256 is
    `digest`, else None and why (said after the path)."""
    path = cache.dir / S.TOKENIZER_DIR / "chat_template.jinja"  # where transformers 5 saves a tokenizer's template
    text = path.read_text(encoding="utf-8") if path.is_file() else None
    if text is not None and hashlib.sha256(text.encode()).hexdigest() == digest:
        return path, text, ""
    return path, None, "is missing" if text is None else "is not the template the manifest fingerprints"


def kwargs_note(cache: ShardedCache, accelerator: Accelerator) -> None:
    """A tokenizer saves its template, not the variables it was rendered with: said, when there were some."""
    kwargs = cache.manifest.content.chat_template_kwargs
    if kwargs:
        log(
            f"note: the cache's prompts were rendered with --chat-template-kwargs {json.dumps(kwargs)}; give apply_chat_template the same when serving final/",
            accelerator,
        )


def rendered_with(cache: ShardedCache, accelerator: Accelerator) -> str | None:
    """The text of the --chat-template kto-precompute rendered the cache's prompts with, read
    from the cache's tokenizer/ and checked against the manifest's sha256; None when the cache
    used --model's own template. Without the text (a tokenizer/ left out of a copy), final/
    keeps --model's template, and a warning says so: the model would then be served prompts in
    a format it was not trained on."""
    kwargs_note(cache, accelerator)
    digest = cache.manifest.content.chat_template
    if digest is None:
        return None
    path, text, why = cache_template(cache, digest)
    if text is not None:
        return text
    log(f"warning: {path} {why}; checkpoints and final/ keep --model's chat template, not the --chat-template the cache was rendered with", accelerator)
    return None


def check_positions(build: Callable[[], torch.nn.Module], model: str, cache: ShardedCache, eval_cache: ShardedCache | None) -> None:
    """Before --out is touched: no cache row is longer than --model's learned position table
    (GPT-2's `wpe`; formats/compute/logprob.py check_cache_positions), which would end the first
    step in an IndexError. A model that cannot be built here is left to its load to refuse."""
    try:
        skeleton = build()
    except InputError:
        return
    for flag, split in (("--cache", cache), ("--eval-cache", eval_cache)):
        if split is not None:
            check_cache_positions(split, skeleton, f"--model {model}", flag)


def packs_allowed(build: Callable[[], torch.nn.Module], accelerator: Accelerator) -> bool:
    """Whether --model's layers, in the skeleton `build` makes, let the steps score packs
    (shared_prefix.py sharing_refusal); when not, one line says so and every sequence is scored
    whole. The epoch plan still keeps a prompt's rows together: it changes no number, and a
    resumed run plans the same."""
    reason = sharing_refusal(build)
    if reason is not None:
        log(f"note: prefix sharing off in the steps: {reason}; each sequence is scored whole (the same numbers)", accelerator)
    return reason is None


def loss_settings(cfg: TrainConfig, packs: bool = True) -> LossSettings:
    """The step's settings; the policy pass does not share prefixes under gradient checkpointing
    (train/step.py LossSettings says why), and neither pass does for a model whose layers would
    mix a pack's completions (`packs`: packs_allowed)."""
    return LossSettings(
        cfg.beta,
        cfg.desirable_weight,
        cfg.undesirable_weight,
        cfg.loss_type,
        cfg.sft_weight,
        cfg.kl_scope,
        kl_prefix_sharing=cfg.prefix_sharing and packs,
        policy_prefix_sharing=cfg.prefix_sharing and packs and not cfg.gradient_checkpointing,
    )


def setup(run: Run) -> Run:
    """Under the run directory's lock: pick the checkpoint, build the policy (model, optimizer,
    scheduler) and restore its training state, then record the configuration and open metrics.jsonl."""
    cfg, accelerator = run.cfg, run.accelerator
    resume_from = on_main(lambda: open_run_dir(cfg, run.record, lambda msg: log(msg, accelerator)), accelerator)
    if resume_from is not None and not accelerator.is_main_process:
        # open_run_dir gave the main process's record the run's own spelling of lora_target_modules
        # and model identity; every rank takes them, so each rank's settings digest is the one its
        # checkpoints carry.
        keep_recorded(run.record, read_run_config(cfg.out))
    plan = {**plan_identity(cfg, run.cache.manifest.fingerprint, accelerator.num_processes, run.total_steps), "settings": settings_digest(run.record)}
    policy = Policy.build(cfg, accelerator, run.source, run.tokenizer, resume_from, run.total_steps, plan, run.chat_template)
    position = policy.resume(resume_from)
    if resume_from is not None:
        on_main(lambda: set_aside_later(cfg.out, resume_from, lambda msg: log(msg, accelerator)), accelerator)
    is_reference = resume_from is None and run.is_reference
    if not is_reference:
        why = (
            "the policy was resumed from a checkpoint, so it is no longer the reference"
            if resume_from
            else f"{not_the_reference(cfg, run.cache.manifest)} (its identity differs from the manifest's); "
            "the rewards r = log πθ − log πref are measured against that reference"
        )
        log(f"step-0 check skipped: {why}; {precision_said(cfg, accelerator)}", accelerator)
    metrics = open_records(cfg, run.record, position, accelerator)
    steps = lambda n: f"{n} step{'' if n == 1 else 's'}"
    log(f"{run.cache.num_rows} rows, {steps(run.steps_per_epoch)} per epoch of {run.shape.rows_per_step} rows, {steps(run.total_steps)}", accelerator)
    said = warmup_note(cfg, run.total_steps)
    if said:
        log(said, accelerator)
    return replace(run, policy=policy, position=position, is_reference=is_reference, metrics=metrics)


def open_records(cfg: TrainConfig, record: dict, position: Position, accelerator: Accelerator) -> MetricsWriter | None:
    """Main process: write kto_run.json, start the trackers, open metrics.jsonl (None elsewhere)."""
    if not accelerator.is_main_process:
        return None
    write_record(cfg.out, record)
    try:
        if accelerator.log_with:
            # + 1: the resume step's own eval line is the checkpoint's, kept (as in metrics.jsonl).
            trackers.start(accelerator, cfg.out, cfg.run_name, vars(cfg), purge_step=position.global_step + 1 if cfg.resume else None)
        resume_step = position.global_step if cfg.resume else None
        return MetricsWriter(cfg.out / METRICS_NAME, accelerator, resume_step=resume_step, has_kl=cfg.loss_type.needs_kl)
    except BaseException:  # a full disk: the trackers started are ended
        close_after_failure(None, accelerator)
        raise


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
