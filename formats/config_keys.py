"""The keys a `--config` file may hold, and what each means here: the two commands' own option
names, TRL's and LLaMA-Factory's aliases for them (with their values converted), the keys that
mean nothing here, and those taken only at a value that trains the same (docs/migrating.md).

Tables, and the lookups in them (a flag's hint, the manifest's twins of kto-precompute's keys);
config_names.py resolves a file against them. formats/ may import neither command,
so both commands' own option names are listed here; tests/formats/test_config_names.py keeps the
lists equal to the CLIs' options.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from .config_commands import PRECOMPUTE, TRAIN, same_value
from .config_foreign import foreign_flag_hint
from .config_unsupported import UNSUPPORTED
from .errors import InputError, exit_with_usage_line

PRECOMPUTE_KEYS = frozenset(
    {
        "data", "dataset", "dataset_dir", "model", "out", "chat_template", "chat_template_kwargs", "sharegpt_info", "max_length", "max_prompt_length",
        "eval_fraction", "seed", "dtype", "attn_implementation", "batch_tokens", "rows_per_shard", "store_token_logps",
        "prefix_sharing", "chunk_size", "trust_remote_code", "device_map", "overwrite", "prompt_column", "completion_column",
        "label_column", "messages_column", "chosen_column", "rejected_column", "id_column", "system_column", "tools_column",
        "max_samples", "push_to_hub", "hub_private", "eval_data",
    }
)  # fmt: skip
TRAIN_KEYS = frozenset(
    {
        "cache", "model", "out", "beta", "desirable_weight", "undesirable_weight", "auto_weights", "loss", "sft_weight", "lr",
        "lr_schedule", "lr_schedule_kwargs", "warmup_ratio", "warmup_steps", "weight_decay", "adam_beta1", "adam_beta2",
        "adam_epsilon", "max_grad_norm", "batch_size",
        "grad_accum", "epochs", "max_steps", "seed", "kl_scope", "mixed_precision", "dtype", "gradient_checkpointing",
        "keep_dropout", "log_every", "save_every", "save_each_epoch", "save_total_limit", "eval_cache", "eval_every",
        "eval_each_epoch", "eval_batch_size", "resume", "report_to", "run_name",
        "drift_tolerance", "chunk_size", "trust_remote_code", "attn_implementation", "lora_r", "lora_alpha", "lora_dropout",
        "lora_target_modules", "load_in_4bit", "load_in_8bit", "merge_adapters", "fsdp", "prefix_sharing", "push_to_hub",
        "hub_private", "eval_only", "base_model",
    }
)  # fmt: skip
OWN_KEYS = {PRECOMPUTE: PRECOMPUTE_KEYS, TRAIN: TRAIN_KEYS}

# Own keys whose flag is not `--KEY` with dashes (tests/formats/test_foreign_hints_mend.py checks every
# key's flag against the click commands' declarations).
FLAG_SPELLINGS = {PRECOMPUTE: {"store_token_logps": "--token-logps"}, TRAIN: {}}


def flag_of(command: str, key: str) -> str:
    """`command`'s flag for its own option `key` (`store_token_logps` -> `--token-logps`)."""
    return FLAG_SPELLINGS[command].get(key) or f"--{key.replace('_', '-')}"


def _flags(command: str) -> set[str]:
    keys = OWN_KEYS[command]
    return {flag_of(command, k) for k in keys} | {f"--no-{flag_of(command, k)[2:]}" for k in keys} | {"--config"}


def owned_flags(text: str, command: str) -> str:
    """`text` (a hint on `command`'s line) with each flag of the other command alone named as
    its (`--report-to` -> `kto-train's --report-to` on kto-precompute's line): a hint never names
    a flag the command it is printed by does not have, as if it did."""
    other = TRAIN if command == PRECOMPUTE else PRECOMPUTE

    def owned(match: re.Match[str]) -> str:
        flag = match.group(0)
        return f"{other}'s {flag}" if flag not in _flags(command) and flag in _flags(other) else flag

    return re.sub(r"(?<!'s )--[a-z][\w-]*", owned, text)


def target_modules_value(value: Any) -> Any:
    """LLaMA-Factory's `lora_target: all` and TRL's and peft's `all-linear` mean every linear
    layer (our default, None), in a file or on the command line; a YAML list becomes our comma list."""
    if isinstance(value, list):
        value = ",".join(str(v) for v in value)
    return None if isinstance(value, str) and value.strip() in ("all", "all-linear") else value


