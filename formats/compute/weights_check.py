"""The weight files against config.json: refuse a config that describes parameters the weight
files do not hold, before --out is touched and before any weight is allocated.

from_pretrained fills such parameters with random values and says so only in a table, so the
numbers would belong to a half-random model. The commands' pre-flight (`checked_source`) and
every load (loading.py `load_causal_lm`, also for tools/ and examples/ that have no pre-flight)
make the check: first the layer count from config.json and the safetensors headers alone, then
the parameter names of the meta-device skeleton (meta_device.py) against the headers' names.
"""

from __future__ import annotations

import functools
import re
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import InputError
from ..files import read_json
from . import meta_device
from .safetensors_headers import safetensors_names

if TYPE_CHECKING:
    import torch

    from .sources import ModelSource


def checked_source(source: ModelSource, *, trust_remote_code: bool = False, flag: str = "--model") -> ModelSource:
    """The commands' pre-flight of --model, before --out is touched: `source` with its cached
    `skeleton`, once its weight files are found to hold what config.json describes
    (refuse_missing_weights: the layer count from the headers first, then the names on that
    skeleton). Loading the returned source checks them again on the same skeleton."""
    checked = replace(source, skeleton=functools.cache(lambda: meta_device.model_skeleton(source, trust_remote_code=trust_remote_code, flag=flag)))
    refuse_missing_weights(checked, trust_remote_code, flag)
    return checked


def refuse_missing_weights(source: ModelSource, trust_remote_code: bool, flag: str) -> None:
    """Refuse a config.json that describes parameters the weight files do not hold: from_pretrained
    fills them with random values and says so only in a table (a config claiming 3 layers over a
    2-layer file scored with layer 2 random; 50,000 claimed layers grew to a MemoryError). The
    layer count is read first, from config.json and the headers (_refuse_missing_layers): the
    meta-device skeleton of 50,000 layers alone took 200 s and 4.5 GB. Then the names are compared
    on the skeleton (`source.skeleton` where the pre-flight made one), before any weight is
    allocated. Skipped where they are not comparable: a GGUF file, pickled .bin weights, or files
    whose names transformers renames on load (another prefix, pre-quantized or legacy layouts):
    a file name the skeleton lacks."""
    held = None if source.gguf_file else safetensors_names(source.directory)
    if not held:
        return
    _refuse_missing_layers(source, held, flag)
    try:
        skeleton = source.skeleton() if source.skeleton else meta_device.on_meta(source, trust_remote_code)
    except Exception:  # the load that follows says why, in its own words
        return
    missing = _missing_parameters(skeleton, held)
    if missing:
        shown = ", ".join(missing[:3]) + (", ..." if len(missing) > 3 else "")
        raise InputError(
            f"{flag} {source.name}: config.json describes weights that its weight files do not hold ({len(missing)} missing: {shown}); "
            "transformers would fill them with random values"
        )


# `<prefix>.<i>.` in a tensor name: a numbered stack (layers, GPT-2's `h`, experts, a vision
# tower's layers); nine digits at most, so a hostile header cannot make int() refuse the text.
_NUMBERED = re.compile(r"(?:^|\.)(\d{1,9})\.")


def _refuse_missing_layers(source: ModelSource, held: set[str], flag: str) -> None:
    """Refuse a config.json that claims more layers (num_hidden_layers, or text_config's for a
    multimodal config) than the weight files `held` (their tensor names) number, from names
    alone, before any skeleton is built. Only where the names number a `layers.<i>` stack, and
    against the largest numbered stack of any name (GPT-2's `h.<i>`, a vision tower's layers;
    not an MoE's `experts.<j>`): a claim that no stack reaches. Anything less clear is left to the skeleton's names."""
    claimed, key = _claimed_layers(source.directory)
    stacks: dict[str, int] = {}
    for name in held:
        for found in _NUMBERED.finditer(name):
            prefix = name[: found.start()]
            if prefix.rsplit(".", 1)[-1] != "experts":  # an MoE's expert index is no layer count
                stacks[prefix] = max(stacks.get(prefix, 0), int(found.group(1)) + 1)
    layers = {prefix: n for prefix, n in stacks.items() if prefix == "layers" or prefix.endswith(".layers")}
    if claimed is None or not layers or claimed <= max(stacks.values()):
        return
    prefix, n = max(layers.items(), key=lambda item: (item[1], item[0]))
    raise InputError(
        f"{flag} {source.name}: config.json claims {claimed:,} layers ({key}) but its weight files hold {n:,} "
        f"({prefix}.0 to {prefix}.{n - 1}); transformers would fill the others with random values"
    )


def _claimed_layers(directory: Path) -> tuple[int | None, str]:
    """The layer count config.json in `directory` claims, and the key that says it:
    num_hidden_layers, else text_config's (multimodal configs); None where neither is a positive
    int or the file does not read as a JSON object (AutoConfig says why)."""
    try:
        config = read_json(directory / "config.json")
    except InputError:
        return None, ""
    text = config.get("text_config") if isinstance(config, dict) else None
    for key, where in (("num_hidden_layers", config), ("text_config.num_hidden_layers", text)):
        value = where.get("num_hidden_layers") if isinstance(where, dict) else None
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value, key
    return None, ""


def _missing_parameters(skeleton: torch.nn.Module, held: set[str]) -> list[str]:
    """The parameter names of `skeleton` that `held` (a checkpoint's tensor names) lacks, sorted.
    Tied parameters are one object under several names: any one of them held is enough (a tied
    head is saved once, as the embedding). [] when the names the skeleton does not have could be
    the lacking ones renamed (another prefix, a legacy layout: transformers maps them on load):
    at least as many of them as parameters lacking. One junk tensor beside a file that lacks a
    layer's nine is no renaming: it had switched the whole check off."""
    # Only names the skeleton lacks are matched against these: GPT-2's "attn.bias" (its old
    # mask buffer) also matches its c_attn.bias, a parameter that must be held.
    unexpected = getattr(skeleton, "_keys_to_ignore_on_load_unexpected", None) or []
    unknown = [k for k in held - skeleton.state_dict().keys() if not any(re.search(p, k) for p in unexpected)]
    names: dict[int, list[str]] = {}
    for name, param in skeleton.named_parameters(remove_duplicate=False):
        names.setdefault(id(param), []).append(name)
    ignored = getattr(skeleton, "_keys_to_ignore_on_load_missing", None) or []
    lacking = [group for group in names.values() if not held.intersection(group) and not all(any(re.search(p, n) for p in ignored) for n in group)]
    if len(unknown) >= len(lacking):
        return []
    return sorted(n for group in lacking for n in group if not any(re.search(p, n) for p in ignored))
