"""The policy: one object that builds, resumes, saves and finishes the model kto-train trains.

Two choices shape it, each made once (`Policy.build`) and held by composition:
- what is trained, a `Trainable`: every weight (`FullWeights`) or LoRA adapters on a frozen base
  (`LoraAdapters`; the peft work is train/adapters.py's);
- how the weights lie over the processes, a `Layout`: a whole copy in each process
  (`WholeCopies`: one process or DDP; checkpoint.py's files) or FSDP2 shards (`Shards`; the DCP
  work is train/sharding.py's).
Their four pairs are the four ways to save. The loop calls `policy.save(position)` and
`policy.finish(step)` and never asks which pair it holds. The strategies live here, not in
adapters.py and sharding.py, because they name `Policy` and those modules sit below it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import torch
from accelerate.utils import gather_object

from kto.formats.compute.loading import load_tokenizer, tokenizer_as_given
from kto.formats.compute.sources import ModelSource, resolve_source
from kto.formats.errors import InputError, log
from kto.formats.runrecord import FINAL_DIR, MERGED_DIR, checkpoint_dir

from . import adapters, sharding
from .checkpoint import FinalFiles, Position, load_training_state, prune_checkpoints, rng_states, save_checkpoint, save_model_dir, saved_dir
from .guard import check_weights
from .model import load_base, load_policy
from .optim import build_optimizer, build_scheduler

if TYPE_CHECKING:
    from collections.abc import Mapping

    from accelerate import Accelerator
    from transformers import PreTrainedTokenizerBase

    from kto.formats.compute.logprob import CompletionLogps

    from .config import TrainConfig


class Trainable(Protocol):
    """What is trained: which weights a checkpoint holds and how the model is built from them."""

    adapters_only: bool
    """Checkpoints hold only the trainable weights; the frozen base is --model, loaded again."""

    def load(self, source: ModelSource, resume_from: Path | None, weights_from_checkpoint: bool) -> CompletionLogps:
        """The model in train mode, from --model or, when `weights_from_checkpoint`, from `resume_from`."""
        ...

    def saved_config(self, lm: torch.nn.Module) -> object | None:
        """What a sharded checkpoint writes beside its shards to say what they are (adapter_config.json)."""
        ...

    def after_final(self, final: Path, tokenizer: PreTrainedTokenizerBase, accelerator: Accelerator, files: Mapping[str, str]) -> None:
        """Main process, after final/ is written: what else final/ implies (the merged model,
        with `files` inside it)."""
        ...


class Layout(Protocol):
    """How the weights lie over the processes, and so how they are prepared, saved and loaded."""

    weights_at_load: bool
    """A checkpoint's weights are read while the model is loaded (else after accelerate's prepare)."""

    def check_checkpoint(self, path: Path) -> None: ...

    def prepare(self, model: CompletionLogps, optimizer: torch.optim.Optimizer) -> tuple[torch.nn.Module, torch.optim.Optimizer]: ...

    def load_state(self, policy: Policy, path: Path) -> tuple[Position, dict]:
        """Restore what the checkpoint holds beyond load(): optimizer, scheduler, RNG (and shards)."""
        ...

    def save_checkpoint(self, policy: Policy, position: Position) -> Path:
        """OUT/checkpoint-STEP, written atomically; called on every rank."""
        ...

    def save_final(self, policy: Policy, final: Path, files: Mapping[str, str]) -> None:
        """OUT/final as one ordinary directory (HF model or PEFT adapters) with `files` inside
        before it appears; called on every rank."""
        ...


@dataclass(frozen=True)
class FullWeights:
    """Every weight trains; a whole-model checkpoint is an HF model directory, loaded as --model is."""

    cfg: TrainConfig
    adapters_only: bool = False

    def load(self, source: ModelSource, resume_from: Path | None, weights_from_checkpoint: bool) -> CompletionLogps:
        return load_policy(self.cfg, resolve_source(str(resume_from)) if weights_from_checkpoint else source)

    def saved_config(self, lm: torch.nn.Module) -> None:
        return None

    def after_final(self, final: Path, tokenizer: PreTrainedTokenizerBase, accelerator: Accelerator, files: Mapping[str, str]) -> None:
        return None


@dataclass(frozen=True)
class LoraAdapters:
    """LoRA (train/adapters.py): adapters train on the frozen base, --model; checkpoints and
    final/ hold the adapters only, and --merge-adapters also writes the base with them merged."""

    cfg: TrainConfig
    accelerator: Accelerator
    adapters_only: bool = True

    def load(self, source: ModelSource, resume_from: Path | None, weights_from_checkpoint: bool) -> CompletionLogps:
        cfg = self.cfg

        def with_adapters(lm: torch.nn.Module) -> torch.nn.Module:
            if weights_from_checkpoint:
                return adapters.load_adapters(cfg, lm, resume_from)
            if resume_from is not None:  # sharded: fresh adapters now, the checkpoint's after prepare
                adapters.check_adapter_settings(cfg, lm, resume_from)
            return adapters.add_adapters(cfg, lm)

        quantization = adapters.quantization_config(cfg, "cuda" if torch.cuda.is_available() else "cpu", self.accelerator.mixed_precision)
        # bitsandbytes weights cannot be moved after loading: put them on this process's device.
        device_map = {"": torch.cuda.current_device() if torch.cuda.is_available() else "cpu"} if quantization else None
        policy = load_policy(cfg, source, with_adapters, quantization_config=quantization, device_map=device_map)
        lm = policy.lm
        log(
            f"LoRA r = {cfg.lora_r} on {', '.join(sorted(lm.peft_config['default'].target_modules))}: "
            f"{sum(p.numel() for p in lm.parameters() if p.requires_grad):,} trainable parameters",
            self.accelerator,
        )
        return policy

    def saved_config(self, lm: torch.nn.Module) -> object:
        return lm.peft_config["default"]  # adapter_config.json: marks an adapter checkpoint

    def after_final(self, final: Path, tokenizer: PreTrainedTokenizerBase, accelerator: Accelerator, files: Mapping[str, str]) -> None:
        if self.cfg.merge_adapters:
            merged = final.parent / MERGED_DIR
            adapters.write_merged(load_base(self.cfg), final, tokenizer, merged, files)
            log(f"saved {merged} (--model with the adapters merged in)", accelerator)


@dataclass(frozen=True)
class WholeCopies:
    """One process, or DDP: every process holds the whole model; the main process saves it."""

    accelerator: Accelerator
    weights_at_load: bool = True

    def check_checkpoint(self, path: Path) -> None:
        if sharding.is_sharded_checkpoint(path):
            raise InputError(
                f"--resume: {path} is a sharded FSDP checkpoint; resume it with FSDP (--fsdp, or accelerate launch --use_fsdp) on several processes"
            )

    def prepare(self, model: CompletionLogps, optimizer: torch.optim.Optimizer) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
        return self.accelerator.prepare(model, optimizer)

    def load_state(self, policy: Policy, path: Path) -> tuple[Position, dict]:
        return load_training_state(path, policy.optimizer, policy.scheduler, self.accelerator.process_index)

    def save_checkpoint(self, policy: Policy, position: Position) -> Path:
        acc = self.accelerator
        acc.wait_for_everyone()
        rank_rng = gather_object([rng_states()])  # every rank's generators, in rank order
        if acc.is_main_process:
            lm = acc.unwrap_model(policy.model).lm  # under LoRA a PeftModel: save_pretrained writes the adapters
            save_checkpoint(policy.cfg.out, lm, policy.tokenizer, policy.optimizer, policy.scheduler, position, policy.plan, rank_rng)
        return checkpoint_dir(policy.cfg.out, position.global_step)

    def save_final(self, policy: Policy, final: Path, files: Mapping[str, str]) -> None:
        if self.accelerator.is_main_process:
            with saved_dir(final, files) as tmp:
                save_model_dir(self.accelerator.unwrap_model(policy.model).lm, policy.tokenizer, tmp)


@dataclass(frozen=True)
class Shards:
    """FSDP2 (train/sharding.py): each process holds a shard; checkpoints are DCP shards, read
    after accelerate's prepare has sharded the model; final/ is gathered on the main process."""

    accelerator: Accelerator
    trainable: Trainable
    weights_at_load: bool = False

    def check_checkpoint(self, path: Path) -> None:
        if not sharding.is_sharded_checkpoint(path):
            raise InputError(f"--resume: {path} was written without FSDP; resume it without FSDP")

    def prepare(self, model: CompletionLogps, optimizer: torch.optim.Optimizer) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
        sharding.before_prepare(self.accelerator, model.lm)
        return self.accelerator.prepare(model, optimizer)

    def load_state(self, policy: Policy, path: Path) -> tuple[Position, dict]:
        return sharding.load_checkpoint(path, policy.model, policy.optimizer, policy.scheduler, self.accelerator, self.trainable.adapters_only)

    def save_checkpoint(self, policy: Policy, position: Position) -> Path:
        acc, only = self.accelerator, self.trainable.adapters_only
        saved = self.trainable.saved_config(acc.unwrap_model(policy.model).lm)
        return sharding.save_checkpoint(
            policy.cfg.out, policy.model, policy.optimizer, policy.scheduler, policy.tokenizer, position, policy.plan, acc, only, saved
        )

    def save_final(self, policy: Policy, final: Path, files: Mapping[str, str]) -> None:
        sharding.save_final(final, policy.model, policy.tokenizer, self.accelerator, self.trainable.adapters_only, files)


