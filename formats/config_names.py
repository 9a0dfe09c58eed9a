"""The names `--config` files may use: ours, TRL's and LLaMA-Factory's (docs/migrating.md).

A TRL `KTOConfig` YAML or a LLaMA-Factory `stage: kto` YAML should run with one or two lines
changed, so every key of a config file falls in one of five classes, per command:

1. one of the command's own option names (dashes or underscores);
2. an alias: another tool's name for one of them (`learning_rate` -> `lr`), maybe with its value
   converted (`lora_target: all` -> every linear layer);
3. a key mapped by its value (`finetuning_type: lora` turns LoRA on with LLaMA-Factory's default
   rank) or meaning nothing here (`template`, `plot_loss`): applied or ignored with one line each;
4. a key of the other command (`max_length` given to kto-train): one config file may hold both
   commands' keys, as LLaMA-Factory's does, so each command names the other's keys in one line
   and skips them;
5. anything else: refused, every unknown key at once, each with a "did you mean".

The tables of those keys are config_keys.py; this module sorts a file's keys by them, applies
the keys mapped by their value and the defaults of the tool whose names the file uses.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .config_adapters import file_adapters, file_rank
from .config_dumped import DUMPED, dumped_key
from .config_foreign import axolotl_base_model, axolotl_rl, axolotl_template_name, foreign_key_hint, skipped_template_name
from .config_keys import ALIASES, COMPANIONS, FLASH_ATTN, IGNORED, OWN_KEYS, PRECOMPUTE, TRAIN, file_switch, number_or_none, same_value, template_note
from .config_picks import what_it_is
from .config_resolved import Resolved
from .config_schedule import do_train, eval_schedule, evaluates, save_schedule, save_strategy
from .config_switches import is_llama_factory, transformers_switches
from .config_unsupported import UNSUPPORTED
from .errors import InputError

# Keys whose value is a credential: never printed.
SECRET_KEYS = frozenset({"hub_token", "push_to_hub_token", "ms_hub_token", "om_hub_token"})

PEFT_TARGETS = "peft's default for the model type"
"""What `use_peft: true`'s note says of the LoRA targets until kto-train names them."""

# transformers' TrainingArguments `*_steps` keys that a float below 1 makes a share of the total steps.
STEP_KEYS = frozenset({"logging_steps", "save_steps", "eval_steps"})


def _share(value: Any) -> float | None:
    """A number in (0, 1), as transformers ≥ 5 reads `warmup_steps: 0.1` (a share of the total
    steps); None for anything else (a step count, or a value refused later as it is)."""
    if isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if 0 < number < 1 else None


# Own keys that TrainingArguments writes as null when not set (save_total_limit: keep every
# checkpoint, our 0; report_to: none in older versions; fsdp: transformers 5's default, off).
NULL_IS_UNSET = frozenset({"save_total_limit", "report_to", "fsdp"})


def _stage(value: Any, command: str, out: Resolved) -> None:
    if value != "kto":
        raise InputError(f"stage: {value}: kto-offline trains KTO only (stage: kto)")
    out.notes.append("stage: kto: ignored (that is what this does)")


def _finetuning_type(value: Any, command: str, out: Resolved) -> None:
    if value == "full":
        out.force("lora_r", 0, "finetuning_type")
        out.notes.append("finetuning_type: full -> every weight is trained (lora_r 0)")
    elif value == "lora":
        # LLaMA-Factory's defaults: lora_rank 8, lora_alpha 2 × rank.
        out.defaults["lora_r"] = 8
        out.defaults["lora_alpha*2"] = True
        out.lora_asked_by = "finetuning_type: lora"
        out.notes.append("finetuning_type: lora -> LoRA on (lora_r 8 and lora_alpha 2 × lora_r unless given, as LLaMA-Factory)")
    else:
        raise InputError(f"finetuning_type: {value}: not supported here; choose lora or full")


