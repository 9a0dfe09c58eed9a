"""What a config file resolves to for one command: its values under the command's own option
names, the lines to print, and what the caller resolves once it knows more (config_names sorts
a file into it; config_schedule and kto-train's CLI read it)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .config_keys import same_value
from .errors import InputError


@dataclass
class Resolved:
    """A config file's values under the command's own option names, and the lines to print."""

    values: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    origin: dict[str, str] = field(default_factory=dict)
    """Our name -> the key of the file it came from (for messages)."""
    defaults: dict[str, Any] = field(default_factory=dict)
    """Values a mapped key implies unless the file sets that option itself."""
    forced: dict[str, Any] = field(default_factory=dict)
    """Values a mapped key sets whatever else the file says (`finetuning_type: full` turns LoRA
    off even where the file keeps a `lora_rank`, as LLaMA-Factory and TRL ignore it then)."""
    alpha_twice_rank: bool = False
    """lora_alpha is 2 × lora_r unless given (LLaMA-Factory): the caller recomputes it when the
    command line gives another lora_r."""
    eval_in_cache: bool = False
    """kto-train: the file holds LLaMA-Factory's `val_size`, so CACHE/eval is the eval cache
    unless one is given (kto-precompute wrote it there)."""
    peft_default_targets: bool = False
    """kto-train: `use_peft: true` without lora_target_modules: LoRA goes where peft puts it for
    the model type (TRL passes None), which the caller resolves once it knows the model."""
    defaulted: set[str] = field(default_factory=set)
    """Values the file did not write, set by the defaults of the tool whose names it uses
    (`_their_defaults`, TRL's LoRA defaults): a run resumed from a record keeps its own."""
    ratios: dict[str, tuple[str, float]] = field(default_factory=dict)
    """kto-train: our name -> (the file's key, its share of the total steps) for transformers 5's
    `logging_steps: 0.25` and the like; the caller resolves them against max_steps."""
    default_notes: dict[str, str] = field(default_factory=dict)
    """Our name -> the line saying which default of their tool it takes: printed only when the
    command line does not set that option itself (`--max-length 64` over a LLaMA-Factory file)."""
    eval_from_logging: bool = False
    """kto-train: eval_every is the file's logging_steps (`eval_strategy: steps` without
    eval_steps), so a --log-every on the command line moves it too, as transformers derives it."""
    newly_read: dict[str, str] = field(default_factory=dict)
    """kto-train: our name -> the file's key that sets it and that earlier versions ignored
    (mixed_precision from bf16/fp16): a run recorded then resumes with its recorded value."""
    push_needs_repo: bool = False
    """kto-train: `push_to_hub: true` without hub_model_id: refused unless --push-to-hub names the repo."""
    private_if_pushed: bool = False
    """kto-train: `hub_private_repo: true` with the upload off in the file: applied when
    --push-to-hub turns it on from the command line."""
    other_values: dict[str, Any] = field(default_factory=dict)
    """The other command's keys with their values (kto-train compares kto-precompute's with the
    cache's manifest: precompute_disagreements)."""
    written: dict[str, Any] = field(default_factory=dict)
    """Every key of the file with its value as written (dashes turned into underscores): what an
    error about a value names (formats/config_file.py, file_key_error)."""
    forced_by: dict[str, str] = field(default_factory=dict)
    """Our name -> the key that forces its value (`finetuning_type: full` sets lora_r 0)."""
    lora_asked_by: str | None = None
    """kto-train: the key that asks for LoRA (`finetuning_type: lora`, `use_peft: true`), whose
    rank must then be at least 1: 0 would train every weight here, and peft refuses it there."""

    rank_needs_use_peft: str | None = None
    """kto-train: the refusal of a TRL file's lora_r without use_peft (config_adapters), made by
    the caller unless the command line settles it (--lora-r) or reads no rank (--eval-only)."""
    adapters: list[str] | None = None
    """kto-train: LLaMA-Factory's adapter_name_or_path as a list of directories, which evaluate
    (--model, on model_name_or_path) or are refused to train on: the caller decides once the
    command line's --eval-only is known (config_adapters.adapters_in_force)."""

    def set(self, ours: str, value: Any, key: str) -> None:
        if ours in self.values and not same_value(self.values[ours], value):
            raise InputError(f"{self.origin[ours]}: {self.values[ours]!r} and {key}: {value!r} set the same option ({ours}); give one")
        self.values[ours] = value
        self.origin[ours] = key

    def force(self, ours: str, value: Any, key: str) -> None:
        """`ours` is `value` whatever else the file says, because of the file's `key`."""
        self.forced[ours] = value
        self.forced_by[ours] = key

    def key_of(self, ours: str) -> str | None:
        """The file's key that set our option `ours`, or None where the file did not write one."""
        return self.forced_by.get(ours) or self.origin.get(ours)
