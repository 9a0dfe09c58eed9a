"""Numerics: weight dtype plus optional autocast dtype, named the same way by every phase.

kto-train's default on CUDA is fp32 master weights under bf16 autocast ("amp-bf16"), because
pure bf16 weights lose most KTO-sized updates below one ulp. kto-precompute's default on CUDA
is the same "amp-bf16", so the reference numbers in the cache are exactly what the untrained
policy computes at step 0 and the drift check can be tight. Pure "bf16" weights remain a
choice for references too large for fp32 weights.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
NAMES = ("auto", "fp32", "bf16", "fp16", "amp-bf16", "amp-fp16")


@dataclass(frozen=True)
class Numerics:
    weights: torch.dtype
    autocast: torch.dtype | None = None

    @property
    def name(self) -> str:
        short = {v: k for k, v in _DTYPES.items()}
        return f"amp-{short[self.autocast]}" if self.autocast is not None else short[self.weights]

    @property
    def compute(self) -> torch.dtype:
        return self.autocast or self.weights

    def context(self, device_type: str):
        if self.autocast is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=device_type, dtype=self.autocast)


def parse_numerics(name: str, device: torch.device) -> Numerics:
    """`auto` is amp-bf16 on CUDA and fp32 elsewhere."""
    if name == "auto":
        name = "amp-bf16" if device.type == "cuda" else "fp32"
    if name.startswith("amp-"):
        return Numerics(torch.float32, _DTYPES[name.removeprefix("amp-")])
    return Numerics(_DTYPES[name])


def train_numerics(weights: str, mixed_precision: str) -> Numerics:
    """kto-train's --dtype (weights) and accelerate's resolved --mixed-precision (no|bf16|fp16)."""
    return Numerics(_DTYPES[weights], None if mixed_precision == "no" else _DTYPES[mixed_precision])
