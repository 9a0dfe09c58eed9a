"""Other tools' names: axolotl's config keys (`rl: kto`) and OpenRLHF's train_kto flags, each
with our option or a one-line "what to use instead". Not read as values (a file in their names
is refused, every key at once): consulted before any spelling match, so that a near spelling
never points at an option of another meaning (`datasets` is not `dataset`, OpenRLHF's global
`--train_batch_size` is not `--batch-size`). config_names._suggest reads it for a file's key,
config_keys.option_hint for a flag (docs/migrating.md, "From axolotl or OpenRLHF"). A flag of
the other command is said to be its (config_keys.owned_flags). The few axolotl keys whose value
decides what they say (`rl`, a `chat_template` by name, `base_model`) are read here too, for
config_names.resolve."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .config_commands import PRECOMPUTE, TRAIN
from .paths import expand_home

AXOLOTL, OPENRLHF = "axolotl", "OpenRLHF"

# axolotl's chat templates by name (its ChatTemplate enum, axolotl/utils/chat_templates): a
# `chat_template:` of one of these, where no such file exists, is skipped with a note; any other
# name is a file path, refused by kto-precompute when missing.
AXOLOTL_TEMPLATES = frozenset(
    {
        "alpaca", "chatml", "mistral_v1", "mistral_v2v3", "mistral_v3_tekken", "mistral_v7_tekken", "gemma", "gemma3", "cohere",
        "llama3", "llama3_2_vision", "llama4", "phi_3", "phi_35", "phi_4", "deepseek_v2", "deepseek_v3", "jamba", "jinja",
        "qwen_25", "qwen3", "falcon_h1", "vicuna_v1", "tokenizer_default",
    }
)  # fmt: skip


def axolotl_template(value: object) -> bool:
    """Whether `value` is one of axolotl's chat template names (`tokenizer_default_fallback_NAME` too)."""
    return isinstance(value, str) and (value in AXOLOTL_TEMPLATES or value.startswith("tokenizer_default_fallback_"))


@dataclass(frozen=True)
class Foreign:
    source: str
    """Whose name it is."""
    ours: str | None = None
    """Our option it is (underscored), where one is."""
    command: str | None = None
    """Whose option `ours` is; None: both commands'."""
    more: str = ""
    """What to add to `ours`, or, without it, what to do instead."""


def _ax(ours: str | None, command: str | None = None, more: str = "") -> Foreign:
    return Foreign(AXOLOTL, ours, command, more)


def _orl(ours: str | None, command: str | None = None, more: str = "") -> Foreign:
    return Foreign(OPENRLHF, ours, command, more)


