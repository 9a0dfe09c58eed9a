"""Shared-prefix layout: each distinct prompt goes through the model once, with all its completions.

One packed sequence holds a prompt p (P tokens) followed by its completions c_1 … c_k back to
back, then right padding:

    tokens:    p_0 … p_{P-1} | c_1,0 … c_1,n1-1 | c_2,0 … | … | pad …
    positions: 0 … P-1       | P … P+n1-1       | P …     | … | (continue)

Every layer but attention works token by token (embedding, norms, projections, MLP, and the
rotary embedding, which reads the restarting position ids), so those run on the packs: the
prompt once. Attention does not: it runs on the plain sequences p + c_i, gathered from the
packed queries, keys and values into one right-padded row per completion, by the attention
function the model was loaded with (`sdpa`, `eager`, `flash_attention_*`), then each packed
token takes its output back (the prompt's from its first completion's row; every row computes
the same prompt outputs). A completion's keys therefore sit at exactly the indices they have in
a plain forward, and its log-probs are the plain ones to fp32 rounding: bit for bit on the
AVX-512 machine (given the same padded widths, token_budget.ATTENTION_WIDTH_MULTIPLE, and the same
matmul regime), a few ulps apart under AVX2, where the kernels sum other shapes in other orders;
see docs/design.md for what this holds against and where it stops. The first token of every completion is
predicted from the last prompt token (position P-1); token j > 0 from token j-1 of the same
completion.

A 4D mask over the pack (each completion sees the prompt and itself) was the first version: it
matched the plain forward only to rounding (1.24e-05 per token on SmolLM2-135M), because the
shifted keys of c_2, c_3 … fall into other lanes of the kernel's vectorised softmax sum, and
it paid attention over the whole W × W square, which the causal kernel skips.

Which sequences share: the grouping is by identical prompt ids among the sequences given (a
row's main and KL sequence always; rows of a paired dataset or with a repeated system prompt
when they are in the same call). `plan_packs` decides, per group, whether packing pays off.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Hashable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import InputError
from .token_budget import ATTENTION_WIDTH_MULTIPLE

# A packed sequence holds at most this many tokens (or one plain sequence, if longer): a pack is
# one row of a dense batch, and the token budget cuts batches at whole rows.
MAX_PACKED_TOKENS = 2048

# Constant of the rule that decides whether a pack pays off (`worth_packing`). It was derived for
# the first, 4D-mask version, whose attention covered the pack's whole W × W square: by FLOPs,
# attention costs 4 · d_attn per (query, key) pair and layer, the dense layers 2 · N_non_embedding
# per token, for SmolLM2-135M 4 · 576 · 30 / (2 · 106.2M) = 3.3e-4; at that ratio the synthetic
# 32–2048 mix ran 6 % slower shared than plain on CPU, so it was raised 4× to 1.3e-3, which keeps
# every pack of the chat and paired mixes. Gathered attention costs what plain attention costs,
# yet packing every group of that synthetic mix (constant 0) still measured 0.80× the plain
# tokens/s (best of 4; wide packs batch and pad worse than length-sorted plain rows), so the rule
# stays as a measured guard (docs/benchmarks.md). Fixed, not read from the model, so that the plan
# (and the token counts in the manifest) are a pure function of the data and the layout.
ATTENTION_COST = 1.3e-3


def group_by_prompt(prompts: Sequence[Sequence[int]]) -> list[list[int]]:
    """Indices grouped by identical prompt ids, groups in order of first appearance."""
    groups: dict[bytes, list[int]] = {}
    for i, p in enumerate(prompts):
        groups.setdefault(np.asarray(p, dtype=np.int64).tobytes(), []).append(i)
    return list(groups.values())


@dataclass(frozen=True)
class Pack:
    """One packed sequence: a prompt and the sequences (indices) whose completions follow it."""

    members: tuple[int, ...]
    prompt_length: int
    length: int  # prompt + all completions: the tokens this pack computes


def plan_packs(
    prompts: Sequence[Sequence[int]], completions: Sequence[Sequence[int]], keys: Sequence[Hashable], *, max_tokens: int = MAX_PACKED_TOKENS
) -> tuple[list[Pack], list[int]]:
    """Split the sequences into packs (≥ 2 completions sharing a prompt) and plain leftovers.

    A group's completions fill packs in key order, each pack at most `max_tokens` long (a pack
    may hold one sequence longer than that on its own). A pack is kept only if it pays off
    (`worth_packing`); otherwise, and for a pack of one, its sequences are scored plain.
    Deterministic: a pure function of the inputs, so a rerun forms the same packs and bytes.
    """
    packs: list[Pack] = []
    plain: list[int] = []
    for group in group_by_prompt(prompts):
        group = sorted(group, key=lambda i: keys[i])
        prompt_length = len(prompts[group[0]])
        current: list[int] = []
        length = prompt_length
        for i in group:
            n = len(completions[i])
            if current and length + n > max_tokens:
                _close(current, prompt_length, completions, packs, plain)
                current, length = [], prompt_length
            current.append(i)
            length += n
        _close(current, prompt_length, completions, packs, plain)
    return packs, plain


def worth_packing(prompt_length: int, completion_lengths: Sequence[int], attention_cost: float | None = None) -> bool:
    """Does one pack cost less than its sequences scored plain?

    Packing saves the dense work of (k − 1) prompts. The extra cost is modelled as attention over
    the pack's whole W × W square (what the first, 4D-mask version paid; see ATTENTION_COST for
    why the rule stays with gathered attention). In dense-token units, with ρ = attention_cost:

        saved = (k − 1) · P        extra = ρ · (W² − ½ Σ_i (P + c_i)²),   W = P + Σ_i c_i

    Short prompts before long completions (the synthetic 32–2048 mix) do not pay; long shared
    prompts (chat templates, paired data) do.
    """
    attention_cost = ATTENTION_COST if attention_cost is None else attention_cost
    k, p = len(completion_lengths), prompt_length
    width = p + sum(completion_lengths)
    extra = attention_cost * (width**2 - 0.5 * sum((p + c) ** 2 for c in completion_lengths))
    return (k - 1) * p > extra


def _close(members: list[int], prompt_length: int, completions, packs: list[Pack], plain: list[int]) -> None:
    lengths = [len(completions[i]) for i in members]
    if len(members) > 1 and worth_packing(prompt_length, lengths):
        packs.append(Pack(tuple(members), prompt_length, prompt_length + sum(lengths)))
    else:
        plain.extend(members)


@dataclass(frozen=True)
class PackedBatch:
    """Right-padded packed sequences, and where each completion's plain sequence lies in them.

    input_ids:     [B, W] int64, prompt then its completions back to back, then pad
    position_ids:  [B, W] int64, restarting at P for every completion
    gather_index:  [C, T] int64, one row per completion (C = len(lengths)): the flat index
                   b * W + t of each token of its plain sequence prompt + completion, then of
                   an arbitrary real token up to T (a multiple of ATTENTION_WIDTH_MULTIPLE)
    scatter_index: [B * W] int64, per packed token the flat index c * T + t of its place in the
                   gathered layout (prompt tokens: in the pack's first completion's row)
    predict_from:  [N] int64, flat index b * W + t of the hidden state that predicts token n
    targets:       [N] int64, the scored completion tokens, completion after completion
    lengths:       completion lengths in the order of `targets` (to split the N values)
    """

    input_ids: torch.Tensor
    position_ids: torch.Tensor
    gather_index: torch.Tensor
    scatter_index: torch.Tensor
    predict_from: torch.Tensor
    targets: torch.Tensor
    lengths: list[int]

    def to(self, device: torch.device | str) -> PackedBatch:
        fields = (self.input_ids, self.position_ids, self.gather_index, self.scatter_index, self.predict_from, self.targets)
        return PackedBatch(*(t.to(device, non_blocking=True) for t in fields), self.lengths)


def make_packed_batch(prompts: Sequence[Sequence[int]], completions: Sequence[Sequence[Sequence[int]]], pad_id: int) -> PackedBatch:
    """prompts[b] followed by completions[b][0], completions[b][1], …; one row per prompt."""
    width = max((len(p) + sum(len(c) for c in cs) for p, cs in zip(prompts, completions)), default=0)
    plain_width = _round_up(max((len(p) + len(c) for p, cs in zip(prompts, completions) for c in cs), default=0))
    rows = len(prompts)
    ids = torch.full((rows, width), pad_id, dtype=torch.long)
    positions = torch.arange(width).repeat(rows, 1)  # pads keep these: nothing reads them
    gather: list[list[int]] = []
    scatter = torch.zeros(rows * width, dtype=torch.long)
    predict_from: list[int] = []
    targets: list[int] = []
    lengths: list[int] = []
    for b, (p, cs) in enumerate(zip(prompts, completions)):
        n_prompt, base = len(p), b * width
        if n_prompt == 0:
            raise ValueError("every sequence needs at least one prompt token to predict the first completion token")
        ids[b, :n_prompt] = torch.as_tensor(list(p), dtype=torch.long)
        # The prompt's outputs come from its first completion's plain sequence (all rows agree).
        scatter[base : base + n_prompt] = torch.arange(n_prompt) + len(gather) * plain_width
        at = n_prompt
        for c in cs:
            n, row = len(c), len(gather)
            lengths.append(n)
            seq = list(range(base, base + n_prompt)) + list(range(base + at, base + at + n))
            # Right padding of the plain sequence: any real token (causal: no real query sees it).
            gather.append(seq + [base] * (plain_width - len(seq)))
            if n == 0:
                continue
            ids[b, at : at + n] = torch.as_tensor(list(c), dtype=torch.long)
            positions[b, at : at + n] = torch.arange(n_prompt, n_prompt + n)
            scatter[base + at : base + at + n] = torch.arange(n_prompt, n_prompt + n) + row * plain_width
            # Token 0 is predicted from the last prompt token, token j from token j-1.
            predict_from += [base + n_prompt - 1] + list(range(base + at, base + at + n - 1))
            targets += [int(t) for t in c]
            at += n
    return PackedBatch(
        ids,
        positions,
        torch.as_tensor(gather, dtype=torch.long).reshape(len(gather), plain_width),
        scatter,
        torch.as_tensor(predict_from, dtype=torch.long),
        torch.as_tensor(targets, dtype=torch.long),
        lengths,
    )


def _round_up(n: int) -> int:
    return -(-n // ATTENTION_WIDTH_MULTIPLE) * ATTENTION_WIDTH_MULTIPLE


# Attention over the gathered plain sequences --------------------------------------------------

ATTENTION_NAME = "kto_shared_prefix"
# Implementations whose attention, given no mask, is the causal one of a right-padded batch.
_CAUSAL_WITHOUT_MASK = ("sdpa", "flash_attention_2", "flash_attention_3", "flash_attention_4")


@dataclass(frozen=True)
class _Gather:
    """What the attention function needs besides q, k, v: the batch's indices and the attention
    the model was loaded with (called on the gathered plain sequences)."""

    gather_index: torch.Tensor
    scatter_index: torch.Tensor
    inner: str


def _gathered_attention(module, query, key, value, attention_mask, *, kto_gather: _Gather, **kwargs):
    """Attention of the packed rows, computed on each completion's plain sequence.

    query/key/value: [B, heads, W, D] in the packed layout (after the rotary embedding, which
    used the restarting position ids). Gathered into [C, heads, T, D], one plain right-padded
    sequence per completion (its prompt's keys at 0..P-1, its own at P..), the model's own
    attention runs on them exactly as on a plain batch, and each packed row takes its output
    back. `attention_mask` is a placeholder (see `shared_prefix_attention`) and unused.
    """
    index, scatter = kto_gather.gather_index.to(query.device), kto_gather.scatter_index.to(query.device)
    rows, width = index.shape
    q, k, v = (_gather(x, index) for x in (query, key, value))
    if kto_gather.inner == "eager":
        eager = sys.modules[type(module).__module__].eager_attention_forward
        causal = torch.ones(width, width, dtype=torch.bool, device=q.device).tril_()
        mask = torch.zeros(width, width, dtype=q.dtype, device=q.device).masked_fill_(~causal, torch.finfo(q.dtype).min)
        out, _ = eager(module, q, k, v, mask[None, None], **kwargs)
    else:
        from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

        out, _ = ALL_ATTENTION_FUNCTIONS[kto_gather.inner](module, q, k, v, None, **kwargs)
    # out: [C, T, heads, D] -> packed [B, W, heads, D]
    flat = out.reshape(rows * width, *out.shape[2:])[scatter]
    return flat.view(query.shape[0], query.shape[2], *out.shape[2:]), None


def _gather(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """[B, h, W, D] -> [C, h, T, D], laid out in memory as [C, T, h, D] like the projections'
    output that attention sees in a plain forward."""
    b, h, w, d = x.shape
    flat = x.transpose(1, 2).reshape(b * w, h, d)
    return flat[index.reshape(-1)].view(*index.shape, h, d).transpose(1, 2)


@contextlib.contextmanager
def shared_prefix_attention(lm: torch.nn.Module, batch: PackedBatch) -> Iterator[dict]:
    """Within it, `lm`'s attention layers compute on the gathered plain sequences of `batch`;
    yields the keyword arguments for the decoder call (the indices travel to every attention
    layer as attention kwargs, and a placeholder 4D mask makes transformers skip building one)."""
    configs = {id(m.config): m.config for m in lm.modules() if hasattr(getattr(m, "config", None), "_attn_implementation")}
    inner = {c._attn_implementation for c in configs.values()}
    if len(inner) != 1 or not (inner <= {"eager", *_CAUSAL_WITHOUT_MASK}):
        raise InputError(
            f"--prefix-sharing supports the attention implementations sdpa, eager and flash_attention_*, not {sorted(inner)}; use --no-prefix-sharing"
        )
    from transformers import AttentionInterface
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    if ATTENTION_NAME not in ALL_ATTENTION_FUNCTIONS:
        AttentionInterface.register(ATTENTION_NAME, _gathered_attention)
    (name,) = inner
    for c in configs.values():
        c._attn_implementation = ATTENTION_NAME
    try:
        placeholder = torch.zeros((batch.input_ids.shape[0], 1, 1, 1), device=batch.input_ids.device)
        yield {"attention_mask": placeholder, "kto_gather": _Gather(batch.gather_index, batch.scatter_index, name)}
    finally:
        for c in configs.values():
            c._attn_implementation = name