def _one_tracker(value: Any) -> Any:
    """transformers' `report_to` is a list; ours names one tracker."""
    if isinstance(value, list):
        return "none" if not value else value[0] if len(value) == 1 else ",".join(map(str, value))
    return value


def _fraction(value: Any) -> Any:
    """LLaMA-Factory's `val_size` is a fraction, or a row count when ≥ 1; ours is a fraction."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 1:
        raise InputError(f"val_size {value}: a row count; kto-precompute holds out a fraction (eval_fraction: 0.1)")
    return value


_DTYPE_SPELLINGS = {"bfloat16": "bf16", "float16": "fp16", "half": "fp16", "float32": "fp32", "float": "fp32"}


def _dtype(value: Any) -> Any:
    """torch's spellings (`bfloat16`), as TRL's `dtype`/`torch_dtype` take them, to ours (`bf16`)."""
    return _DTYPE_SPELLINGS.get(value, value) if isinstance(value, str) else value


def file_switch(key: str, value: Any) -> bool:
    """A config file's true/false key (YAML's bool), or a one-line refusal naming it."""
    if not isinstance(value, bool):
        raise InputError(f"{key}: {value!r} is not true or false")
    return value


def switch_value(value: Any) -> bool | None:
    """A switch's value: a Python bool, or numpy's (np.True_, from a DataFrame cell or a mask,
    which is no Python bool), as that bool; None for anything else (1, "no")."""
    if isinstance(value, bool):
        return value
    if type(value).__module__ == "numpy" and getattr(value, "dtype", None) is not None and value.dtype.kind == "b" and value.ndim == 0:
        return bool(value)
    return None


@dataclass(frozen=True)
class Alias:
    ours: str
    """The option it stands for."""
    source: str
    """Whose name it is: TRL, LLaMA-Factory or both."""
    convert: Callable[[Any], Any] | None = None
    note: Callable[[Any], str | None] | None = None
    """The line to print for the value, where the same number means something else here."""


def _pref_ftx_note(value: Any) -> str | None:
    """pref_ftx is copied as it is, and said so: rescaling it silently would hide that the two
    terms are different averages, whose ratio depends on the batch (docs/migrating.md)."""
    if same_value(value, 0):
        return None
    return (
        f"pref_ftx: {value} -> sft_weight {value}, not rescaled: kto-train adds γ · the mean NLL per token over the step's desirable "
        "completion tokens; LLaMA-Factory adds γ · (rows ÷ desirable rows) · the mean over desirable rows of each row's mean NLL per "
        "token, about 2× ours at a balanced batch: double the value to match"
    )


def _cutoff_len_note(value: Any) -> str | None:
    """cutoff_len is max_length, but the two cut a row over it differently (docs/migrating.md,
    `cutoff_len`): said, with the prompt cap it gives, since the same number keeps other tokens."""
    if not isinstance(value, int) or isinstance(value, bool) or value < 2:
        return None  # refused, by its key (`cutoff_len: 0`), or converted first (`'256'`): no cut to describe
    half = f"{value} // 2 = {value // 2}"
    return (
        f"cutoff_len: {value} -> max_length {value}, cut otherwise than LLaMA-Factory: a longer row has its prompt cut to "
        f"max_prompt_length ({half} unless given), keeping the prompt's end, then its completion keeps its first tokens; "
        "LLaMA-Factory's infer_seqlen keeps a completion under half of cutoff_len whole, gives the prompt the rest and keeps "
        "the prompt's start (docs/migrating.md, cutoff_len)"
    )


def _val_size_note(value: Any) -> str | None:
    """val_size holds out other row counts here than there (precompute/plan.py split_eval):
    round(f · n), by label, against datasets' train_test_split ⌈f · n⌉ (25 rows at 0.1: 2 and 3)."""
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 < value < 1:
        return None  # 0 holds out nothing; the rest is refused by its key
    return (
        f"val_size: {value} -> eval_fraction {value}: kto-precompute holds out about round({value} × rows), as many of each label "
        f"as their share, rows sharing a prompt on one side; LLaMA-Factory's train_test_split holds out ⌈{value} × rows⌉ of any label (at 0.1, 25 rows: 2 here, 3 there)"
    )


def _overwrite_cache_note(value: Any) -> str | None:
    """overwrite_cache: true is --overwrite, which replaces only a cache of another configuration:
    a finished one of the same configuration is kept and resumed (its shards not scored again),
    so a LLaMA-Factory file rerun as it is costs no second reference pass."""
    if value is not True:
        return None  # false is the default; anything else is refused by its key
    return (
        "overwrite_cache: true -> overwrite: a cache of another configuration in the cache directory is replaced; "
        "one of this configuration is kept (resumed, not scored again)"
    )


