"""The LoRA keys of a kto-train config file that only the command line settles: a TRL file's
`lora_r` without `use_peft`, and LLaMA-Factory's `adapter_name_or_path`, which evaluates (do_train:
false, or --eval-only) and is refused to train on. config_names.resolve checks and records them
(file_rank, file_adapters); kto-train decides once the file and the flags are merged (rank_in_force,
adapters_in_force; train/cli.py merged_config), as command-line flags win over the file."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from .config_keys import ALIASES, OWN_KEYS, TRAIN, number_or_none
from .config_resolved import Resolved
from .config_switches import is_llama_factory
from .config_unsupported import UNSUPPORTED
from .errors import InputError


def file_rank(raw: Mapping[str, Any], foreign: bool, out: Resolved) -> None:
    """A file in TRL's names (not LLaMA-Factory's, whose finetuning_type decides) with a LoRA rank
    but no use_peft: TRL's ModelConfig.use_peft defaults to false, so TRL ignores lora_r and trains
    every weight, while lora_r, kto-train's own key too, turns LoRA on here. Which one the file
    means cannot be told (`model_name_or_path` beside our own `lora_r` is either), and each trains
    something else: recorded, refused by rank_in_force asking for the switch. Only a valid rank (a
    whole number ≥ 1) is: an invalid one (-4, nan, 1e-09) is refused as a rank, whichever is meant."""
    rank = number_or_none(raw.get("lora_r"))
    valid = rank is not None and math.isfinite(rank) and rank >= 1 and rank.is_integer()
    if "use_peft" in raw or not foreign or is_llama_factory(raw) or not valid:
        return
    theirs = [key for key in raw if key in ALIASES[TRAIN] and key not in OWN_KEYS[TRAIN]]
    named = f" ({', '.join(theirs[:3])}{', …' if len(theirs) > 3 else ''})" if theirs else ""
    out.rank_needs_use_peft = (
        f"lora_r: {raw['lora_r']} without use_peft: in TRL's names{named} LoRA is off unless use_peft: true (TRL's default is false: "
        "it ignores lora_r and trains every weight), while kto-train's own lora_r turns LoRA on; write use_peft: true to train LoRA "
        "adapters, or use_peft: false to train every weight as TRL does"
    )


def rank_in_force(path: str | Path, resolved: Resolved, values: Mapping[str, Any], given: Callable[[str], bool]) -> None:
    """file_rank's refusal, unless --lora-r on the command line says which the user means (the
    flag wins: LoRA of that rank, or 0, every weight) or --eval-only reads no rank (the file's
    training keys are left unused, said in a note)."""
    if resolved.rank_needs_use_peft and not values.get("eval_only") and not given("lora_r"):
        raise InputError(f"--config {path}: {resolved.rank_needs_use_peft}")


def file_adapters(raw: Mapping[str, Any], out: Resolved, refused: list[str]) -> None:
    """LLaMA-Factory's adapter_name_or_path (a comma list, or a list; null is said as inert by
    config_names._said_and_skipped), checked as it is wrong whatever the run does and recorded
    for adapters_in_force: text or a list of text, no empty entry, and finetuning_type lora (as
    LLaMA-Factory refuses adapters with full or freeze)."""
    value = raw.get("adapter_name_or_path")
    if value is None:
        return
    said = f"adapter_name_or_path: {value!r}"
    if isinstance(value, bool):  # as model_name_or_path: true is refused (formats' option_value)
        refused.append(f"adapter_name_or_path: {str(value).lower()} is true/false; expected text (an adapter directory)")
        return
    if not isinstance(value, (str, list)) or isinstance(value, list) and not all(isinstance(a, str) for a in value):
        refused.append(f"{said}: expected text (an adapter directory) or a list of text")
        return
    adapters = [a.strip() for a in (value.split(",") if isinstance(value, str) else value)]
    if not any(adapters):
        refused.append(f"{said}: is empty; give an adapter directory, or leave the key out")
    elif not all(adapters):
        stray = " (a stray comma?)" if isinstance(value, str) else ""
        refused.append(f"{said}: an empty entry{stray}; give one adapter directory")
    elif raw.get("finetuning_type", "lora") != "lora":
        refused.append(f"{said}: LLaMA-Factory reads adapters only with finetuning_type: lora (it refuses them with {raw['finetuning_type']})")
    else:
        out.adapters = adapters


def adapters_in_force(path: str | Path, resolved: Resolved, values: dict[str, Any], given: Callable[[str], bool]) -> None:
    """The file's adapters (resolved.adapters) once the file and the command line are merged in
    `values` (completed in place; `given`: set on the command line). Evaluating (the file's
    do_train: false or eval_only, or --eval-only), the adapters on the file's model, as
    LLaMA-Factory loads them: --model ADAPTERS --base-model MODEL; a --model or --base-model on
    the command line wins. Training, refused: kto-train starts fresh adapters. Several adapters
    (LLaMA-Factory merges all but the last into the model) are refused: --eval-only loads one."""
    adapters = resolved.adapters
    if adapters is None:
        return
    said = f"--config {path}: adapter_name_or_path: {resolved.written.get('adapter_name_or_path', ','.join(adapters))!r}"
    if values.get("eval_only") is not True:
        raise InputError(f"{said}: {UNSUPPORTED[TRAIN]['adapter_name_or_path'].reason} or give --eval-only")
    if len(adapters) > 1:
        raise InputError(
            f"{said}: {len(adapters)} adapters; LLaMA-Factory merges all but the last into the model first, which kto-train does not: "
            f"merge {', '.join(adapters[:-1])} into model_name_or_path first (llamafactory-cli export) and give the last adapter alone"
        )
    (adapter,) = adapters
    if given("model"):
        resolved.notes.append(f"--config {path}: adapter_name_or_path: {adapter}: unused (--model on the command line is the model evaluated)")
        return
    base, base_key = resolved.values.pop("model", None), resolved.origin.pop("model", None)
    try:  # errors about --model (a missing folder) name adapter_name_or_path (formats/config_file.py file_key_error)
        resolved.set("model", adapter, "adapter_name_or_path")
        if base is not None:
            resolved.set("base_model", base, base_key or "model")
    except InputError as exc:  # the file's own base_model beside model_name_or_path
        raise InputError(f"--config {path}: {exc}") from None
    values["model"] = adapter
    if base is not None and not given("base_model"):
        values["base_model"] = base
    on = f" on --base-model {values['base_model']}" if values.get("base_model") is not None else ""
    resolved.notes.append(
        f"--config {path}: adapter_name_or_path: {adapter} -> --model {adapter}{on} (evaluated with the adapters on, as LLaMA-Factory loads them to evaluate)"
    )
