"""The policy's model as kto-train loads it: weights in train mode, dropout off (unless kept),
activation checkpointing on when asked, no KV cache; wrapped in `CompletionLogps` so that every
log-prob comes from formats/compute/logprob.py, the definition precompute scored the cache with.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch

from kto.formats.compute.loading import load_causal_lm, load_completion_logps
from kto.formats.compute.logprob import CompletionLogps
from kto.formats.compute.numerics import torch_dtype
from kto.formats.compute.sources import ModelSource, resolve_source

if TYPE_CHECKING:
    from .config import TrainConfig


# Train-mode randomness other than dropout, by the attribute (on modules and configs) that sets its
# size: MoE routers that scale their input by uniform noise in train mode (Mixtral, MiniMax and
# MiniMax-M2, Switch: `router_jitter_noise`, copied to modules as `jitter_noise`; PhiMoE:
# `input_jitter_noise`; DBRX: `moe_jitter_eps`), and LayerDrop (OPT, BART: `*layerdrop`), which
# skips whole layers at random. Named one by one: a `*jitter*` substring would also catch
# DINOv3's `pos_embed_jitter`, whose log a zero turns into -inf.
TRAIN_NOISE = frozenset({"router_jitter_noise", "jitter_noise", "input_jitter_noise", "moe_jitter_eps"})


def _is_random_name(name: str) -> bool:
    name = name.lower()
    return "dropout" in name or "pdrop" in name or "layerdrop" in name or name in TRAIN_NOISE


def disable_dropout(lm: torch.nn.Module) -> None:
    """Dropout and the other train-mode randomness off everywhere it can hide, so train-mode
    forwards are deterministic and equal evaluation ones (the step-0 check reads the first step's
    own forward against the cache, which precompute scored in eval mode), and the saved config
    tells the truth (peft's adapter_config.json keeps the --lora-dropout given, which applies
    with --keep-dropout).

    `nn.Dropout` modules are not enough: Llama's and Qwen2's attention layers copy
    `config.attention_dropout` into a plain float attribute when they are built, and that copy
    is what runs in train mode. So every float attribute named like *dropout* / *pdrop* /
    *layerdrop*, or in TRAIN_NOISE, on every module is zeroed too, and the same fields of the
    config and its sub-configs. PhiMoE's router samples its experts in train mode whatever its
    jitter (`_pin_sparsemixers`), and its `router_jitter_noise` is a threshold its eval path reads
    too: that one is kept.
    """
    keep = _pin_sparsemixers(lm)
    for module in lm.modules():
        if isinstance(module, torch.nn.modules.dropout._DropoutNd):
            module.p = 0.0
        for name, value in list(vars(module).items()):
            if _is_random_name(name) and name not in keep and isinstance(value, float):
                setattr(module, name, 0.0)
    _zero_config_dropout(lm.config, keep, seen=set())


def _zero_config_dropout(config: Any, keep: frozenset[str], seen: set[int]) -> None:
    if id(config) in seen:
        return
    seen.add(id(config))
    for name, value in list(vars(config).items()):
        if _is_random_name(name) and name not in keep and isinstance(value, float):
            setattr(config, name, 0.0)
        elif hasattr(value, "to_dict") and hasattr(value, "model_type"):  # a nested sub-config
            _zero_config_dropout(value, keep, seen)


def _uses_sparsemixer(module: torch.nn.Module) -> bool:
    code = getattr(type(module).forward, "__code__", None)
    return code is not None and "sparsemixer" in code.co_names


def _pin_sparsemixers(lm: torch.nn.Module) -> frozenset[str]:
    """PhiMoE routes through `sparsemixer(scores, jitter_eps, training)`, which in train mode draws
    its experts by Gumbel sampling and its gradient by a random Heun step, whatever the jitter:
    no attribute turns that off. The modules that call it (transformers' PhimoeTopKRouter, the
    remote code's PhiMoESparseMoeBlock) are kept on its eval path (top-k of the scores; the
    router's weights still get the gradient of the softmax over the kept experts) by a hook that
    clears their own `training` flag before each forward: `lm.train()` sets it again, and the
    hook, unlike an overridden `train`, survives deepcopy, pickling and FSDP's class swap.

    sparsemixer's `jitter_eps` (`router_jitter_noise`) is no noise but the threshold of which
    experts its softmax keeps, on the eval path too (precompute scored the cache with it), so it
    is returned as a name to keep."""
    found = False
    for module in lm.modules():
        if _uses_sparsemixer(module):
            if _eval_path not in module._forward_pre_hooks.values():  # disable_dropout may run twice
                module.register_forward_pre_hook(_eval_path)
            module.training = False
            found = True
    return frozenset({"router_jitter_noise"}) if found else frozenset()


def _eval_path(module: torch.nn.Module, args: tuple[Any, ...]) -> None:
    module.training = False


def load_policy(cfg: TrainConfig, init: ModelSource, adapt: Callable[[torch.nn.Module], torch.nn.Module] = lambda lm: lm, **load: Any) -> CompletionLogps:
    """The policy from `init` (--model or a checkpoint) in train mode, dropout and checkpointing
    set, then `adapt` (adapters) on it; accelerate places it unless `load` holds a device_map."""

    def adjust(lm: torch.nn.Module) -> torch.nn.Module:
        prepare_for_training(cfg, lm)
        adapted = adapt(lm)
        if not cfg.keep_dropout:
            # After the adapters, so that theirs (peft's lora_dropout) goes too, as TRL's and
            # LLaMA-Factory's KTO trainers disable dropout after adding them.
            disable_dropout(adapted)
        return adapted

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
    """Gradient checkpointing, before adapters wrap the model (dropout is disabled after them)."""
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