def template_note(value: Any, chat_template: Any) -> str:
    """`template: NAME` is LLaMA-Factory's own template by name, which kto-precompute does not
    have: the rows render with another template, the tokenizer's or the file's chat_template."""
    renders = (
        f"this file's chat_template {chat_template}" if chat_template else "the model's tokenizer's own chat template (chat_template: FILE.jinja replaces it)"
    )
    return f"template: ignored ({value} is LLaMA-Factory's template by name, not rendered here: rows render with --chat-template if given, else {renders})"


TRL, LF, BOTH = "TRL", "LLaMA-Factory", "TRL/LLaMA-Factory"

# transformers' TrainingArguments (hence TRL's KTOConfig and LLaMA-Factory's training arguments),
# TRL's KTOConfig and ModelConfig, LLaMA-Factory's FinetuningArguments and DataArguments.
_SHARED_ALIASES = {
    "model_name_or_path": Alias("model", BOTH),
    "torch_dtype": Alias("dtype", TRL, _dtype),
}
ALIASES: dict[str, dict[str, Alias]] = {
    TRAIN: {
        **_SHARED_ALIASES,
        "learning_rate": Alias("lr", BOTH),
        "per_device_train_batch_size": Alias("batch_size", BOTH),
        "per_device_eval_batch_size": Alias("eval_batch_size", BOTH),
        "gradient_accumulation_steps": Alias("grad_accum", BOTH),
        "num_train_epochs": Alias("epochs", BOTH),
        "lr_scheduler_type": Alias("lr_schedule", BOTH),
        "lr_scheduler_kwargs": Alias("lr_schedule_kwargs", BOTH),
        "logging_steps": Alias("log_every", BOTH),
        "save_steps": Alias("save_every", BOTH),
        "eval_steps": Alias("eval_every", BOTH),
        "output_dir": Alias("out", BOTH),
        "resume_from_checkpoint": Alias("resume", BOTH),
        "hub_model_id": Alias("push_to_hub", BOTH),
        "hub_private_repo": Alias("hub_private", BOTH),
        "pref_beta": Alias("beta", LF),
        "kto_chosen_weight": Alias("desirable_weight", LF),
        "kto_rejected_weight": Alias("undesirable_weight", LF),
        "pref_ftx": Alias("sft_weight", LF, note=_pref_ftx_note),
        "loss_type": Alias("loss", TRL),
        "lora_rank": Alias("lora_r", LF),
        "lora_target": Alias("lora_target_modules", LF, target_modules_value),
        "lora_target_modules": Alias("lora_target_modules", TRL, target_modules_value),
        "report_to": Alias("report_to", BOTH, _one_tracker),
        "dtype": Alias("dtype", TRL, _dtype),
    },
    PRECOMPUTE: {
        **_SHARED_ALIASES,
        "cutoff_len": Alias("max_length", LF, note=_cutoff_len_note),
        "val_size": Alias("eval_fraction", LF, _fraction, _val_size_note),
        "overwrite_cache": Alias("overwrite", LF, note=_overwrite_cache_note),
        "dtype": Alias("dtype", TRL, _dtype),
        # In a file both commands read, `cache` is where kto-precompute writes and kto-train reads.
        "cache": Alias("out", "kto-train"),
    },
}

