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
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

# Every forward pads its sequence width to a multiple of this. CPU flash attention (torch's
# FlashAttentionKernel.cpp) sums the softmax over keys in 16-wide vectors (AVX-512 fp32; 8-wide
# under AVX2, and 16 is a multiple of 8) and the last `width % 16` keys one by one with another
# exp: a token near the end of the longest row got other bits than the same token in a wider
# batch. With no such tail, a row's attention does not depend on the batch width. The plain and
# shared-prefix layouts (and precompute and training) then agree bit for bit on the AVX-512
# machine, and to a few ulps under AVX2, where MKL blocks matmuls by other shapes (docs/design.md).
ATTENTION_WIDTH_MULTIPLE = 16

# THE table of dtype names. torch is imported only when a name is turned into a dtype, so the
# CLIs list these choices without importing torch (their --help stays fast).
WEIGHT_DTYPES = ("fp32", "bf16", "fp16")
NAMES = ("auto", *WEIGHT_DTYPES, "amp-bf16", "amp-fp16")


def torch_dtype(name: str) -> torch.dtype:
    """ "fp32" | "bf16" | "fp16" -> the torch dtype."""
    import torch

    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[name]


def dtype_name(dtype: torch.dtype) -> str:
    """The inverse of `torch_dtype`."""
    return next(name for name in WEIGHT_DTYPES if torch_dtype(name) == dtype)


@dataclass(frozen=True)
class Numerics:
    weights: torch.dtype
    autocast: torch.dtype | None = None

    @property
    def name(self) -> str:
        """fp32 | bf16 | fp16 (no autocast), amp-bf16 | amp-fp16 (fp32 weights under autocast),
        or e.g. bf16+amp-fp16 for the unusual mixes, so that equal names mean equal numerics."""
        if self.autocast is None or self.autocast == self.weights:
            return dtype_name(self.weights)  # autocast to the weights' own dtype changes nothing
        amp = f"amp-{dtype_name(self.autocast)}"
        return amp if dtype_name(self.weights) == "fp32" else f"{dtype_name(self.weights)}+{amp}"

    @property
    def compute(self) -> torch.dtype:
        return self.autocast or self.weights

    def context(self, device_type: str) -> contextlib.AbstractContextManager:
        if self.autocast is None:
            return contextlib.nullcontext()
        import torch

        return torch.autocast(device_type=device_type, dtype=self.autocast)


def parse_numerics(name: str, device: torch.device) -> Numerics:
    """`auto` is amp-bf16 on CUDA and fp32 elsewhere."""
    if name == "auto":
        name = "amp-bf16" if device.type == "cuda" else "fp32"
    if name.startswith("amp-"):
        return Numerics(torch_dtype("fp32"), torch_dtype(name.removeprefix("amp-")))
    return Numerics(torch_dtype(name))


def train_numerics(weights: str, mixed_precision: str) -> Numerics:
    """kto-train's --dtype (weights) and accelerate's resolved --mixed-precision (no|bf16|fp16)."""
    return Numerics(torch_dtype(weights), None if mixed_precision == "no" else torch_dtype(mixed_precision))
