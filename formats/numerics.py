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
        """fp32 | bf16 | fp16 (no autocast), amp-bf16 | amp-fp16 (fp32 weights under autocast),
        or e.g. bf16+amp-fp16 for the unusual mixes, so that equal names mean equal numerics."""
        short = {v: k for k, v in _DTYPES.items()}
        if self.autocast is None or self.autocast == self.weights:
            return short[self.weights]  # autocast to the weights' own dtype changes nothing
        amp = f"amp-{short[self.autocast]}"
        return amp if self.weights == torch.float32 else f"{short[self.weights]}+{amp}"

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