def _use_peft(value: Any, command: str, out: Resolved) -> None:
    if value is True:
        # TRL's ModelConfig defaults: lora_r 16, lora_alpha 32, lora_dropout 0.05, and
        # lora_target_modules None: peft's default for the model type (q_proj, v_proj for Llama),
        # not every linear layer (ours). The model type is read by kto-train (train/cli.py), which
        # puts the list where PEFT_TARGETS stands in this note.
        out.defaults.update({"lora_r": 16, "lora_alpha": 32.0, "lora_dropout": 0.05})
        out.peft_default_targets = True
        out.lora_asked_by = "use_peft: true"
        out.notes.append(
            f"use_peft: true -> LoRA on (lora_r 16, lora_alpha 32, lora_dropout 0.05 (off while dropout is, as TRL's disable_dropout turns it off), lora_target_modules {PEFT_TARGETS} unless given, as TRL)"
        )
    elif value is False:
        out.force("lora_r", 0, "use_peft")
        out.notes.append("use_peft: false -> every weight is trained (lora_r 0)")
    else:
        raise InputError(f"use_peft: {value!r} is not true or false")


def _quantization_bit(value: Any, command: str, out: Resolved) -> None:
    if value in (4, 8):
        out.set(f"load_in_{value}bit", True, "quantization_bit")
        out.notes.append(f"quantization_bit: {value} -> load_in_{value}bit")
    elif value is not None:
        raise InputError(f"quantization_bit: {value}: choose 4 or 8 (bitsandbytes)")


def _dataset_name(value: Any, command: str, out: Resolved, raw: Mapping[str, Any]) -> None:
    """TRL's `dataset_name` (+ `dataset_config`, `dataset_train_split`) is one hub dataset; with
    an eval_strategy other than `no`, TRL evaluates on its `dataset_test_split` (default test):
    here those rows are the held-out eval cache, CACHE/eval."""
    dataset = [str(value), *([str(raw["dataset_config"])] if raw.get("dataset_config") else [])]
    spec = lambda split: "hf:" + ":".join([*dataset, split])
    out.set("data", [spec(str(raw.get("dataset_train_split") or "train"))], "dataset_name")
    test, strategy = str(raw.get("dataset_test_split") or "test"), evaluates(raw)
    if strategy:
        out.set("eval_data", [spec(test)], "dataset_test_split")
        out.notes.append(f"eval_strategy {strategy}: dataset_test_split {test} -> eval_data {spec(test)} (CACHE/eval)")
    elif "dataset_test_split" in raw:
        out.notes.append("dataset_test_split: ignored (eval_strategy is no: TRL evaluates on it only with another eval_strategy)")


def _disable_dropout(value: Any, command: str, out: Resolved) -> None:
    """TRL's `disable_dropout` (default true) is the opposite of our keep_dropout (default false)."""
    _set_inverted("disable_dropout", "keep_dropout", value, out)
    said = "dropout off, kto-train's default (keep_dropout false)" if value else "the model's dropout kept (keep_dropout true)"
    out.notes.append(f"disable_dropout: {str(value).lower()} -> {said}")


def _disable_gradient_checkpointing(value: Any, command: str, out: Resolved) -> None:
    """LLaMA-Factory's `disable_gradient_checkpointing` (default false: checkpointing on) is our
    gradient_checkpointing inverted; as a file's gradient_checkpointing, it changes memory only.
    A file in their names without it, or without gradient_checkpointing (KTOConfig's default on),
    checkpoints as they do (_their_defaults)."""
    _set_inverted("disable_gradient_checkpointing", "gradient_checkpointing", value, out)
    out.notes.append(f"disable_gradient_checkpointing: {str(value).lower()} -> gradient_checkpointing {str(not value).lower()} (memory only)")


def _set_inverted(key: str, ours: str, value: Any, out: Resolved) -> None:
    """A `disable_X: true/false` key of theirs as our option of the opposite sense."""
    out.set(ours, not file_switch(key, value), key)


MAPPED: dict[str, dict[str, Callable[..., None]]] = {
    PRECOMPUTE: {"stage": _stage},
    TRAIN: {
        "stage": _stage,
        "finetuning_type": _finetuning_type,
        "use_peft": _use_peft,
        "quantization_bit": _quantization_bit,
        "disable_dropout": _disable_dropout,
        "disable_gradient_checkpointing": _disable_gradient_checkpointing,
    },
}


