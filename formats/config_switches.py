"""transformers' TrainingArguments keys that kto-train reads together, as TrainingArguments reads
them (config_names.resolve calls transformers_switches once every key is sorted): bf16 and fp16
as mixed_precision, push_to_hub with hub_model_id and hub_private_repo, fsdp's strings, and
activation_checkpointing as gradient_checkpointing; and which tool a file's names are."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .config_keys import ALIASES, LF, PRECOMPUTE, TRAIN, file_switch
from .config_resolved import Resolved
from .errors import InputError


def transformers_switches(raw: Mapping[str, Any], out: Resolved) -> None:
    """kto-train: transformers' keys read together, as TrainingArguments reads them."""
    _precision(raw, out)
    _hub(raw, out)
    _fsdp(out)
    _activation_checkpointing(raw, out)


def _activation_checkpointing(raw: Mapping[str, Any], out: Resolved) -> None:
    """transformers 5's activation_checkpointing is gradient_checkpointing's new name: it wins
    where set (non-null), and the old name is its deprecated alias, as TrainingArguments reads them."""
    value = raw.get("activation_checkpointing")
    if value is None:
        return
    file_switch("activation_checkpointing", value)
    old = out.values.get("gradient_checkpointing")
    if old is not None and old != value:
        key = out.origin["gradient_checkpointing"]  # the file's own key and value (disable_... is inverted)
        out.notes.append(f"activation_checkpointing: {str(value).lower()} wins over {key}: {str(raw[key]).lower()}, as transformers 5 reads them")
        del out.values["gradient_checkpointing"]
    elif old is None:
        out.notes.append(f"activation_checkpointing: {str(value).lower()} -> gradient_checkpointing {str(value).lower()} (transformers 5's name; memory only)")
    out.set("gradient_checkpointing", value, "activation_checkpointing")


def _precision(raw: Mapping[str, Any], out: Resolved) -> None:
    """transformers' bf16 and fp16 (both off by default: fp32) as our mixed_precision; left out
    or null, ours (auto: bf16 autocast on CUDA, none on CPU), as TRL's KTOConfig (bf16 unless fp16)."""
    if out.values.get("mixed_precision") is False:
        out.values["mixed_precision"] = "no"  # YAML 1.1 reads an unquoted `no` as false
    given = {key: raw[key] for key in ("bf16", "fp16") if raw.get(key) is not None}
    for key, value in given.items():
        if value == "auto":
            raise InputError(
                f"{key}: 'auto' is axolotl's ({key} where the GPU has it): leave {key} out, mixed_precision auto (kto-train's default) is bf16 autocast on CUDA"
            )
        file_switch(key, value)
    if not given:
        return
    # TRL's KTOConfig: bf16 = not fp16 where bf16 is not set (our own mixed_precision beside it
    # is the file's choice, which fp16: false need only agree with).
    trl_bf16 = "bf16" not in given and given["fp16"] is False and not is_llama_factory(raw) and "mixed_precision" not in out.values
    if trl_bf16:
        given = {"bf16": True, **given}
    if given.get("bf16") and given.get("fp16"):
        raise InputError("bf16: true and fp16: true: choose one (transformers refuses both too)")
    on = next((key for key, value in given.items() if value), None)
    mixed, key = (on, on) if on else ("no", next(iter(given)))
    key = "fp16" if trl_bf16 else key
    if "mixed_precision" in out.values and out.values["mixed_precision"] != mixed:
        raise InputError(
            f"{out.origin['mixed_precision']}: {out.values['mixed_precision']!r} and {key}: {str(given[key]).lower()} set the same option "
            "(mixed_precision); give one"
        )
    out.set("mixed_precision", mixed, key)
    out.newly_read["mixed_precision"] = key
    if trl_bf16:
        out.notes.append("fp16: false, bf16 not given -> mixed_precision bf16 (TRL's KTOConfig turns bf16 on unless fp16 is)")
    elif on:
        out.notes.append(f"{on}: true -> mixed_precision {on} ({on} autocast, as transformers)")
    else:
        said = ", ".join(f"{key}: false" for key in given)
        out.notes.append(f"{said} -> mixed_precision no (no autocast, as transformers trains without bf16 or fp16)")


