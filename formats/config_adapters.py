"""The LoRA keys kto-train reads with the file's other keys once every key is sorted
(config_names.resolve): a TRL file's `lora_r` without `use_peft`, and LLaMA-Factory's
`adapter_name_or_path`, which evaluates (do_train: false) and is refused to train on."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .config_keys import ALIASES, OWN_KEYS, TRAIN, number_or_none
from .config_resolved import Resolved
from .config_switches import is_llama_factory
from .config_unsupported import UNSUPPORTED


def rank_without_use_peft(raw: Mapping[str, Any], foreign: bool, refused: list[str]) -> None:
    """A file in TRL's names (not LLaMA-Factory's, whose finetuning_type decides) with a LoRA rank
    but no use_peft: TRL's ModelConfig.use_peft defaults to false, so TRL ignores lora_r and trains
    every weight, while lora_r, kto-train's own key too, turns LoRA on here. Which one the file
    means cannot be told (`model_name_or_path` beside our own `lora_r` is either), and each trains
    something else: refused, asking for the switch."""
    rank = number_or_none(raw.get("lora_r"))
    if "use_peft" in raw or not foreign or is_llama_factory(raw) or rank is None or rank == 0:
        return
    theirs = [key for key in raw if key in ALIASES[TRAIN] and key not in OWN_KEYS[TRAIN]]
    named = f" ({', '.join(theirs[:3])}{', …' if len(theirs) > 3 else ''})" if theirs else ""
    refused.append(
        f"lora_r: {raw['lora_r']} without use_peft: in TRL's names{named} LoRA is off unless use_peft: true (TRL's default is false: "
        "it ignores lora_r and trains every weight), while kto-train's own lora_r turns LoRA on; write use_peft: true to train LoRA "
        "adapters, or use_peft: false to train every weight as TRL does"
    )


def eval_adapters(raw: Mapping[str, Any], out: Resolved, refused: list[str]) -> None:
    """LLaMA-Factory's adapter_name_or_path (a comma list; null is said as inert by
    _said_and_skipped). Evaluating (do_train: false, or eval_only), the file's adapters on its
    model, as LLaMA-Factory loads them: --model ADAPTERS --base-model MODEL, which --eval-only
    evaluates. Training, refused: kto-train starts fresh adapters. Several adapters (LLaMA-Factory
    merges all but the last into the model) are refused: --eval-only loads one."""
    value = raw.get("adapter_name_or_path")
    if value is None:
        return
    adapters = [str(a).strip() for a in (value.split(",") if isinstance(value, str) else value if isinstance(value, list) else [value])]
    said = f"adapter_name_or_path: {value!r}"
    if out.values.get("eval_only") is not True:
        refused.append(f"{said}: {UNSUPPORTED[TRAIN]['adapter_name_or_path'].reason}")
    elif raw.get("finetuning_type", "lora") != "lora":
        refused.append(f"{said}: LLaMA-Factory reads adapters only with finetuning_type: lora (it refuses them with {raw['finetuning_type']})")
    elif len(adapters) != 1 or not all(adapters):
        merged = ", ".join(adapters[:-1])
        refused.append(
            f"{said}: {len(adapters)} adapters; LLaMA-Factory merges all but the last into the model first, which kto-train does not: "
            f"merge {merged} into model_name_or_path first (llamafactory-cli export) and give the last adapter alone"
            if len(adapters) > 1 and all(adapters)
            else f"{said}: give one adapter directory"
        )
    else:
        base, base_key = out.values.pop("model", None), out.origin.pop("model", None)
        out.set("model", adapters[0], "adapter_name_or_path")
        if base is not None:
            out.set("base_model", base, base_key or "model")
        on = f" on --base-model {base}" if base is not None else ""
        out.notes.append(
            f"adapter_name_or_path: {adapters[0]} -> --model {adapters[0]}{on} (evaluated with the adapters on, as LLaMA-Factory loads them to evaluate)"
        )