def _ignored(key: str, value: Any, command: str, out: Resolved, raw: Mapping[str, Any]) -> None:
    """A key of IGNORED, said in a note; but kto-train reads do_train (LLaMA-Factory's switch)."""
    if command == TRAIN and key == "do_train":
        do_train(value, out, is_llama_factory(raw))
    else:
        out.notes.append(f"{key}: ignored ({IGNORED[key]})")


def _other(command: str) -> str:
    return TRAIN if command == PRECOMPUTE else PRECOMPUTE


def _template(value: Any, command: str, out: Resolved, sorting: Any, chat_template: Any) -> None:
    """LLaMA-Factory's `template: NAME`: kto-precompute says which template renders instead;
    kto-train renders nothing, so to it the key is one it leaves to kto-precompute."""
    if command == PRECOMPUTE:
        out.notes.append(template_note(value, chat_template))
    else:
        sorting.others.append("template")
        out.other_values["template"] = value


def _names_of(command: str) -> set[str]:
    return (
        set(OWN_KEYS[command])
        | set(ALIASES[command])
        | set(MAPPED[command])
        | set(UNSUPPORTED[command])
        | set(COMPANIONS[command])
        | ({"dataset_name"} if command == PRECOMPUTE else set())
        | {"flash_attn"}  # both commands' (_flash_attn)
    )


def _suggest(key: str, command: str) -> str:
    """The nearest name of either command to a misspelt key, a skipped one (ignored, a dumped
    default) only where clearly nearer: `hub_stratgy` is hub_strategy, not save_strategy, while
    `per_device_batch_size` stays per_device_train_batch_size; on a tie, the command's own. A
    key without `eval` in it is no eval setting: per_device_eval_batch_size is the nearer string
    to `per_device_batch_size` (0.894 against 0.875), and ranks 0.05 lower."""
    foreign = foreign_key_hint(key, command, OWN_KEYS[command])  # axolotl's, OpenRLHF's: by meaning, not spelling
    if foreign is not None:
        return foreign
    here, there = _names_of(command), _names_of(_other(command))
    skipped = set(IGNORED) | set(DUMPED[command]) | set(DUMPED[_other(command)])
    ratio = lambda name: difflib.SequenceMatcher(None, key, name).ratio()
    ranked = lambda name: ratio(name) - (0.05 if "eval" in name and "eval" not in key else 0.0)
    used = max((n for n in here | there if ratio(n) >= 0.6), key=lambda n: (ranked(n), n in here, n), default=None)
    near = max((n for n in skipped if ratio(n) >= 0.6), key=lambda n: (ratio(n), n), default=None)
    pick = near if near and (used is None or ratio(near) >= ratio(used) + 0.05) else used
    if pick is None:
        return "no close name"
    own = here | set(IGNORED) | set(DUMPED[command])
    return f"did you mean {pick}{what_it_is(pick, command)}?" if pick in own else f"did you mean {pick} (a {_other(command)} key)?"


@dataclass
class _Sorting:
    """What resolve() gathers besides the values: keys to name, to refuse, and whether the file
    speaks TRL's or LLaMA-Factory's dialect."""

    others: list[str] = field(default_factory=list)
    unknown: list[str] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)
    dumped: list[str] = field(default_factory=list)
    """Keys a dumped config writes at their defaults (config_dumped): named in one line."""
    foreign: bool = False
    """A key in TRL's or LLaMA-Factory's dialect: their defaults apply where the file is silent."""