@dataclass
class Policy:
    """The model being trained with its optimizer and scheduler, and the one way to save them.
    `last_checkpoint` is the newest checkpoint saved or resumed from (named when a run stops)."""

    cfg: TrainConfig
    accelerator: Accelerator
    trainable: Trainable
    layout: Layout
    model: torch.nn.Module
    """CompletionLogps, wrapped by accelerate (DDP with several processes, FSDP2 when sharded)."""
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    plan: dict
    """What the data order and LR schedule depend on (setup.plan_identity): checkpoints record it."""
    tokenizer_source: ModelSource
    loaded_tokenizer: PreTrainedTokenizerBase | None
    load_s: float
    """Seconds spent loading the weights (tools/bench_startup.py reports them apart)."""
    chat_template: str | None = None
    """Saved with the tokenizer in place of --model's: the template the cache was rendered with."""
    last_checkpoint: Path | None = None

    @classmethod
    def build(
        cls,
        cfg: TrainConfig,
        accelerator: Accelerator,
        source: ModelSource,
        tokenizer: PreTrainedTokenizerBase | None,
        resume_from: Path | None,
        total_steps: int,
        plan: dict,
        chat_template: str | None = None,
    ) -> Policy:
        """Choose the pair once, check `resume_from` fits it, load the model (--model, a whole
        checkpoint, or --model plus adapters), build the optimizer and scheduler, prepare them."""
        trainable = LoraAdapters(cfg, accelerator) if adapters.enabled(cfg) else FullWeights(cfg)
        layout = Shards(accelerator, trainable) if sharding.is_fsdp(accelerator) else WholeCopies(accelerator)
        if resume_from is not None:
            layout.check_checkpoint(resume_from)
            adapters.check_checkpoint_kind(cfg, resume_from)
        started = time.perf_counter()
        model = trainable.load(source, resume_from, resume_from is not None and layout.weights_at_load)
        load_s = time.perf_counter() - started
        optimizer = build_optimizer(model, cfg)
        scheduler = build_scheduler(optimizer, cfg, total_steps)
        model, optimizer = layout.prepare(model, optimizer)
        return cls(cfg, accelerator, trainable, layout, model, optimizer, scheduler, plan, source, tokenizer, load_s, chat_template, resume_from)

    @property
    def tokenizer(self) -> PreTrainedTokenizerBase:
        """Loaded on first use (saving) when start-up did not need it: a second run on a cache
        remembers the tokenizer check and the pad id (formats.compute.tokenizer_check.check_cache_tokenizer).
        Saved as --model gives it: without the pad token lent for padding (tokenizer_as_given)."""
        if self.loaded_tokenizer is None:
            self.loaded_tokenizer = load_tokenizer(self.tokenizer_source, trust_remote_code=self.cfg.trust_remote_code)
        self.loaded_tokenizer = tokenizer_as_given(self.loaded_tokenizer)
        if self.chat_template is not None:
            self.loaded_tokenizer.chat_template = self.chat_template
        return self.loaded_tokenizer

    @property
    def quantized(self) -> bool:
        """The base weights are bitsandbytes-quantized (QLoRA): they differ from the cache's reference."""
        return adapters.quantized(self.cfg)

    def resume(self, path: Path | None) -> Position:
        """Where training starts: step 0, or the checkpoint's position with its optimizer and
        scheduler state restored, once its plan is this run's (else the data order would differ)."""
        if path is None:
            return Position(0, 0, 0)
        position, saved = self.layout.load_state(self, path)
        # A checkpoint made before its plan held the run's settings is taken on the rest.
        differs = sorted(k for k in self.plan if saved.get(k, self.plan[k] if k == "settings" else None) != self.plan[k])
        if "settings" in differs:
            raise InputError(
                f"--resume: {path} was written by a run of other settings than {self.cfg.out}'s kto_run.json "
                f"(settings {str(saved['settings'])[:12]}… there, {self.plan['settings'][:12]}… now): a checkpoint resumes only the run that wrote it"
            )
        if differs:
            raise InputError(
                f"--resume: {path} was made with other "
                + ", ".join(f"{k} ({saved.get(k)} there, {self.plan[k]} now)" for k in differs)
                + "; the data order and LR schedule depend on them"
            )
        log(f"resumed from {path} at step {position.global_step}", self.accelerator)
        return position

    def save(self, position: Position) -> Path:
        """OUT/checkpoint-STEP (never of non-finite weights), then --save-total-limit applied."""
        acc, step = self.accelerator, position.global_step
        check_weights(self.model, acc, step, self.last_checkpoint, f"checkpoint-{step}", self.cfg)
        path = self.layout.save_checkpoint(self, position)
        log(f"saved {path}", acc)
        if acc.is_main_process:
            for old in prune_checkpoints(self.cfg.out, self.cfg.save_total_limit):
                log(f"removed {old} (--save-total-limit {self.cfg.save_total_limit})", acc)
        self.last_checkpoint = path
        acc.wait_for_everyone()
        return path

    def finish(self, step: int, files: FinalFiles | None = None) -> Path:
        """OUT/final (never of non-finite weights), and what it implies (the merged model), each
        with its `files` (the model cards; the main process's count) inside before it appears."""
        acc, final = self.accelerator, self.cfg.out / FINAL_DIR
        files = files or FinalFiles()
        check_weights(self.model, acc, step, self.last_checkpoint, "final/", self.cfg)
        acc.wait_for_everyone()
        self.layout.save_final(self, final, files.final)
        if acc.is_main_process:
            log(f"saved {final}", acc)
            self.trainable.after_final(final, self.tokenizer, acc, files.merged)
        return final