_WANDB = "report_to: wandb, with WANDB_PROJECT, WANDB_ENTITY and run_name"
_ADAMW = "torch's AdamW is the only optimizer: leave it out"
_OWN_CLASSES = "the model's own class and tokenizer: leave it out"
_NO_GENERATION = "kto-train generates no samples: leave it out"
FOREIGN: dict[str, Foreign] = {
    # axolotl (its config reference, rl: kto)
    "datasets": _ax("data", PRECOMPUTE, "(FILE, a list, or hf:ID:SPLIT; prompt, completion, label columns)"),
    "sequence_len": _ax("max_length", PRECOMPUTE),
    "rl_beta": _ax("beta", TRAIN),
    "kto_desirable_weight": _ax("desirable_weight", TRAIN),
    "kto_undesirable_weight": _ax("undesirable_weight", TRAIN),
    "micro_batch_size": _ax("batch_size", TRAIN, "(per process)"),
    "num_epochs": _ax("epochs", TRAIN),
    "lr_scheduler": Foreign(f"{AXOLOTL}/{OPENRLHF}", "lr_schedule", TRAIN),
    "optimizer": _ax(None, TRAIN, _ADAMW),
    "adapter": _ax("lora_r", TRAIN, "R (qlora: with load_in_4bit: true)"),
    "lora_target_linear": _ax("lora_target_modules", TRAIN, "(left out: every linear layer)"),
    "dataset_prepared_path": _ax(None, None, "cache: DIR (kto-precompute's --out, kto-train's --cache)"),
    "val_set_size": _ax("eval_fraction", PRECOMPUTE, "(a fraction)"),
    "evals_per_epoch": _ax(None, TRAIN, "eval_each_epoch: true (once per epoch) or eval_every: N (steps)"),
    "saves_per_epoch": _ax(None, TRAIN, "save_each_epoch: true (once per epoch) or save_every: N (steps)"),
    "special_tokens": _ax(None, PRECOMPUTE, "add tokens to the model's tokenizer"),
    "pad_to_sequence_len": _ax(None, None, "rows are padded per batch: leave it out"),
    "sample_packing": _ax(None, None, "rows are never packed: leave it out"),
    "train_on_inputs": _ax(None, None, "the KTO loss reads completion tokens only: leave it out"),
    "wandb_project": _ax(None, TRAIN, _WANDB),
    "wandb_entity": _ax(None, TRAIN, _WANDB),
    "wandb_name": _ax(None, TRAIN, _WANDB),
    "wandb_watch": _ax(None, TRAIN, _WANDB),
    "wandb_log_model": _ax(None, TRAIN, _WANDB),
    "xformers_attention": _ax("attn_implementation", None, "(sdpa or flash_attention_2)"),
    "flash_attention": _ax("attn_implementation", None, "flash_attention_2"),
    "sdp_attention": _ax("attn_implementation", None, "sdpa (the default)"),
    "model_type": _ax(None, None, _OWN_CLASSES),
    "tokenizer_type": _ax(None, None, _OWN_CLASSES),
    "chat_template_jinja": _ax("chat_template", PRECOMPUTE, "FILE.jinja (the template's text in a file)"),
    "strict": _ax(None, None, "unknown keys are always refused: leave it out"),
    "eval_table_size": _ax(None, TRAIN, _NO_GENERATION),
    "eval_max_new_tokens": _ax(None, TRAIN, _NO_GENERATION),
    "lora_model_dir": _ax(None, TRAIN, "adapters start fresh: merge one into the model to train on from it"),
    "lora_fan_in_fan_out": _ax(None, TRAIN, "peft's default for the model's layers: leave it out"),
    "early_stopping_patience": _ax(None, TRAIN, "no early stopping: leave it out"),
    # OpenRLHF (openrlhf/cli/train_kto.py)
    "pretrain": _orl("model"),
    "input_key": _orl("prompt_column", PRECOMPUTE),
    "output_key": _orl("completion_column", PRECOMPUTE),
    "label_key": _orl("label_column", PRECOMPUTE),
    "max_len": _orl("max_length", PRECOMPUTE),
    "prompt_max_len": _orl("max_prompt_length", PRECOMPUTE),
    "desirable_loss_weight": _orl("desirable_weight", TRAIN),
    "undesirable_loss_weight": _orl("undesirable_weight", TRAIN),
    "micro_train_batch_size": _orl("batch_size", TRAIN, "(per process)"),
    "train_batch_size": _orl(None, TRAIN, "its global batch: here --batch-size × --grad-accum × processes (8 on one process: --batch-size 2 --grad-accum 4)"),
    "max_epochs": _orl("epochs", TRAIN),
    "lr_warmup_ratio": _orl("warmup_ratio", TRAIN),
    "max_norm": _orl("max_grad_norm", TRAIN),
    "l2": _orl("weight_decay", TRAIN),
    "save_path": _orl("out", TRAIN),
    "ckpt_path": _orl(None, TRAIN, "checkpoints are OUT/checkpoint-STEP (--save-every N); --resume continues from the latest"),
    "load_checkpoint": _orl("resume", TRAIN),
    "zero_stage": _orl(None, TRAIN, "DeepSpeed ZeRO is not supported: --fsdp shards parameters, gradients and optimizer state (as ZeRO-3)"),
    "target_modules": _orl("lora_target_modules", TRAIN),
    "apply_chat_template": _orl(
        None, PRECOMPUTE, "chat rows render with the tokenizer's chat template always (--chat-template FILE replaces it): leave it out"
    ),
    "ref_pretrain": _orl(None, PRECOMPUTE, "the reference is kto-precompute's --model, scored once into the cache"),
    "use_wandb": _orl(None, TRAIN, "--report-to wandb"),
}