def resolve(raw: Mapping[str, Any], command: str, own: Iterable[str] | None = None) -> Resolved:
    """Sort the keys of a config file (dashes already turned into underscores) for `command`.

    `own`: the command's option names (default: the list above). InputError names every unknown
    key at once, each with a "did you mean", and every known key this tool does not support, each
    with what to do instead."""
    own = set(OWN_KEYS[command] if own is None else own)
    out, sorting = Resolved(), _Sorting()
    # In a file that names both, `cache` is kto-precompute's output and `out` kto-train's run.
    shared_file = command == PRECOMPUTE and "cache" in raw and "out" in raw
    for key, value in raw.items():
        if command == TRAIN and key == "adapter_name_or_path" and value is not None:
            continue  # checked once every key is sorted, read by kto-train with --eval-only (config_adapters)
        if _said_and_skipped(key, value, command, out, sorting):
            continue
        if key in own and not (shared_file and key == "out"):
            out.set(key, ALIASES[command][key].convert(value) if key in ALIASES[command] and ALIASES[command][key].convert else value, key)
        elif key in ALIASES[command]:
            sorting.foreign = True
            alias = ALIASES[command][key]
            if value is None:
                continue  # `resume_from_checkpoint: null`, as their example files write "not set"
            out.set(alias.ours, alias.convert(value) if alias.convert else value, key)
            said = alias.note(value) if alias.note else None
            if said and command == PRECOMPUTE:
                out.default_notes[alias.ours] = said  # kto-precompute prints it unless its flag sets the option
            else:
                out.notes.extend([said] if said else [])
        elif key in MAPPED[command]:
            sorting.foreign = True
            MAPPED[command][key](value, command, out)
        elif command == PRECOMPUTE and key == "dataset_name":
            _dataset_name(value, command, out, raw)
        elif key in COMPANIONS[command]:
            continue
        elif key == "template":
            chat_template = raw.get("chat_template")
            _template(value, command, out, sorting, None if skipped_template_name(chat_template) else chat_template)
        elif key in IGNORED:
            _ignored(key, value, command, out, raw)
        elif key in DUMPED[command]:
            _dumped(key, value, command, out, sorting)
        elif key in _names_of(_other(command)) or key in DUMPED[_other(command)] or (shared_file and key == "out"):
            sorting.others.append(key)
            out.other_values[key] = value
        else:
            sorting.unknown.append(key)
    _attention(raw, out, sorting)
    _say_base_model(raw, command, out)
    _read_rest(raw, command, out, sorting)
    _refuse(sorting, command)
    if sorting.others:
        others = sorting.others
        out.notes.append(f"{_other(command)}'s key{'s' if len(others) > 1 else ''}, ignored by {command}: {', '.join(others)}")
    if sorting.dumped:
        out.notes.append(f"dumped defaults, ignored: {', '.join(sorting.dumped)}")
    _apply_defaults(out)
    return out


def _say_base_model(raw: Mapping[str, Any], command: str, out: Resolved) -> None:
    """config_foreign.axolotl_base_model's note: kto-precompute's is said only without --model on
    its line (a default note); kto-train's CLI says it with "--model is required" alone."""
    note = axolotl_base_model(raw, command)
    if note is not None and command == PRECOMPUTE:
        out.default_notes["model"] = note
    elif note is not None:
        out.notes.append(note)


def _read_rest(raw: Mapping[str, Any], command: str, out: Resolved, sorting: _Sorting) -> None:
    """The keys read together once every key is sorted; a value refused there (axolotl's `bf16:
    auto`) joins the keys already refused, so the unknown ones come in the same line, as
    docs/migrating.md promises, not one run later."""
    try:
        if command == TRAIN:
            _read_together(raw, out, sorting)
        else:
            _their_data_defaults(raw, out)
    except InputError as e:
        if not (sorting.refused or sorting.unknown):
            raise
        sorting.refused.append(str(e))


def _read_together(raw: Mapping[str, Any], out: Resolved, sorting: _Sorting) -> None:
    """kto-train: the keys read with others once every key is sorted."""
    file_rank(raw, bool(sorting.foreign), out)  # refused by kto-train unless --lora-r or --eval-only settles it
    file_adapters(raw, out, sorting.refused)  # kto-train reads them once it knows whether the run evaluates
    transformers_switches(raw, out)
    _their_defaults(raw, sorting.foreign, out)
    eval_schedule(raw, out)  # eval_in_cache: kto-precompute wrote the held-out rows to CACHE/eval
    save_schedule(raw, out)


