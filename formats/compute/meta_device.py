"""A model built from its config on the meta device (its modules and config, no weight read):
what the checks made before --out is touched look at.

The pre-flight's checks (LoRA targets, prefix sharing, positions, the weight files against
config.json) and the attention check each need one; the commands build the model itself once,
through `weights_check.checked_source`'s cached `skeleton`. Every build goes through `on_meta`,
and other modules call it as `meta_device.on_meta`, so that it is looked up here at call time
(tests/formats/test_model_skeleton_once.py counts the builds by patching this one name).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..errors import InputError, exception_line
from .gguf_once import gguf_loads

if TYPE_CHECKING:
    from transformers import PreTrainedModel

    from .sources import ModelSource


def model_skeleton(source: ModelSource, *, trust_remote_code: bool = False, flag: str = "--model") -> PreTrainedModel:
    """`source`'s model built from its config on the meta device: its modules and config, no
    weight read, for the checks made before --out is touched (LoRA targets, prefix sharing). A
    GGUF file's parse is kept for the model's load (gguf_once). The commands build it through
    weights_check.checked_source's `skeleton`, once."""
    try:
        return on_meta(source, trust_remote_code)
    except Exception as exc:
        raise InputError(f"{flag} {source.name}: cannot build the model from its config ({exception_line(exc)})") from exc


def on_meta(source: ModelSource, trust_remote_code: bool, **kwargs: Any) -> PreTrainedModel:
    """AutoModelForCausalLM.from_config of `source`'s config on the meta device (`kwargs` to it)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    with gguf_loads(source.gguf_file):  # the model's load reuses this parse of a GGUF file
        config = AutoConfig.from_pretrained(source.directory, trust_remote_code=trust_remote_code, **source.load_kwargs)
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code, **kwargs)
