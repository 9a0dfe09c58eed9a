"""The load options a user gives beside --model (--attn-implementation, --device-map), checked
before --out is touched, and transformers' refusal of an attention implementation at load said
as the flag to give.

transformers refuses a bad name or an unsupported attention only when the model loads, after
--out is claimed, and in words that name an example model rather than the flag; the commands
check here first, and loading.py turns the same refusal at load into the same one line.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from ..errors import InputError
from . import meta_device

if TYPE_CHECKING:
    from .sources import ModelSource


def check_attention_implementation(source: ModelSource, attn_implementation: str, *, trust_remote_code: bool = False) -> None:
    """Before --out is touched: transformers refuses sdpa at load for some models (Gemma 2,
    GptOss, Bloom in 5.25), and building the model from its config on the meta device meets the
    same refusal, said as the flag to give. A flash kernel whose package is not installed is
    refused here too (it failed at the load, after the rows were read and staged); any other
    failure is left to the load (a flash kernel's device, on the device it runs on). First the name itself: one transformers
    does not know (`abc`, '') was refused only at the load, after --out was claimed. Not with
    --trust-remote-code: a folder's own code may register its attention name when it loads."""
    if not trust_remote_code:
        check_attention_name(attn_implementation)
    check_flash_package(attn_implementation)
    if attn_implementation != "sdpa":
        return
    try:
        meta_device.on_meta(source, trust_remote_code, attn_implementation=attn_implementation)
    except Exception as exc:
        unsupported = attention_unsupported(exc)
        if unsupported is not None:
            raise attention_refusal(attn_implementation, unsupported) from exc


def check_flash_package(attn_implementation: str) -> None:
    """--attn-implementation flash_attention_2/3 without the package transformers loads it from
    nor the `kernels` package it falls back to: one line, as a --config file's flash_attn or
    attn_implementation key gets (config_names.flash_loadable)."""
    from kto.formats.config_names import FLASH_PACKAGES, flash_loadable

    if not flash_loadable(attn_implementation):
        raise InputError(
            f"--attn-implementation {attn_implementation} needs {FLASH_PACKAGES[attn_implementation][1]}): install it, or give --attn-implementation sdpa"
        )


def check_attention_name(attn_implementation: str) -> None:
    """A one-line refusal of a name the installed transformers would refuse at load, whatever
    the model: not eager nor one of its AttentionInterface's keys (sdpa, flash_attention_2/3/4,
    flex_attention, paged|eager, and any registered), nor such a key behind the `paged|` prefix
    it still takes, nor a kernels-hub repo `org/repo[@rev][:name]` (its is_kernel pattern; the
    kernel itself is fetched at load). Read from transformers, not listed here, so that a name
    a newer release adds passes."""
    from transformers.integrations.hub_kernels import is_kernel

    known = built_in_attention_names()
    if built_in_attention(attn_implementation) or is_kernel(attn_implementation):
        return
    raise InputError(
        f"--attn-implementation {attn_implementation!r}: not an attention implementation; give one of {', '.join(known)}, or a kernels hub repo ORG/NAME"
    )


def built_in_attention_names() -> list[str]:
    """eager and the installed transformers' AttentionInterface keys (sdpa, flash_attention_2/3/4,
    flex_attention, paged|eager, and any registered): names it loads without fetching a kernel
    by name from the hub (a flash kernel's package missing, transformers 5 falls back to its own
    kernels-community build; config_names.FLASH_PACKAGES)."""
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    return ["eager", *ALL_ATTENTION_FUNCTIONS.valid_keys()]


def built_in_attention(name: object) -> bool:
    """Whether `name` is a built-in attention name, or one behind the `paged|` prefix transformers
    still takes; a kernels-hub repo `org/repo` (whose code is fetched and run at load) is not."""
    known = built_in_attention_names()
    return isinstance(name, str) and (name in known or name.removeprefix("paged|") in known)


def check_device_map(device_map: str | None) -> None:
    """Before --out is claimed, --device-map as transformers reads a text one at load: a strategy
    or a torch device name (`abc` failed at the load, named as the model's failure)."""
    if device_map is None or device_map in ("auto", "balanced", "balanced_low_0", "sequential"):
        return
    import torch

    try:
        torch.device(device_map)
    except (RuntimeError, ValueError):
        raise InputError(f"--device-map {device_map!r}: give auto, balanced, balanced_low_0, sequential or a device (cpu, cuda:0)") from None


def attention_refusal(attn_implementation: str, model: str) -> InputError:
    others = "eager" if attn_implementation == "sdpa" else "sdpa or eager"
    return InputError(f"--attn-implementation {attn_implementation}: {model} does not support it; give --attn-implementation {others}")


def attention_unsupported(exc: Exception) -> str | None:
    """The model class named by transformers' refusal of an attention implementation at load
    (`Gemma2ForCausalLM does not support an attention implementation through
    torch.nn.functional.scaled_dot_product_attention yet ...`, `... does not support Flash
    Attention 2 yet ...`, `... through torch's flex_attention`), else None. Its text ends in
    an example that loads whisper-tiny: nothing the user gave, so the flag is named instead."""
    found = re.match(r"(\w+) does not support (an attention implementation|Flash Attention)", str(exc)) if isinstance(exc, ValueError) else None
    return found.group(1) if found else None