def _dumped(key: str, value: Any, command: str, out: Resolved, sorting: _Sorting) -> None:
    """A key a dumped TrainingArguments / KTOConfig / ModelConfig carries (config_dumped), after
    every table of config_keys: at its default, named in resolve()'s one grouped line; at another
    value, skipped with a line saying why or refused saying what kto does instead."""
    verdict = dumped_key(command, key, value)
    if verdict.at_default:
        sorting.dumped.append(key)
    elif verdict.accepted:
        shown = "<set>" if key in SECRET_KEYS else "null" if value is None else str(value).lower()
        out.notes.append(f"{key}: {shown}: ignored ({verdict.said})")
    else:
        sorting.refused.append(f"{key}: {'<set>' if key in SECRET_KEYS else repr(value)}: {verdict.said}")


def _said_and_skipped(key: str, value: Any, command: str, out: Resolved, sorting: _Sorting) -> bool:
    """Keys whose value decides what they mean, taken here (True) before resolve() sorts the
    rest by name: a note, a refusal to make, or transformers 5's shares of the total steps."""
    if key == "rl":
        sorting.refused.extend(axolotl_rl(value, out.notes))
        return True
    if axolotl_template_name(key, value, command, out.notes):
        return True
    if key in UNSUPPORTED[command]:
        known = UNSUPPORTED[command][key]
        if any(same_value(value, inert) for inert in known.inert):  # `adam_epsilon: 1e-8` is text in YAML
            shown = "null" if value is None else "''" if value == "" else str(value).lower()
            out.notes.append(f"{key}: {shown}: ignored ({known.why(value)})")
        else:
            sorting.refused.append(f"{key}: {value!r}: {known.reason}")
        return True
    if key == "push_to_hub" and isinstance(value, bool):
        # transformers' push_to_hub is a switch and hub_model_id the repo; ours takes the repo:
        # kto-train reads the two together (_hub).
        if command != TRAIN:
            out.notes.append(
                f"push_to_hub: {str(value).lower()}: ignored (transformers' switch to upload the trained model, kto-train's; "
                "kto-precompute's push_to_hub takes the cache's repo id)"
            )
        return True
    if key == "flash_attn":
        _flash_attn(value, command, out, sorting)
        return True
    if key == "attn_implementation" and value is None:
        # TRL's ModelConfig default (a dumped one writes it): transformers picks the kernel.
        out.notes.append("attn_implementation: null -> sdpa (the command's default; transformers' null picks sdpa where the model has it)")
        return True
    if command != TRAIN:
        return _max_prompt_length_null(key, value, out) or _max_length_null(key, value, sorting)
    if value is None and key in NULL_IS_UNSET or key == "max_steps" and value == -1:
        # What transformers' TrainingArguments writes for "not set" (a dumped KTOConfig has
        # them); elsewhere an empty value is refused, as a value forgotten.
        out.notes.append(f"{key}: {'null' if value is None else value} -> not set (kto-train's default)")
        return True
    if key in ("dtype", "torch_dtype") and value == "auto":
        # TRL's "the checkpoint's dtype"; kto-precompute takes `auto` itself. kto-train keeps
        # fp32 master weights (its default), so one file still drives both commands.
        out.notes.append(f"{key}: auto -> kto-train's default dtype (fp32 master weights)")
        return True
    share = _share(value)
    if share is not None and key == "warmup_steps":
        # transformers 5 has no warmup_ratio: a float below 1 in warmup_steps is that ratio.
        out.set("warmup_ratio", share, key)
        out.notes.append(f"warmup_steps: {value} -> warmup_ratio {share} (below 1: a share of the total steps, as transformers 5; rounded down here, up there)")
        return True
    if share is not None and key in STEP_KEYS:
        sorting.foreign = True
        out.ratios[ALIASES[TRAIN][key].ours] = (key, share)
        return True
    return False


def _flash_attn(value: Any, command: str, out: Resolved, sorting: _Sorting) -> None:
    """LLaMA-Factory's `flash_attn` (default auto) as attn_implementation (FLASH_ATTN), for both
    commands, said in a line; auto sets nothing. kto-train: a run started while the key was
    ignored (sdpa) resumes as it ran (Resolved.newly_read)."""
    if value == "auto":
        out.notes.append(
            "flash_attn: auto -> attn_implementation as given, else sdpa (the command's default; LLaMA-Factory's auto leaves the "
            "choice to transformers, which picks sdpa where the model has it)"
        )
        return
    if value not in FLASH_ATTN:
        sorting.refused.append(
            f"flash_attn: {value!r}: LLaMA-Factory's values are auto, disabled, sdpa, fa2 and fa3 (attn_implementation names the kernel itself)"
        )
        return
    out.notes.append(f"flash_attn: {value} -> attn_implementation {FLASH_ATTN[value]} (LLaMA-Factory's {value})")
    if command == TRAIN:
        out.newly_read["attn_implementation"] = "flash_attn"


