"""THE definition of a completion's log-probability, shared by every phase.

    log π(y | x) = Σ_{t in completion} log softmax(W h_{t-1})[y_t]

- Which positions count: exactly the completion tokens; the prompt and padding never do. The
  token at position t is predicted from the hidden state at t-1.
- Precision: the LM-head matmul runs in the model's compute dtype (the autocast dtype, else the
  weight dtype), log-softmax in float32 (`token_logps`), and per-sequence sums in float64.
- Memory: the LM head is applied only at completion positions, in chunks, so no
  batch × length × vocab float32 tensor ever exists, with or without autograd.

kto-precompute writes reference numbers with it, kto-train computes policy numbers with it and
kto-inspect scores with it. If two phases computed this differently, the step-0 check in
kto-train would show the drift.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ..errors import InputError
from ..schema import Ragged, packed
from .shared_prefix import PackedBatch, shared_prefix_attention
from .token_budget import ATTENTION_WIDTH_MULTIPLE
from .token_logps import token_logps


def pad_width(x: torch.Tensor) -> torch.Tensor:
    """[B, T] -> [B, T'] with T' the next multiple of ATTENTION_WIDTH_MULTIPLE, zeros (token 0,
    or False) on the right: after every real token, so no real token sees them."""
    return torch.nn.functional.pad(x, (0, -x.shape[1] % ATTENTION_WIDTH_MULTIPLE))


@dataclass(frozen=True)
class TokenBatch:
    """Right-padded prompt+completion sequences.

    input_ids:      [B, T] int64, prompt then completion, then pad
    attention_mask: [B, T] int64, 1 on real tokens (for counting: the forward needs no mask,
                    see CompletionLogps.forward)
    score_mask:     [B, T] bool, True on completion tokens (the ones whose log-prob counts)
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    score_mask: torch.Tensor

    def to(self, device: torch.device | str) -> TokenBatch:
        return TokenBatch(*(t.to(device, non_blocking=True) for t in (self.input_ids, self.attention_mask, self.score_mask)))

    @property
    def num_tokens(self) -> int:
        return int(self.attention_mask.sum())


def make_token_batch(
    prompts: Sequence[Sequence[int]] | Ragged,
    completions: Sequence[Sequence[int]] | Ragged,
    pad_id: int,
    pad_to: int | None = None,
) -> TokenBatch:
    """Concatenate each prompt with its completion and right-pad to the longest (or `pad_to`).

    Takes Python sequences or `Ragged` rows (what the training reader gathers straight from the
    shards' Arrow buffers); either way the batch is filled by numpy scatters, not per token.
    """
    p = packed(prompts) if isinstance(prompts, Ragged) else Ragged.from_rows(prompts)
    c = packed(completions) if isinstance(completions, Ragged) else Ragged.from_rows(completions)
    if len(p) != len(c):
        raise ValueError("prompts and completions differ in length")
    lp, lc = p.lengths, c.lengths
    if (lp == 0).any():
        raise ValueError("every sequence needs at least one prompt token to predict the first completion token")
    n = lp + lc
    width = int(n.max(initial=0)) if pad_to is None else pad_to
    ids = np.full((len(n), width), pad_id, dtype=np.int64)
    # Flat positions: row b's prompt fills [b·width, b·width + lp_b), its completion the next lc_b.
    row_start = np.arange(len(n), dtype=np.int64) * width
    flat = ids.reshape(-1)
    for part, at in ((p, row_start), (c, row_start + lp)):
        flat[np.repeat(at - part.offsets[:-1], part.lengths) + np.arange(len(part.values))] = part.values
    position = np.arange(width)
    attn = position < n[:, None]
    score = attn & (position >= lp[:, None])
    return TokenBatch(torch.from_numpy(ids), torch.from_numpy(attn.astype(np.int64)), torch.from_numpy(score))


class CompletionLogps(nn.Module):
    """Wraps a causal LM: forward(input_ids, score_mask) -> completion log-probs, flat [N] fp32.

    It is an nn.Module (not a function) so that DDP can wrap it: the policy forward then goes
    through the wrapper and its gradient-sync hooks fire, while the LM head is still applied
    only at completion positions. `self.lm` is the Hugging Face model to save.
    """

    def __init__(self, lm: nn.Module, chunk_size: int = 1024):
        super().__init__()
        self.lm = lm
        self.chunk_size = chunk_size
        # Gemma-2 style models cap their logits; everything else passes None. Models that scale
        # their logits after the head would get log-probs they never generate with: refuse them.
        self.softcap = getattr(lm.config, "final_logit_softcapping", None)
        for name in ("logits_scaling", "logit_scale"):
            if getattr(lm.config, name, None) not in (None, 1, 1.0):
                raise InputError(f"--model: {type(lm).__name__} scales its logits ({name}); not supported yet")
        if lm.get_output_embeddings().weight.is_meta:
            raise InputError("--model: the LM head is offloaded (device_map put it on disk or CPU); give it GPU memory")

    def forward(self, input_ids: torch.Tensor | PackedBatch, score_mask: torch.Tensor | None = None) -> torch.Tensor:
        if isinstance(input_ids, PackedBatch):
            # kto-train's shared-prefix passes call the module, not forward_packed, so that the
            # hooks of the DDP or FSDP wrapper around it fire as for a plain batch.
            return self.forward_packed(input_ids)
        # No attention mask, on purpose: batches are right-padded, so under the causal mask no
        # real token attends to a pad (pads come after it) and the default position ids 0..T-1
        # are those of each real token. Every scored log-prob is the same as with the padding
        # mask, and attention may take its causal (flash) kernel instead of a masked one.
        input_ids, score_mask = pad_width(input_ids), pad_width(score_mask)
        hidden = self.lm.get_decoder()(input_ids=input_ids, use_cache=False).last_hidden_state
        # With --device-map the decoder ends on another GPU than it starts; follow its output.
        input_ids, score_mask = input_ids.to(hidden.device), score_mask.to(hidden.device)
        # Shift: hidden at t-1 predicts the token at t.
        predict_at = score_mask[:, 1:]
        return self._token_logps(hidden[:, :-1][predict_at], input_ids[:, 1:][predict_at])

    def forward_packed(self, batch: PackedBatch) -> torch.Tensor:
        """Completion log-probs of a shared-prefix batch (shared_prefix.py), flat [N] fp32 in
        the order of batch.targets. The dense layers run on the packs (each prompt once);
        attention runs on each completion's plain sequence, gathered from them, so every
        log-prob is the one forward() gives, to fp32 rounding (the kernels may sum in another
        order on other shapes; bit for bit on the AVX-512 machine: docs/design.md). Same LM head
        and log-softmax as forward()."""
        batch = batch.to(self.lm.get_input_embeddings().weight.device)
        with shared_prefix_attention(self.lm, batch) as attention_kwargs:
            hidden = self.lm.get_decoder()(input_ids=batch.input_ids, position_ids=batch.position_ids, use_cache=False, **attention_kwargs).last_hidden_state
        flat = hidden.reshape(-1, hidden.shape[-1])
        return self._token_logps(flat[batch.predict_from.to(flat.device)], batch.targets.to(flat.device))

    def _token_logps(self, selected: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """[N, H] hidden states that predict [N] targets -> [N] log-probs (token_logps.py)."""
        head = self.lm.get_output_embeddings()
        device_type = selected.device.type
        if torch.is_autocast_enabled(device_type):
            compute_dtype = torch.get_autocast_dtype(device_type)
        else:
            compute_dtype = head.weight.dtype
        bias = getattr(head, "bias", None)
        return token_logps(
            selected,
            head.weight.to(selected.device),
            targets,
            compute_dtype=compute_dtype,
            chunk_size=self.chunk_size,
            softcap=self.softcap,
            bias=None if bias is None else bias.to(selected.device),
        )


def sequence_sums(flat_logps: torch.Tensor, score_mask: torch.Tensor) -> torch.Tensor:
    """[N] per-token values (row-major over score_mask) -> [B] float64 sums per row.

    Differentiable; float64 so that long completions do not lose the small per-token terms.
    """
    return segment_sums(flat_logps, score_mask.sum(dim=1))


def segment_sums(flat_logps: torch.Tensor, lengths: torch.Tensor | Sequence[int]) -> torch.Tensor:
    """[N] per-token values, `lengths` consecutive runs -> float64 sum of each run.

    One summation for both layouts (plain and shared-prefix), so that equal per-token values
    give bit-equal sums.
    """
    lengths = torch.as_tensor(lengths, device=flat_logps.device)
    rows = torch.repeat_interleave(torch.arange(len(lengths), device=flat_logps.device), lengths)
    out = torch.zeros(len(lengths), dtype=torch.float64, device=flat_logps.device)
    return out.index_add(0, rows, flat_logps.double())


def split_rows(flat_logps: torch.Tensor, score_mask: torch.Tensor) -> list[torch.Tensor]:
    """[N] per-token values -> one [L_b] tensor per row (its completion tokens, in order)."""
    return list(torch.split(flat_logps, score_mask.sum(dim=1).tolist()))
