"""Reading LoRA adapter directories (peft's layout), next to model loading: kto-train resumes
from them and `kto-inspect score` scores a policy through them, and inspection/ does not import
train/. Training adapters (building, quantizing, saving, merging) stays in train/adapters.py.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import InputError
from ..files import read_json
from .sharded import is_sharded_checkpoint, load_sharded_weights

if TYPE_CHECKING:
    import torch

ADAPTER_CONFIG = "adapter_config.json"


def require_peft(flag: str = "--lora-r") -> Any:
    """The peft module, or InputError naming `flag` when it is not installed."""
    try:
        with quiet_bitsandbytes():  # the first import of peft, hence of bitsandbytes, in a LoRA run
            import peft
    except ImportError:
        raise InputError(f"{flag}: needs peft, which is not installed (pip install 'kto-offline[lora]')") from None
    return peft


@contextlib.contextmanager
def quiet_bitsandbytes() -> Iterator[None]:
    """Importing peft (also through transformers' optimization module) imports bitsandbytes,
    whose CPU backend logs a warning about an optional kernel package: noise, held back."""
    quiet = logging.getLogger("bitsandbytes")
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        yield
    finally:
        quiet.setLevel(level)


def is_adapter_dir(path: Path) -> bool:
    return Path(path).is_dir() and (Path(path) / ADAPTER_CONFIG).is_file()


def adapter_config(adapter_dir: Path) -> dict:
    """DIR/adapter_config.json as a mapping; InputError `PATH: unreadable (…)` otherwise."""
    path = Path(adapter_dir) / ADAPTER_CONFIG
    config = read_json(path)
    if not isinstance(config, dict):
        raise InputError(f"{path}: unreadable (not a JSON object)")
    return config


def base_model_of(adapter_dir: Path) -> str | None:
    """The base model peft recorded in DIR/adapter_config.json, if any."""
    return adapter_config(adapter_dir).get("base_model_name_or_path")


def with_adapters(base: torch.nn.Module, adapter_dir: Path) -> torch.nn.Module:
    """The base with the adapters of `adapter_dir` on it, for inference (eval mode, not trainable).
    `adapter_dir` is a PEFT adapter directory, or a kto-train FSDP checkpoint under LoRA: its
    adapter_config.json, and the adapters' weights in its DCP shards (sharded.SHARDED_DIR)."""
    from peft import PeftConfig, PeftModel

    if not is_sharded_checkpoint(adapter_dir):
        with peft_quietly():
            return PeftModel.from_pretrained(base, adapter_dir, is_trainable=False).eval()
    config = PeftConfig.from_pretrained(str(adapter_dir))
    config.inference_mode = False  # the adapters trainable, as saved: load_sharded_weights expects exactly those
    with peft_quietly():
        model = load_sharded_weights(PeftModel(base, config), Path(adapter_dir))
    return model.requires_grad_(False).eval()


@contextlib.contextmanager
def peft_quietly() -> Iterator[None]:
    """PeftModel asks the model is_gradient_checkpointing, which transformers 5 deprecates with a
    FutureWarning on every run: peft's call, nothing the user can change, held back. And peft
    imports bitsandbytes as it wraps the first layer (its LoRA layers for quantized ones), whose
    CPU backend then logs that an optional kernel package did not load (on a CPU with AVX512-BF16,
    `Failed to load CPU gemm_4bit_forward from kernels-community: …`, in every LoRA run)."""
    with warnings.catch_warnings(), quiet_bitsandbytes():
        warnings.filterwarnings("ignore", message=r".*is_gradient_checkpointing.* is deprecated", category=FutureWarning)
        yield