def _attention(raw: Mapping[str, Any], out: Resolved, sorting: _Sorting) -> None:
    """Once every key is sorted: `flash_attn` (checked by _flash_attn) set as attn_implementation,
    a conflict with the file's attn_implementation said in the values written (`fa2`, not
    `flash_attention_2`), and a flash kernel whose package is missing refused by the key that asks
    for it, here rather than at the model's load, after the data is read, naming --model."""
    written = raw.get("flash_attn")
    if written in FLASH_ATTN:
        ours = FLASH_ATTN[written]
        if "attn_implementation" in out.values and not same_value(out.values["attn_implementation"], ours):
            given = out.values["attn_implementation"]
            sorting.refused.append(
                f"flash_attn: {written!r} (attn_implementation {ours}) and {out.origin['attn_implementation']}: {given!r} set the same "
                "option (attn_implementation); give one"
            )
            return
        out.set("attn_implementation", ours, "flash_attn")
    kernel = out.values.get("attn_implementation")
    if isinstance(kernel, str) and not flash_loadable(kernel):
        key = out.origin["attn_implementation"]
        if key == "flash_attn":
            sorting.refused.append(
                f"flash_attn: {written} needs {FLASH_PACKAGES[kernel][1]}; LLaMA-Factory falls back to sdpa with a warning, kto-* do "
                "not, since the cache records the kernel): install it, or write flash_attn: sdpa"
            )
        else:
            sorting.refused.append(f"{key}: {kernel} needs {FLASH_PACKAGES[kernel][1]}): install it, or write {key}: sdpa")


# The flash kernels transformers loads from a package (its is_flash_attn_2/3_available): the
# module it looks for, and the package in words, its closing parenthesis left to the message.
# Without it, transformers 5 fetches a kernels-hub build (kernels-community/flash-attn2) where the
# `kernels` package is installed (flash_loadable); offline and uncached that fails at the load.
FLASH_PACKAGES = {
    "flash_attention_2": ("flash_attn", "the flash-attn package (pip install flash-attn"),
    "flash_attention_3": ("flash_attn_interface", "FlashAttention 3's flash_attn_interface module (flash-attn-3, built from flash-attention's hopper/"),
}


def flash_loadable(kernel: str) -> bool:
    """Whether transformers can load `kernel`, as far as packages tell: not a flash kernel, or its
    package installed, or the `kernels` package it falls back to (modeling_utils: a flash kernel
    whose package is missing is taken from the kernels hub when `kernels` is available)."""
    return kernel not in FLASH_PACKAGES or installed(FLASH_PACKAGES[kernel][0]) or installed("kernels")


def installed(module: str) -> bool:
    """Whether `module` can be imported, without importing it (flash_attn imports torch and CUDA)."""
    import importlib.util

    return importlib.util.find_spec(module) is not None


def _max_prompt_length_null(key: str, value: Any, out: Resolved) -> bool:
    """`max_prompt_length: null` (a dumped KTOConfig may write it) is kto-precompute's default,
    said in a line: TRL has taken null to mean other things (older KTOTrainers cut prompts to
    128; the current one reads no max_prompt_length and cuts only the completion)."""
    if key != "max_prompt_length" or value is not None:
        return False
    out.notes.append(
        "max_prompt_length: null -> max_length // 2 (kto-precompute's default: a prompt over it is cut, keeping its end, where "
        "prompt + completion exceed max_length; TRL's current KTOTrainer cuts no prompt, older ones cut to 128)"
    )
    return True


