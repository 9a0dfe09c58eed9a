"""THE definition of a completion's log-probability, shared by every phase.

    log π(y | x) = Σ_{t in completion} log softmax(W h_{t-1})[y_t]

- Which positions count: exactly the completion tokens; the prompt and padding never do. The
  token at position t is predicted from the hidden state at t-1.
- Precision: the LM-head matmul runs in the model's compute dtype (the autocast dtype, else the
  weight dtype), log-softmax in float32 (`token_logps`, end of this module), and per-sequence sums in float64.
- Memory: the LM head is applied only at completion positions, in chunks, so no
  batch × length × vocab float32 tensor ever exists, with or without autograd.

kto-precompute writes reference numbers with it, kto-train computes policy numbers with it and
kto-inspect scores with it. If two phases computed this differently, the step-0 check in
kto-train would show the drift.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.autograd.function import once_differentiable

from .. import schema as S
from ..errors import InputError
from ..schema import Ragged, packed
from .numerics import ATTENTION_WIDTH_MULTIPLE
from .shared_prefix import PackedBatch, shared_prefix_attention


def pad_width(x: torch.Tensor, positions: int | None = None) -> torch.Tensor:
    """[B, T] -> [B, T'] with T' the next multiple of ATTENTION_WIDTH_MULTIPLE, zeros (token 0,
    or False) on the right: after every real token, so no real token sees them. With
    `positions` (position_limit: a learned table's size, or the range of a rotary scaling that
    follows the longest position) T' stays within it: the pads take positions too, and one past
    a table ends in an IndexError, one past the rotary range changes every row's frequencies."""
    width = x.shape[1] - x.shape[1] % -ATTENTION_WIDTH_MULTIPLE
    if positions is not None:
        width = max(x.shape[1], min(width, positions))
    return torch.nn.functional.pad(x, (0, width - x.shape[1]))


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
        self.scale = logit_scale(lm)
        self.softcap = logit_softcap(lm)
        if self.scale is not None and (self.softcap is not None or getattr(lm.get_output_embeddings(), "bias", None) is not None):
            raise InputError(f"--model: {type(hf_model(lm)).__name__} scales its logits and caps them or has a head bias; not supported yet")
        limit = position_limit(lm)
        self.positions = limit.count if limit else None
        if lm.get_output_embeddings().weight.is_meta:
            raise InputError("--model: the LM head is offloaded (device_map put it on disk or CPU); give it GPU memory")

    def forward(self, input_ids: torch.Tensor | PackedBatch, score_mask: torch.Tensor | None = None, scored: int | None = None) -> torch.Tensor:
        """[B, T] ids and score mask -> flat [N] fp32 log-probs, row-major over score_mask[:, 1:].
        `scored` is N (score_mask[:, 1:].sum()), counted by the caller on its CPU copy: given,
        the scored positions are found without reading anything back from the device."""
        if isinstance(input_ids, PackedBatch):
            # kto-train's shared-prefix passes call the module, not forward_packed, so that the
            # hooks of the DDP or FSDP wrapper around it fire as for a plain batch.
            return self.forward_packed(input_ids)
        # No attention mask, on purpose: batches are right-padded, so under the causal mask no
        # real token attends to a pad (pads come after it) and the default position ids 0..T-1
        # are those of each real token. Every scored log-prob is the same as with the padding
        # mask, and attention may take its causal (flash) kernel instead of a masked one.
        input_ids, score_mask = pad_width(input_ids, self.positions), pad_width(score_mask, self.positions)
        hidden = self.lm.get_decoder()(input_ids=input_ids, use_cache=False).last_hidden_state
        # With --device-map the decoder ends on another GPU than it starts; follow its output.
        input_ids, score_mask = input_ids.to(hidden.device), score_mask.to(hidden.device)
        # Shift: hidden at t-1 predicts the token at t. Integer gathers of the same rows in the
        # same order as hidden[:, :-1][score_mask[:, 1:]], without a boolean-mask index's nonzero.
        rows, at = scored_positions(score_mask, scored)
        return self._token_logps(hidden[rows, at - 1], input_ids[rows, at])

    def forward_packed(self, batch: PackedBatch) -> torch.Tensor:
        """Completion log-probs of a shared-prefix batch (shared_prefix.py), flat [N] fp32 in
        the order of batch.targets. The dense layers run on the packs (each prompt once);
        attention runs on each completion's plain sequence, gathered from them, so every
        log-prob is the one forward() gives, to fp32 rounding (the kernels may sum in another
        order on other shapes; shared_prefix.py says how far). Same LM head
        and log-softmax as forward()."""
        batch = batch.to(input_device(self.lm))
        with shared_prefix_attention(self.lm, batch) as attention_kwargs:
            hidden = self.lm.get_decoder()(input_ids=batch.input_ids, position_ids=batch.position_ids, use_cache=False, **attention_kwargs).last_hidden_state
        flat = hidden.reshape(-1, hidden.shape[-1])
        return self._token_logps(flat[batch.predict_from.to(flat.device)], batch.targets.to(flat.device))

    def _token_logps(self, selected: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """[N, H] hidden states that predict [N] targets -> [N] log-probs (token_logps, below)."""
        head = self.lm.get_output_embeddings()
        # Under --device-map the head may sit on another GPU than the decoder's last layer: the
        # N completion positions go to it and the [N] result comes back, never the V × H weight
        # to them (2.1 GB of fp32 for 128k × 4096, every batch). On one device both are no-ops.
        back, device = selected.device, head.weight.device
        if back != device:  # a device-to-device copy; on one device no call at all
            selected, targets = selected.to(device), targets.to(device)
        if torch.is_autocast_enabled(device.type):
            compute_dtype = torch.get_autocast_dtype(device.type)
        else:
            compute_dtype = head.weight.dtype
        bias = getattr(head, "bias", None)
        if self.scale is not None:  # W·(s·h) = s·(W·h): the head has no bias here (__init__)
            selected = selected * self.scale
        logps = token_logps(selected, head.weight, targets, compute_dtype=compute_dtype, chunk_size=self.chunk_size, softcap=self.softcap, bias=bias)
        return logps if back == device else logps.to(back)


def scored_positions(score_mask: torch.Tensor, scored: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(row, position) of every True of score_mask[:, 1:] (positions counted in score_mask, so
    ≥ 1), row-major: the order a boolean-mask index gives. Each is [N] int64, on score_mask's device.

    Without `scored` (N), nonzero finds them: on an accelerator it reads N back and waits for the
    device (a CPU mask costs nothing). With it, the k-th True is scattered to slot k by a cumsum
    and the rest to a spare slot N, so no size depends on device data and nothing waits; a
    wrong N indexes out of range (an error, or a device-side assert on CUDA)."""
    predict_at = score_mask[:, 1:].reshape(-1)
    if scored is None:
        flat = predict_at.nonzero().squeeze(1)
    else:
        slot = torch.where(predict_at, predict_at.cumsum(0) - 1, scored)
        every = torch.arange(predict_at.numel(), device=predict_at.device)
        # Slots no True fills keep an index past the end: a count too high fails at the gather.
        flat = torch.full((scored + 1,), predict_at.numel(), dtype=torch.long, device=predict_at.device).scatter_(0, slot, every)[:scored]
    width = score_mask.shape[1] - 1
    return flat // width, flat % width + 1


# Config keys of models whose forward scales the logits after the head, or the hidden states
# between the decoder and the head (transformers 5.25): Granite*, MiniCPM3 and HyperCLOVAX
# `logits_scaling`, Cohere* `logit_scale`, Falcon-H1 `lm_head_multiplier`, Inkling
# `logits_mup_width_multiplier`, MuseSpark/MuseGlimmer `output_multiplier`. logit_scale applies
# such a factor where the class's forward shows how (multiplied or divided), else refuses: a
# head of weight @ h alone would give log-probs the model never generates with.
LOGIT_SCALE_KEYS = ("logits_scaling", "logit_scale", "lm_head_multiplier", "logits_mup_width_multiplier", "output_multiplier")
# Keys of a tanh softcap on the logits, cap · tanh(z / cap): Gemma 2/3/3n/4 and others
# `final_logit_softcapping`, RecurrentGemma `logits_soft_cap`.
SOFTCAP_KEYS = ("final_logit_softcapping", "logits_soft_cap")


def _configs(lm: nn.Module) -> list:
    """`lm`'s text config, then its own when that is another object: a multimodal model
    (Gemma3n's ...ForConditionalGeneration) keeps its logit settings on the text config."""
    config = lm.config
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    return [text] if text is config else [text, config]


def logit_scale(lm: nn.Module) -> float | None:
    """The factor `lm`'s forward multiplies its logits by after the head (None: none), read
    with its direction from the forward's code (`logits = logits / self.config.logits_scaling`:
    Granite divides; `* self.logit_scale`: Cohere, HyperCLOVAX, Falcon-H1 multiply). A key set
    whose use the code does not show is refused in one line."""
    lm = hf_model(lm)
    name, found = type(lm).__name__, {}
    for config in _configs(lm):
        for key in LOGIT_SCALE_KEYS:
            value = getattr(config, key, None)
            if value in (None, 1, 1.0):
                continue
            op = _scaling_in_forward(type(lm), key)
            if op is None or not isinstance(value, (int, float)) or value <= 0:
                raise InputError(f"--model: {name} scales its logits ({key} {value}); not supported yet")
            found[key] = float(value) if op == "*" else 1.0 / value
    if len(found) > 1:  # how several combine is the forward's business: not guessed
        raise InputError(f"--model: {name} scales its logits by {', '.join(found)}; not supported yet")
    return next(iter(found.values()), None)


def _scaling_in_forward(cls: type, key: str) -> str | None:
    """`*` or `/`: how `cls.forward` applies `key` to its logits, from a line `logits = ... * self.KEY`
    (or self.config.KEY, self.model.KEY); None when no line, or lines of both kinds, show it."""
    import inspect
    import re

    try:
        source = inspect.getsource(inspect.unwrap(cls.forward))
    except (OSError, TypeError):
        return None
    # The key must end the line's expression: `* self.logit_scale.exp()` or `/ (2 * self.config.KEY)`
    # compute something else than the config's value times or over the logits.
    ops = set(re.findall(rf"^\s*logits\s*=.*([*/])\s*self\.(?:config\.|model\.)?{key}\s*(?:#.*)?$", source, re.M))
    return ops.pop() if len(ops) == 1 else None


def logit_softcap(lm: nn.Module) -> float | None:
    """The softcap `lm` applies to its logits (None: none); refuses a model that has a
    vocabulary cut below its head's rows (Inkling `unpadded_vocab_size`), in one line."""
    lm = hf_model(lm)  # peft's PeftModel: its forward names no key; the model's own does
    name = type(lm).__name__
    for config in _configs(lm):
        unpadded = getattr(config, "unpadded_vocab_size", None)
        if isinstance(unpadded, int) and unpadded < lm.get_output_embeddings().weight.shape[0]:
            raise InputError(f"--model: {name} drops logits past its unpadded_vocab_size {unpadded}; not supported yet")
    # The text config's value first: the one a multimodal model applies (Gemma3n, PaliGemma).
    caps = [(key, getattr(config, key, None)) for config in _configs(lm) for key in SOFTCAP_KEYS]
    key, cap = next(((key, cap) for key, cap in caps if cap is not None), (None, None))
    return float(cap) if cap is not None and _forward_reads(lm, key) else None


def hf_model(lm: nn.Module) -> nn.Module:
    """The transformers model under peft's adapters (PeftModel.get_base_model), else `lm`."""
    base = getattr(lm, "get_base_model", None)
    return base() if callable(base) else lm


def _forward_reads(lm: nn.Module, key: str) -> bool:
    """Whether `lm`'s forward reads config key `key` (a name its code looks up): Gemma 3's
    multimodal model keeps its text config's final_logit_softcapping and never applies it, where
    Gemma3n's applies it. True when the code cannot be read (the cap then applies, as before)."""
    import inspect

    code = getattr(inspect.unwrap(type(lm).forward), "__code__", None)
    return code is None or key in code.co_names


def learned_positions(lm: nn.Module) -> int | None:
    """How many positions `lm`'s decoder holds a table for, the smallest when there are several;
    None for a model without one (Llama's rotary, Bloom's ALiBi), which takes any length. A
    position past the table ends its forward in an IndexError. The tables: an embedding other
    than the input one named for positions (GPT-2 `wpe`, OPT's `embed_positions`, less its
    `offset` of 2 ids), or a buffer of rows by position (GPT-J's and CodeGen's sinusoidal
    `embed_positions`, rotary as they are). A model nested in the decoder (Phi-4-multimodal's
    image and audio encoders, GIT's) has its own positions, not the text's: skipped."""
    from transformers import PreTrainedModel

    inputs, decoder = lm.get_input_embeddings(), lm.get_decoder()
    nested = [path + "." for path, module in decoder.named_modules() if path and isinstance(module, PreTrainedModel)]
    sizes = []
    for path, module in decoder.named_modules():
        leaf = path.rsplit(".", 1)[-1]
        if any(path.startswith(n) for n in nested):
            continue
        if isinstance(module, nn.Embedding) and module is not inputs and (leaf == "wpe" or ("pos" in leaf and "rel" not in leaf)):
            offset = getattr(module, "offset", 0)
            sizes.append(module.num_embeddings - (offset if isinstance(offset, int) else 0))
    for path, buffer in decoder.named_buffers():
        leaf = path.rsplit(".", 1)[-1]
        if buffer.dim() == 2 and "pos" in leaf and "embed" in leaf and not any(path.startswith(n) for n in nested):
            sizes.append(buffer.shape[0])
    return min(sizes, default=None)


@dataclass(frozen=True)
class PositionLimit:
    """The longest sequence `lm` scores as one function of its tokens, and why, for a message
    `... more than the {count} positions {what}`."""

    count: int
    what: str


def position_limit(lm: nn.Module) -> PositionLimit | None:
    """The smaller of `lm`'s learned position table (learned_positions) and the range in which
    its rotary frequencies are fixed (rotary_positions); None when neither bounds a sequence."""
    lm = hf_model(lm)
    name = type(lm).__name__
    limits = []
    if (learned := learned_positions(lm)) is not None:
        limits.append(PositionLimit(learned, f"{name} learned"))
    if (rotary := rotary_positions(lm)) is not None:
        kind, count = rotary
        limits.append(PositionLimit(count, f"within which {name}'s {kind} rotary scaling is fixed (past them it follows each batch's longest sequence)"))
    return min(limits, key=lambda limit: limit.count, default=None)


def rotary_positions(lm: nn.Module) -> tuple[str, int] | None:
    """(rope type, positions) for rotary frequencies that transformers recomputes from the
    longest position of each forward call (modeling_rope_utils.dynamic_rope_update): `dynamic`
    (NTK) past max_position_embeddings, `longrope` (Phi-3) past original_max_position_embeddings.
    Past that many, a row's log-probs would depend on the rows batched beside it (and padding);
    within it they are fixed. None for static scalings (default, linear, yarn, llama3)."""
    found = []
    for config in _configs(lm):
        params = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
        # One dict, or one per layer type (Gemma 3's sliding and full attention)
        for rope in [params] if "rope_type" in params or "type" in params else [p for p in params.values() if isinstance(p, dict)]:
            kind = str(rope.get("rope_type") or rope.get("type") or "")
            if "dynamic" in kind and not rope.get("alpha"):  # with alpha: Hunyuan's static ntk_alpha in transformers
                found.append((kind, getattr(config, "max_position_embeddings", None)))
            elif kind == "longrope":
                found.append((kind, rope.get("original_max_position_embeddings") or getattr(config, "original_max_position_embeddings", None)))
    found = [(kind, int(n)) for kind, n in found if isinstance(n, int)]
    return min(found, key=lambda kn: kn[1], default=None)


def check_cache_positions(cache: Any, lm: nn.Module, flag: str, cache_flag: str = "--cache") -> None:
    """Refuse, in one line naming `flag` (kto-train's --model), a `cache` (formats.cache's
    ShardedCache, given as `cache_flag`; not imported: cache imports this module) holding a row
    whose prompt + completion or prompt + KL completion is longer than `lm` scores as one
    function of its tokens (position_limit: a learned position table, where its forward would
    end in an IndexError, or a rotary range past which the scores follow the batch; `lm` may be
    a meta-device skeleton). A cache cut to that length (its --max-length) is not read."""
    limit = position_limit(lm)
    if limit is None or cache.manifest.content.max_length <= limit.count:
        return
    longest = cache.longest_sequences()  # list offsets only: no hashing, no token copied
    at = int(np.argmax(longest))
    if longest[at] > limit.count:
        row_id = cache.rows([at], [S.ID])[S.ID][0]
        raise InputError(
            f"{flag}: row {row_id!r} of {cache_flag} {cache.dir} has {int(longest[at])} tokens, more than the {limit.count} positions "
            f"{limit.what}; give a cache made with --max-length {limit.count} or less"
        )


def input_device(lm: torch.nn.Module) -> torch.device:
    """Where `lm`'s inputs go: its embedding's device, or, when --device-map offloaded the
    embedding (its weight then sits on `meta`), the device accelerate's hook runs it on (the
    hook may be one of a SequentialHook's; accelerate writes the device as an int index of the
    current accelerator, a string or a torch.device)."""
    embedding = lm.get_input_embeddings()
    if not embedding.weight.is_meta:
        return embedding.weight.device
    hook = getattr(embedding, "_hf_hook", None)
    for h in [hook, *getattr(hook, "hooks", ())]:
        execution = getattr(h, "execution_device", None)
        if execution is not None:
            return torch.device(execution)
    raise InputError("--device-map: the embedding is offloaded with no device to run it on; give it a device")


def sequence_sums(flat_logps: torch.Tensor, score_mask: torch.Tensor) -> torch.Tensor:
    """[N] per-token values (row-major over score_mask) -> [B] float64 sums per row.

    Differentiable; float64 so that long completions do not lose the small per-token terms.
    `score_mask` may lie on the CPU beside values on an accelerator (kto-train passes its host
    copy): only its row lengths are read.
    """
    return segment_sums(flat_logps, score_mask.sum(dim=1))


def segment_sums(flat_logps: torch.Tensor, lengths: torch.Tensor | Sequence[int]) -> torch.Tensor:
    """[N] per-token values, `lengths` consecutive runs -> float64 sum of each run.

    One summation for both layouts (plain and shared-prefix), so that equal per-token values
    give bit-equal sums.
    """
    # Host lengths are copied without waiting for the device (a blocking copy would), and
    # output_size is known here, so an accelerator need not report the row count back first.
    lengths = torch.as_tensor(lengths).to(flat_logps.device, non_blocking=True)
    rows = torch.repeat_interleave(torch.arange(len(lengths), device=flat_logps.device), lengths, output_size=flat_logps.shape[0])
    out = torch.zeros(len(lengths), dtype=torch.float64, device=flat_logps.device)
    return out.index_add(0, rows, flat_logps.double())


def split_rows(flat_logps: torch.Tensor, score_mask: torch.Tensor) -> list[torch.Tensor]:
    """[N] per-token values -> one [L_b] tensor per row (its completion tokens, in order)."""
    return list(torch.split(flat_logps, score_mask.sum(dim=1).tolist()))


# ---- per-token log-probs from hidden states: the chunked LM head (token_logps) -----------------
# Per-token log-probs straight from hidden states, chunked over rows, differentiable.
#
# THE definition, for rows n = 0..N-1 (processed `chunk_size` rows at a time):
#
#     z_n    = (hidden_n.to(cd) @ weight.to(cd).T [+ bias.to(cd)]).to(acc)     [V]
#     z_n    = softcap * tanh(z_n / softcap)            (only if softcap is set; in acc)
#     logp_n = z_n[targets_n] - logsumexp(z_n)                                 scalar
#
# cd = compute_dtype (default hidden.dtype): the matmul dtype, as nn.Linear runs under autocast.
# acc = max(float32, cd): float32, except float64 when cd is float64 (so gradcheck works).
# The result equals, to acc rounding, the naive
# `log_softmax((hidden.to(cd) @ weight.to(cd).T).to(acc), -1).gather(-1, targets[:, None])`.
#
# Why chunked: the naive path materialises an N × V float32 tensor (N = 16k tokens, V = 128k
# is 8 GiB). Here only chunk_size × V exists at a time. Under autograd, a plain loop over chunks
# would still keep every chunk's logits alive for backward (N × V again), so `_ChunkedTokenLogps`
# saves only its inputs plus the per-row logsumexp [N] and recomputes each chunk's logits in
# backward: one extra LM-head matmul traded for O(N × V) memory.
#
# Gradients (g = upstream grad [N], p = softmax(z), e_t = one-hot(target)):
#
#     dL/dz_n      = g_n * (e_t - p_n)                                         [chunk, V] acc
#     with softcap: dL/draw = dL/dz * (1 - tanh^2(raw / softcap)) = dL/dz * (1 - (z / softcap)^2)
#     grad_hidden  = dL/draw.to(cd) @ weight.to(cd)                            [chunk, H] -> hidden.dtype
#     grad_weight += dL/draw.to(cd).T @ hidden_c.to(cd)     summed over chunks in acc, -> weight.dtype
#     grad_bias   += dL/draw.sum(0)                         summed over chunks in acc, -> bias.dtype


def _acc_dtype(cd: torch.dtype) -> torch.dtype:
    # float32 for bf16/fp16/fp32 compute; float64 stays float64 (gradcheck needs it).
    return torch.promote_types(torch.float32, cd)


class _Scratch:
    """The large buffers of one forward or backward call: [chunk, V] logits (and dL/dz) and the
    [V, H] weight-gradient product, each made at the first chunk that needs it and reused by
    every later chunk of the call, then freed with the call. glibc malloc maps a block this
    large afresh on each allocation and unmaps it on free, so fresh tensors per chunk had the
    kernel zero 201 MB of pages at every chunk (SmolLM2 at 1024 positions; docs/benchmarks.md,
    "One logits buffer per call"). Per call, not kept between calls: a buffer held by the
    module would stay mapped through the decoder's backward and raise kto-train's peak.
    `torch.mm(..., out=)` into a contiguous slice runs the same GEMM as the allocating `@`, so
    every number stays bit-identical (tests/formats/test_logprob_buffers.py)."""

    def __init__(self, rows: int, device: torch.device) -> None:
        self.rows, self.device = rows, device
        self.made: dict[str, torch.Tensor] = {}

    def take(self, name: str, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        """The buffer `name` (made on first use); the caller slices the rows of its chunk."""
        buf = self.made.get(name)
        if buf is None:
            buf = self.made[name] = torch.empty(shape, dtype=dtype, device=self.device)
        return buf

    def rows_of(self, name: str, c: int, vocab: int, dtype: torch.dtype) -> torch.Tensor:
        """The first `c` rows of the [chunk, vocab] buffer `name`: a contiguous view."""
        return self.take(name, (self.rows, vocab), dtype)[:c]


def _chunk_logits(h_c: torch.Tensor, w_cd: torch.Tensor, b_cd: torch.Tensor | None, cd: torch.dtype, softcap: float | None, scratch: _Scratch) -> torch.Tensor:
    """[c, H] rows -> [c, V] logits in acc dtype, exactly as the module docstring defines them,
    in `scratch`'s logits buffer (the acc one when cd is narrower): the caller may overwrite it,
    and the next chunk will."""
    c, vocab = h_c.shape[0], w_cd.shape[0]
    z = torch.mm(h_c.to(cd), w_cd.T, out=scratch.rows_of("logits", c, vocab, cd))
    if b_cd is not None:
        z.add_(b_cd)  # in cd, before the upcast, as nn.Linear adds it
    acc = _acc_dtype(cd)
    if acc != cd:  # the upcast .to(acc) makes, into a buffer of its own
        z = scratch.rows_of("logits_acc", c, vocab, acc).copy_(z)
    if softcap is not None:
        z.div_(softcap).tanh_().mul_(softcap)
    return z


def _forward(hidden, weight, targets, bias, cd, chunk_size, softcap):
    """Returns (logp [N], logsumexp [N]), both in acc dtype. Call with grad disabled."""
    n = hidden.shape[0]
    acc = _acc_dtype(cd)
    out = torch.empty(n, dtype=acc, device=hidden.device)
    lse = torch.empty(n, dtype=acc, device=hidden.device)
    # Cast the head once per call, not per chunk; a no-op when it already is in cd.
    w_cd = weight.to(cd)
    b_cd = None if bias is None else bias.to(cd)
    scratch = _Scratch(min(chunk_size, n), hidden.device)
    for s in range(0, n, chunk_size):
        z = _chunk_logits(hidden[s : s + chunk_size], w_cd, b_cd, cd, softcap, scratch)
        picked = z.gather(1, targets[s : s + chunk_size, None]).squeeze(1)
        lse_c = _logsumexp_(z)
        lse[s : s + chunk_size] = lse_c
        out[s : s + chunk_size] = picked - lse_c
    return out, lse


def _logsumexp_(z: torch.Tensor) -> torch.Tensor:
    """torch.logsumexp(z, -1) with the same operations in the same order (ATen's
    logsumexp_out_impl), but exp taken in z's own memory: z is overwritten. One [c, V] buffer
    fewer per chunk (201 MB for SmolLM2 at 1024 positions): a lower peak, on a GPU too."""
    maxes = z.amax(dim=-1, keepdim=True)
    maxes.masked_fill_(maxes.abs() == float("inf"), 0)
    return z.sub_(maxes).exp_().sum(dim=-1).log_().add_(maxes.squeeze(-1))


def _chunk_dz(z: torch.Tensor, lse_c: torch.Tensor, g_c: torch.Tensor, targets_c: torch.Tensor, softcap: float | None, scratch: _Scratch) -> torch.Tensor:
    """dL/d(raw logits) of one chunk, [c, V] in acc: g * (onehot - softmax), times the softcap's
    derivative. Built in z's own memory unless the softcap's derivative still needs z, else in
    scratch's dz buffer; z is overwritten either way."""
    if softcap is None:
        dz = z.sub_(lse_c)
    else:
        dz = torch.sub(z, lse_c, out=scratch.rows_of("dz", z.shape[0], z.shape[1], z.dtype))
    dz.exp_().mul_(-g_c)
    dz.scatter_add_(1, targets_c, g_c)
    if softcap is not None:
        # z = softcap * tanh(raw / softcap), so 1 - tanh^2 = 1 - (z / softcap)^2.
        dz.mul_(z.div_(softcap).square_().neg_().add_(1))
    return dz


class _ChunkedTokenLogps(torch.autograd.Function):
    """Saves (hidden, weight, targets, bias, lse[N]) and recomputes logits chunk by chunk in backward."""

    @staticmethod
    def forward(ctx, hidden, weight, targets, bias, cd, chunk_size, softcap):
        with torch.autocast(device_type=hidden.device.type, enabled=False):
            out, lse = _forward(hidden, weight, targets, bias, cd, chunk_size, softcap)
        ctx.save_for_backward(hidden, weight, targets, bias, lse)
        ctx.cd, ctx.chunk_size, ctx.softcap = cd, chunk_size, softcap
        return out

    @staticmethod
    @once_differentiable  # its in-place and out= buffers are not for a graph: no double backward
    def backward(ctx, g):
        hidden, weight, targets, bias, lse = ctx.saved_tensors
        cd, chunk_size, softcap = ctx.cd, ctx.chunk_size, ctx.softcap
        need_h, need_w, _, need_b = ctx.needs_input_grad[:4]
        acc = _acc_dtype(cd)
        # Backward may run on another thread (CUDA) with its own autocast state; pin it off.
        with torch.autocast(device_type=hidden.device.type, enabled=False):
            w_cd = weight.to(cd)
            b_cd = None if bias is None else bias.to(cd)
            g = g.to(acc)
            grad_h = torch.empty_like(hidden) if need_h else None
            # Accumulate in acc even for a bf16 weight: many bf16 partial sums would lose bits.
            grad_w = torch.zeros(weight.shape, dtype=acc, device=weight.device) if need_w else None
            grad_b = torch.zeros(bias.shape, dtype=acc, device=bias.device) if need_b else None
            scratch = _Scratch(min(chunk_size, hidden.shape[0]), hidden.device)
            for s in range(0, hidden.shape[0], chunk_size):
                sl = slice(s, s + chunk_size)
                h_c = hidden[sl]
                z = _chunk_logits(h_c, w_cd, b_cd, cd, softcap, scratch)
                dz = _chunk_dz(z, lse[sl, None], g[sl, None], targets[sl, None], softcap, scratch)
                del z
                # .to(cd), into the cd logits buffer: free again once _chunk_logits upcast it.
                dz_cd = dz if acc == cd else scratch.rows_of("logits", dz.shape[0], dz.shape[1], cd).copy_(dz)
                if need_h:
                    grad_h[sl] = (dz_cd @ w_cd).to(hidden.dtype)
                if need_w:
                    product = torch.mm(dz_cd.T, h_c.to(cd), out=scratch.take("grad_w", weight.shape, cd))
                    if acc != cd:  # upcast (exact) into a buffer of its own: .to(acc) made a [V, H] tensor per chunk
                        product = scratch.take("grad_w_acc", weight.shape, acc).copy_(product)
                    grad_w.add_(product)
                if need_b:
                    grad_b += dz.sum(0)
        if need_w:
            grad_w = grad_w.to(weight.dtype)
        if need_b:
            grad_b = grad_b.to(bias.dtype)
        return grad_h, grad_w, None, grad_b, None, None, None


def token_logps(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    *,
    compute_dtype: torch.dtype | None = None,
    chunk_size: int = 1024,
    softcap: float | None = None,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """log softmax(lm_head(hidden))[targets] per row, without an N × V tensor (module docstring).

    hidden:  [N, H] any float dtype, may require grad
    weight:  [V, H] LM-head weight, may require grad
    targets: [N] int64 in [0, V)
    compute_dtype: matmul dtype (None -> hidden.dtype); both operands are cast to it. The
        caller's autocast state is ignored, so pass the autocast dtype here.
    softcap: Gemma-2 final_logit_softcapping, applied after the upcast.
    bias:    [V] optional, added in compute_dtype before the upcast.
    Returns [N] float32 (float64 when compute_dtype is float64). Grads come back in
    hidden.dtype / weight.dtype / bias.dtype.
    """
    if hidden.dim() != 2 or weight.dim() != 2 or hidden.shape[1] != weight.shape[1]:
        raise ValueError(f"need hidden [N, H] and weight [V, H], got {tuple(hidden.shape)} and {tuple(weight.shape)}")
    if targets.shape != hidden.shape[:1]:
        raise ValueError(f"targets must be [N={hidden.shape[0]}], got {tuple(targets.shape)}")
    if bias is not None and bias.shape != weight.shape[:1]:
        raise ValueError(f"bias must be [V={weight.shape[0]}], got {tuple(bias.shape)}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    cd = hidden.dtype if compute_dtype is None else compute_dtype
    targets = targets.long()
    inputs = (hidden, weight) if bias is None else (hidden, weight, bias)
    if torch.is_grad_enabled() and any(t.requires_grad for t in inputs):
        return _ChunkedTokenLogps.apply(hidden, weight, targets, bias, cd, chunk_size, softcap)
    with torch.no_grad(), torch.autocast(device_type=hidden.device.type, enabled=False):
        return _forward(hidden, weight, targets, bias, cd, chunk_size, softcap)[0]
