"""The policy's model as kto-train loads it: weights in train mode, dropout off (unless kept),
activation checkpointing on when asked, no KV cache; wrapped in `CompletionLogps` so that every
log-prob comes from formats/compute/logprob.py, the definition precompute scored the cache with.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch

from kto.formats.compute.logprob import CompletionLogps
from kto.formats.compute.models import ModelSource, load_causal_lm, load_completion_logps, resolve_source
from kto.formats.compute.numerics import torch_dtype

if TYPE_CHECKING:
    from .config import TrainConfig


def _is_dropout_name(name: str) -> bool:
    name = name.lower()
    return "dropout" in name or "pdrop" in name


def disable_dropout(lm: torch.nn.Module) -> None:
    """Dropout off everywhere it can hide, so train-mode forwards are deterministic (a training
    forward equals an evaluation one: the step-0 check reads the first step's own forward) and the
    saved config tells the truth.

    `nn.Dropout` modules are not enough: Llama's and Qwen2's attention layers copy
    `config.attention_dropout` into a plain float attribute when they are built, and that copy
    is what runs in train mode. So every float attribute named like *dropout* / *pdrop* on every
    module is zeroed too, and the same fields of the config and its sub-configs.
    """
    for module in lm.modules():
        if isinstance(module, torch.nn.modules.dropout._DropoutNd):
            module.p = 0.0
        for name, value in list(vars(module).items()):
            if _is_dropout_name(name) and isinstance(value, float):
                setattr(module, name, 0.0)
    _zero_config_dropout(lm.config, seen=set())


def _zero_config_dropout(config, seen: set) -> None:
    if id(config) in seen:
        return
    seen.add(id(config))
    for name, value in list(vars(config).items()):
        if _is_dropout_name(name) and isinstance(value, float):
            setattr(config, name, 0.0)
        elif hasattr(value, "to_dict") and hasattr(value, "model_type"):  # a nested sub-config
            _zero_config_dropout(value, seen)


def load_policy(cfg: TrainConfig, init: ModelSource, adapt: Callable[[torch.nn.Module], torch.nn.Module] = lambda lm: lm, **load: Any) -> CompletionLogps:
    """The policy from `init` (--model or a checkpoint) in train mode, dropout and checkpointing
    set, then `adapt` (adapters) on it; accelerate places it unless `load` holds a device_map."""

    def adjust(lm: torch.nn.Module) -> torch.nn.Module:
        prepare_for_training(cfg, lm)
        return adapt(lm)

    return load_completion_logps(
        init,
        dtype=torch_dtype(cfg.dtype),
        attn_implementation=cfg.attn_implementation,
        trust_remote_code=cfg.trust_remote_code,
        chunk_size=cfg.chunk_size,
        training=True,
        adjust=adjust,
        **load,
    )


def prepare_for_training(cfg: TrainConfig, lm: torch.nn.Module) -> None:
    if not cfg.keep_dropout:
        disable_dropout(lm)
    if cfg.gradient_checkpointing:
        # Newer transformers 5.x rename gradient_checkpointing_enable (removed in v6); 5.17 on
        # the GPU image has only the old name.
        if hasattr(lm, "activation_checkpointing_enable"):
            lm.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    # config.use_cache stays the model's: every forward here passes use_cache=False itself, and
    # final/ is served by stacks that read the saved config (False there means no KV cache).


def load_base(cfg: TrainConfig) -> torch.nn.Module:
    """--model as it is on disk, unquantized, in --dtype: what adapters are merged into."""
    return load_causal_lm(
        resolve_source(cfg.model), dtype=torch_dtype(cfg.dtype), attn_implementation=cfg.attn_implementation, trust_remote_code=cfg.trust_remote_code
    )