# Keys that mean nothing here, with the reason given when they are skipped.
IGNORED = {
    "do_train": "kto-precompute prepares the data either way (kto-train reads LLaMA-Factory's do_train: false as eval_only)",
    "do_eval": "kto-train evaluates when it has an eval cache (eval_cache, or val_size's CACHE/eval; with eval_strategy: no, do_eval: true keeps CACHE/eval)",
    "template": "the tokenizer's own chat template is used (chat_template: FILE.jinja replaces it)",
    "overwrite_output_dir": "kto-train never overwrites a run: output_dir must be new or empty, or continued with resume (delete it to start over)",
    "preprocessing_num_workers": "tokenizing runs in the command's processes",
    "dataset_num_proc": "tokenizing runs in the command's processes",
    "dataloader_num_workers": "batches are memory-mapped from the cache, with no loader workers",
    "plot_loss": "plot a run with kto-inspect run OUT",
    "ddp_timeout": "accelerate's default timeout is used",
    "logging_strategy": "logging_steps (log_every) decides when to log",
    "logging_first_step": "lines are logged every log_every steps and at the last",
    "remove_unused_columns": "the cache holds only the columns training reads",
    "save_only_model": "checkpoints hold what resume needs",
    "save_safetensors": "weights are always saved as safetensors",
    "include_num_input_tokens_seen": "metrics.jsonl logs tokens per second",
    "pref_loss": "a DPO setting; the KTO loss is chosen with loss (kto | apo_zero_unpaired)",
    "precompute_ref_log_probs": "the reference log-probs are always precomputed: that is kto-precompute",
    "max_completion_length": "completions are cut to fit max_length, prompts to max_prompt_length",
    "use_fast_tokenizer": "the tokenizer is the model's own",
    "tf32": "precision is mixed_precision (bf16 and fp16 set it)",
    "gradient_checkpointing_kwargs": "gradient_checkpointing uses transformers' defaults",
    "logging_dir": "logs go to OUT/metrics.jsonl and the report_to tracker",
    "local_rank": "set by the launcher (accelerate launch, torchrun)",
    "use_cache": "training runs without a KV cache",
    # TRL's KTOConfig and transformers' TrainingArguments as a dumped config writes them: none of
    # their values can change what kto-train computes.
    "padding_value": "padded positions are masked, so the pad id cannot change the result",
    "generate_during_eval": "kto-train does not generate; sample from OUT/final afterwards",
    "use_liger_kernel": "a faster kernel for the same maths; kto-train computes the LM head in chunks (chunk_size)",
    "metric_for_best_model": "checkpoints are kept by step (save_total_limit keeps the newest), not by a metric",
    "eval_on_start": "evaluation runs every eval_steps (eval_every), not before the first step; it never changes the training",
    "ref_model_init_kwargs": "TRL reads it only for a ref_model given by name, refused here; the reference is kto-precompute's model",
}


# transformers' eval_strategy and its old name (gone in transformers 5), as TRL and LLaMA-Factory pass them.
EVAL_STRATEGIES = ("eval_strategy", "evaluation_strategy")
# Keys that only complete another key, consumed by it: `dataset_name`'s split, which the
# eval_strategy also picks; kto-train reads the eval_strategy with eval_steps, logging_steps and
# val_size, and the save_strategy with save_steps (config_schedule, which says what each does in a
# line), and bf16 with fp16 as its mixed_precision (config_names).
COMPANIONS = {
    PRECOMPUTE: {"dataset_config", "dataset_train_split", "dataset_test_split", *EVAL_STRATEGIES},
    TRAIN: {*EVAL_STRATEGIES, "save_strategy", "bf16", "fp16", "activation_checkpointing"},
}


# LLaMA-Factory's flash_attn (its AttentionFunction) as transformers' attn_implementation, as its
# configure_attn_implementation sets it; its `auto` leaves transformers' choice, which here is
# the command's own default (config_names._flash_attn).
FLASH_ATTN = {"disabled": "eager", "sdpa": "sdpa", "fa2": "flash_attention_2", "fa3": "flash_attention_3"}


# kto-precompute's keys whose value the cache's manifest records as it is (CacheContent): the
# file's key -> the content's key. kto-train compares them: a file edited after the cache was
# made would otherwise train on rows cut to the old lengths, under a note saying "ignored". The
# data the file names and its max_samples are compared too (config_data.data_disagreements).
IN_MANIFEST = {
    "max_length": "max_length",
    "cutoff_len": "max_length",
    "max_prompt_length": "max_prompt_length",
    "eval_fraction": "eval_fraction",
    "val_size": "eval_fraction",
    "store_token_logps": "store_token_logps",
}


def precompute_disagreements(other_values: Mapping[str, Any], content: Mapping[str, Any]) -> list[str]:
    """kto-precompute's keys of a config file whose values differ from those the cache's manifest
    `content` records, each as `KEY: VALUE (the cache's NAME: VALUE)`."""
    found = []
    for key, value in other_values.items():
        name = IN_MANIFEST.get(key)
        if name is None or value is None or name not in content or same_value(value, content[name]):
            continue
        found.append(f"{key}: {value} (the cache's {name}: {content[name]})")
    return found


# Their switches that a --config file maps onto our flags (config_names MAPPED), as the command
# line names them: no one flag of ours is their alias.
SWITCH_HINTS = {
    PRECOMPUTE: {},
    TRAIN: {
        "use_peft": "TRL's switch for LoRA: give --lora-r R (use_peft: true in a --config file takes TRL's r 16, alpha 32, dropout 0.05, off while dropout is)",
        "finetuning_type": "LLaMA-Factory's choice of LoRA or full training: give --lora-r R for LoRA, nothing for full",
        "quantization_bit": "LLaMA-Factory's: give --load-in-4bit or --load-in-8bit",
        "disable_dropout": "TRL's switch: dropout is off here by default; --keep-dropout keeps it",
        "disable_gradient_checkpointing": "LLaMA-Factory's switch: checkpointing is off here by default; --gradient-checkpointing turns it on",
    },
}