def foreign_key_hint(key: str, command: str, own: frozenset[str] | set[str]) -> str | None:
    """What a config file's `key` of another tool is here, for the refusal's parenthesis; None
    for a key not in FOREIGN, or one of `command`'s own (`own`: axolotl's base_model is ours).
    A key for the other command says so (`for kto-train: report_to: wandb, …`)."""
    known = FOREIGN.get(key)
    if known is None or key in own:
        return None
    if known.ours is None:
        return f"{known.source}'s name; {'here' if known.command in (None, command) else f'for {known.command}'}: {known.more}"
    whose = f"{known.command}'s " if known.command not in (None, command) else ""
    return f"{known.source}'s name; here: {whose}{known.ours}{' ' + known.more if known.more else ''}"


def foreign_flag_hint(name: str, command: str, own: frozenset[str] | set[str]) -> str | None:
    """What another tool's flag `name` (underscored) is on `command`'s line; None as above."""
    known = FOREIGN.get(name)
    if known is None or name in own:
        return None
    if known.ours is None:
        return f"{known.source}'s; {known.more}"
    flag = f"--{known.ours.replace('_', '-')}"
    return f"{known.source}'s name for {known.command or command}'s {flag}{' ' + known.more if known.more else ''}"


def axolotl_base_model(raw: Mapping[str, Any], command: str) -> str | None:
    """axolotl's base_model is the model trained; ours is kto-train's base of an adapter it
    evaluates (--eval-only): the note to say where the file names no model, or None.
    kto-precompute prints it only without --model on its line (a default note); kto-train's CLI
    adds it to "--model is required" alone (train/cli.py merged_config). A null base_model says
    nothing."""
    if raw.get("base_model") is None or {"model", "model_name_or_path"} & raw.keys() or raw.get("eval_only") is True:
        return None
    whose = "kto-train's key, the" if command == PRECOMPUTE else "kto-train's"
    return f"base_model: {whose} base of an adapter it evaluates (--eval-only); axolotl's base_model is model here (model: PATH)"


def axolotl_rl(value: Any, notes: list[str]) -> list[str]:
    """axolotl's `rl: kto`, as LLaMA-Factory's `stage: kto`: what this does; `rl: null` (unset) is
    skipped; another value is the refusal returned."""
    if value is not None and value != "kto":
        return [f"rl: {value}: kto-offline trains KTO only (rl: kto)"]
    if value == "kto":
        notes.append("rl: kto: ignored (that is what this does)")
    return []


def skipped_template_name(value: Any) -> bool:
    """One of axolotl's chat template names (AXOLOTL_TEMPLATES) where no such file
    or folder exists; any other name is a path, refused by kto-precompute when missing."""
    return axolotl_template(value) and not os.path.exists(expand_home(value))


def axolotl_template_name(key: str, value: Any, command: str, notes: list[str]) -> bool:
    """axolotl's `chat_template: NAME` (chatml, llama3, tokenizer_default): a template by name,
    as LLaMA-Factory's `template`, said and skipped (skipped_template_name)."""
    if command != PRECOMPUTE or key != "chat_template" or not skipped_template_name(value):
        return False
    notes.append(
        f"chat_template: ignored ({value} is axolotl's template by name, not rendered here: rows render with the model's tokenizer's "
        "own chat template; chat_template: FILE.jinja replaces it)"
    )
    return True