def _max_length_null(key: str, value: Any, sorting: _Sorting) -> bool:
    """`max_length: null`, TRL's "no truncation": refused in its own words, since every row here
    is cut at some max_length, and "leave the key out" would give 1024, which cuts. kto-train
    ignores max_length (kto-precompute's key), null or not."""
    if key != "max_length" or value is not None:
        return False
    sorting.refused.append(
        "max_length: null: TRL's null (no truncation) has no equal in kto-precompute, which cuts a row longer than max_length "
        "(1024 with the key left out): give max_length: N, N at least your longest row's prompt + completion in tokens; "
        "kto-precompute's last lines and kto-inspect summary CACHE count the rows cut (truncated)"
    )
    return True


def _refuse(sorting: _Sorting, command: str) -> None:
    """One InputError for every key refused, the known-but-unsupported ones first."""
    parts = list(sorting.refused)
    unknown = sorting.unknown
    if unknown:
        said: dict[str, list[str]] = {}  # a hint said once for every key it names (axolotl's wandb_*)
        for key in unknown:
            said.setdefault(_suggest(key, command), []).append(repr(key))
        listed = "; ".join(f"{', '.join(keys)} ({hint})" for hint, keys in said.items())
        parts.append(f"unknown key{'s' if len(unknown) > 1 else ''} {listed}")
    if parts:
        raise InputError("; ".join(parts))


# transformers' TrainingArguments defaults that differ from kto-train's, which a TRL KTOConfig or
# LLaMA-Factory file gets there when it leaves them out: (the file's key, value, our name, our
# value in words). KTOConfig keeps logging_steps 10 and learning_rate 1e-6 (ours) where
# TrainingArguments (hence LLaMA-Factory) has 500 and 5e-5. Equal, so not listed: the linear
# schedule, weight_decay 0, max_grad_norm 1, AdamW's betas (0.9, 0.999) and eps 1e-8 (torch's,
# which build_optimizer keeps), batch size 8, gradient_accumulation_steps 1.
_TRANSFORMERS_DEFAULTS = (
    ("warmup_steps", 0, "warmup_ratio", "warmup_ratio 0.1"),
    ("seed", 42, "seed", "0"),
    ("save_steps", 500, "save_every", "0: the final model only"),
)
_LLAMA_FACTORY_DEFAULTS = (
    ("logging_steps", 500, "log_every", "10"),
    ("learning_rate", 5e-5, "lr", "1e-6"),
)
_WARMUP = frozenset({"warmup_ratio", "warmup_steps"})


# LLaMA-Factory's DataArguments.cutoff_len default (hparams/data_args.py); kto-precompute's
# max_length is 1024, as TRL's KTOConfig max_length, so a TRL file left silent cuts the same.
LF_CUTOFF_LEN = 2048


def _their_data_defaults(raw: Mapping[str, Any], out: Resolved) -> None:
    """kto-precompute's twin of _their_defaults: a LLaMA-Factory file without cutoff_len cut at
    2048 tokens there and at 1024 here, silently. And its max_samples, which is our option of the
    same name but not the same rows, is said. A TRL file that sets max_length alone gets a line:
    KTOConfig's max_prompt_length default is 512 whatever max_length, ours max_length // 2."""
    trl = raw.keys() & {"model_name_or_path", "dataset_name", "torch_dtype"} and not is_llama_factory(raw)
    if trl and raw.get("max_length") is not None and "max_prompt_length" not in raw and not same_value(raw["max_length"], 1024):
        out.notes.append(
            "max_prompt_length not given: max_length // 2 (kto-precompute's default; TRL's KTOConfig writes 512, which older "
            "KTOTrainers cut prompts to and the current one does not read)"
        )
    if not is_llama_factory(raw):
        return
    if "max_length" not in out.values:
        out.defaults["max_length"] = LF_CUTOFF_LEN
        out.default_notes["max_length"] = f"not given, LLaMA-Factory's default: cutoff_len {LF_CUTOFF_LEN} (kto-precompute's own max_length: 1024)"
    if raw.get("max_samples") is not None:
        # LLaMA-Factory's loader takes dataset.select(range(max_samples)): the first rows.
        out.notes.append(f"max_samples: {raw['max_samples']}: a seeded sample of that many rows of each input, not the first rows as LLaMA-Factory takes")