# Flags that name a key a --config file reads with another (COMPANIONS), or one of the other
# command's: what to give on the command line instead.
FLAG_HINTS = {
    PRECOMPUTE: {
        "dataset_name": "TRL's dataset_name: give --data hf:ID:SPLIT (hf:ID:CONFIG:SPLIT with a config)",
        "dataset_config": "TRL's: give --data hf:ID:CONFIG:SPLIT",
        "dataset_train_split": "TRL's: give --data hf:ID:SPLIT",
        "dataset_test_split": "TRL's: give --eval-data hf:ID:SPLIT",
        "eval_strategy": "transformers': kto-precompute holds rows out with --eval-fraction F or --eval-data FILE",
        "evaluation_strategy": "transformers': kto-precompute holds rows out with --eval-fraction F or --eval-data FILE",
        "output_dir": "give --out DIR, the cache directory (a --config file's output_dir is kto-train's --out, its run directory)",
    },
    TRAIN: {
        "bf16": "transformers' switch: give --mixed-precision bf16",
        "fp16": "transformers' switch: give --mixed-precision fp16",
        "eval_strategy": "transformers': give --eval-every N (steps) or --eval-each-epoch (epoch)",
        "evaluation_strategy": "transformers': give --eval-every N (steps) or --eval-each-epoch (epoch)",
        "save_strategy": "transformers': give --save-every N (steps) or --save-each-epoch (epoch)",
        "activation_checkpointing": "transformers 5's name: give --gradient-checkpointing",
        "optim": "kto-train uses AdamW (torch), with no flag for another optimizer: see docs/migrating.md",
    },
}


def option_hint(command: str, option: str) -> str | None:
    """For an option the command line does not know but a config file would, or another tool
    names (TRL's, LLaMA-Factory's, axolotl's, OpenRLHF's; dashes or underscores), or the other
    command has: what to give instead, each flag of the other command named as its. None
    otherwise (click's spelling match then)."""
    hint = _option_hint(command, option.lstrip("-").replace("-", "_"))
    return None if hint is None else owned_flags(hint, command)


def _option_hint(command: str, name: str) -> str | None:
    in_file = "; such names work in a --config file"
    if name in SWITCH_HINTS[command]:
        return f"{SWITCH_HINTS[command][name]}{in_file}"
    if name in FLAG_HINTS[command]:
        return FLAG_HINTS[command][name]
    alias = ALIASES[command].get(name)
    if alias is not None:
        return f"{alias.source}'s name for {command}'s --{alias.ours.replace('_', '-')}{in_file}"
    foreign = foreign_flag_hint(name, command, OWN_KEYS[command])
    if foreign is not None:
        return foreign
    if name in UNSUPPORTED[command]:
        # Its reason is a config file's (`write do_train: false`), not a flag's: said in general.
        return f"TRL's or LLaMA-Factory's {name}: not supported by {command} (docs/migrating.md)"
    other = TRAIN if command == PRECOMPUTE else PRECOMPUTE
    ours = ALIASES[other][name].ours if name in ALIASES[other] else name if name in OWN_KEYS[other] and name not in OWN_KEYS[command] else None
    return None if ours is None else f"{other}'s {flag_of(other, ours)}, not {command}'s"


def names_other_tools_use(command: str) -> type:
    """A click Command class whose "No such option" names our option for TRL's and
    LLaMA-Factory's names (`--learning_rate` -> `--lr`), where click's own "did you mean"
    compares spellings only."""
    import click

    class Command(click.Command):
        def parse_args(self, ctx, args):
            try:
                return self._parse_args_hinting(ctx, args)
            except click.UsageError as e:
                # Under a launcher click would print it once per process: here once, one line.
                exit_with_usage_line(command, e)

        def _parse_args_hinting(self, ctx, args):
            try:
                return super().parse_args(ctx, args)
            except click.NoSuchOption as e:
                hint = option_hint(command, e.option_name)
                if hint is None:
                    raise
                raise click.NoSuchOption(e.option_name, f"No such option: {e.option_name} ({hint}).", ctx=ctx) from None

    return Command


def number_or_none(value: Any) -> float | None:
    """A number (YAML may write it as text, `'8'`), or None."""
    try:
        return None if isinstance(value, bool) else float(value)
    except (TypeError, ValueError):
        return None