def _hub(raw: Mapping[str, Any], out: Resolved) -> None:
    """transformers' push_to_hub is a switch, hub_model_id its repo: it uploads only with
    push_to_hub: true. Ours takes the repo id, which hub_model_id sets (ALIASES) unless the switch
    is off or left out; then neither it nor hub_private_repo asks for anything."""
    switch = raw.get("push_to_hub")
    if isinstance(switch, str):
        return  # our own push_to_hub: the repo id
    repo = out.values["push_to_hub"] if out.origin.get("push_to_hub") == "hub_model_id" else None
    if switch is True:
        # Without hub_model_id, transformers names the repo after output_dir under the user's
        # account, which kto-train cannot look up offline: --push-to-hub ORG/NAME must (train/cli.py).
        out.push_needs_repo = repo is None
        if repo is not None:
            out.notes.append(f"push_to_hub: true, hub_model_id: {repo} -> push_to_hub {repo} (final/ is uploaded there at the end)")
        return
    private = out.origin.get("hub_private") == "hub_private_repo" and out.values["hub_private"] is True
    unused = [f"hub_model_id: {repo}"] * (repo is not None) + ["hub_private_repo: true"] * private
    if unused:
        for ours, key in (("push_to_hub", "hub_model_id"), ("hub_private", "hub_private_repo")):
            if out.origin.get(ours) == key:
                del out.values[ours], out.origin[ours]
        out.private_if_pushed = private  # a --push-to-hub on the command line still uploads privately
        said = "false" if switch is False else "not given"
        out.notes.append(
            f"{', '.join(unused)}: unused, push_to_hub is {said} (transformers uploads only with push_to_hub: true); nothing is uploaded "
            "unless --push-to-hub names a repo"
        )
    elif switch is False:
        out.notes.append("push_to_hub: false: nothing is uploaded (kto-train's default)")


# transformers' fsdp options our --fsdp is: FSDP2 shards parameters, gradients and optimizer
# state (reshard_after_forward) and wraps each decoder layer (train/sharding.py).
FSDP_AS_OURS = frozenset({"full_shard", "auto_wrap"})


def _fsdp(out: Resolved) -> None:
    """transformers' `fsdp: "full_shard auto_wrap"` (a string, or a list of its options) as our
    switch; `""` (its default) is off. Other strategies are refused: ours shards fully."""
    value = out.values.get("fsdp")
    if isinstance(value, list):
        value = " ".join(map(str, value))
    if not isinstance(value, str) or value.strip().lower() in ("true", "false", "yes", "no", "on", "off", "1", "0"):
        return  # our switch, checked as the flag is
    options = set(value.split())
    if options and not ("full_shard" in options and options <= FSDP_AS_OURS):
        raise InputError(
            f"fsdp: {value!r}: kto-train's fsdp is FSDP2 full sharding (parameters, gradients and optimizer state over every process, "
            "each decoder layer wrapped: transformers' full_shard auto_wrap); give fsdp: full_shard auto_wrap (or true), or leave it out"
        )
    out.values["fsdp"] = bool(options)
    said = "true (FSDP2 full sharding, each decoder layer wrapped)" if options else "false (no sharding, transformers' default)"
    out.notes.append(f"fsdp: {value!r} -> fsdp {said}")


def is_llama_factory(raw: Mapping[str, Any]) -> bool:
    """A file with a key only LLaMA-Factory has (its `stage`, which its files must give, or
    `finetuning_type`, `lora_rank`, `pref_beta`, `cutoff_len`, ...); any other file in their
    names is TRL's. `adapter_name_or_path` counts only when not null: null asks for nothing (a
    note says it is skipped), so it must not bring LLaMA-Factory's defaults (its learning rate,
    fp32) to a TRL file either."""
    aliases = {**ALIASES[TRAIN], **ALIASES[PRECOMPUTE]}
    only_theirs = {k for k, alias in aliases.items() if alias.source == LF} | {"stage", "finetuning_type", "quantization_bit"}
    return bool(only_theirs & raw.keys()) or raw.get("adapter_name_or_path") is not None