def _their_defaults(raw: Mapping[str, Any], foreign: bool, out: Resolved) -> None:
    """Defaults of the tool whose file this is, where they differ from kto-train's and the file
    leaves them out: a file that ran LoRA for 3 epochs there must not train every weight for 1
    here, nor warm up for a tenth of its steps where transformers warms up for none."""
    if raw.get("stage") == "kto" and "finetuning_type" not in raw:
        out.notes.append("finetuning_type not given: lora, LLaMA-Factory's default")
        _finetuning_type("lora", TRAIN, out)
        out.lora_asked_by = "finetuning_type lora (LLaMA-Factory's default)"
    if not foreign:
        return
    given = out.values.keys() | out.ratios.keys()
    said = []
    if not {"epochs", "max_steps"} & given:
        out.defaults["epochs"] = 3.0
        said.append("num_train_epochs 3 (kto-train's own: 1)")
    llama_factory = is_llama_factory(raw)
    table = _TRANSFORMERS_DEFAULTS + (_LLAMA_FACTORY_DEFAULTS if llama_factory else ())
    for key, value, ours, own_default in table:
        if key == "save_steps" and save_strategy(raw) not in (None, "steps"):
            continue  # `no` and `epoch` ignore save_steps (config_schedule.save_schedule)
        if ours == "warmup_ratio" and "warmup_steps" in given and "warmup_ratio" not in given:
            # transformers' warmup_ratio is 0: `warmup_steps: 0` (what a dump writes) warms up for
            # none there, where our warmup_ratio 0.1 would have warmed up a tenth of the run.
            out.defaults["warmup_ratio"] = 0.0
            said.extend(["warmup_ratio 0 (kto-train's own: 0.1)"] if same_value(out.values.get("warmup_steps"), 0) else [])
            continue
        if not ({ours} | (_WARMUP if ours == "warmup_ratio" else set())) & given:
            out.defaults[ours] = 0.0 if ours == "warmup_ratio" else value
            said.append(f"{key} {value} (kto-train's own: {own_default})")
    if llama_factory and "mixed_precision" not in given:
        # transformers' bf16 and fp16 are off by default and LLaMA-Factory keeps them so (its
        # example files turn bf16 on): it trains in fp32 then. TRL's KTOConfig turns bf16 on
        # unless fp16 is, which is our auto (_precision).
        out.defaults["mixed_precision"] = "no"
        said.append("bf16 false and fp16 false: mixed_precision no, fp32 (kto-train's own: auto, bf16 autocast on CUDA)")
    if "gradient_checkpointing" not in given:
        # Not transformers' (off) but KTOConfig's and LLaMA-Factory's: memory only (RESUMABLE).
        out.defaults["gradient_checkpointing"] = True
        theirs = "LLaMA-Factory's default, disable_gradient_checkpointing false" if llama_factory else "TRL's KTOConfig default"
        said.append(f"gradient_checkpointing true ({theirs}; kto-train's own: false)")
    if said:
        tools = "LLaMA-Factory keeps them" if llama_factory else "TRL's KTOConfig keeps them"
        out.notes.append(f"not given, transformers' defaults ({tools}): {', '.join(said)}")


def _apply_defaults(out: Resolved) -> None:
    alpha_twice_rank = out.defaults.pop("lora_alpha*2", False)
    for name, value in out.forced.items():
        if name in out.values and not same_value(out.values[name], value):
            out.notes.append(f"{out.origin[name]}: {out.values[name]!r} ignored ({name} {value}, as the key that turns it off says)")
        out.values[name] = value
    for name, value in out.defaults.items():
        if name not in out.values:
            out.values[name] = value
            out.defaulted.add(name)
    if alpha_twice_rank and "lora_alpha" not in out.values:
        out.alpha_twice_rank = True
        out.defaulted.add("lora_alpha")  # resumed, it follows the recorded rank: the record's alpha
        rank = number_or_none(out.values["lora_r"])
        if rank is not None and rank >= 1:
            # Below 1 (or not a number), kto-train refuses the file's rank by its key (train/cli.py,
            # lora_rank_for_lora): 2 × 0 here was refused as `--lora-alpha 0.0`, a key never written.
            out.values["lora_alpha"] = 2.0 * rank
