"""Shared-prefix layout: each distinct prompt goes through the model once, with all its completions.

A pack holds a prompt p (P tokens) followed by its completions c_1 … c_k back to back; a batch
lays its packs one after the other in a single row, with no padding between or after them:

    tokens:    p_0 … p_{P-1} | c_1,0 … c_1,n1-1 | c_2,0 … | … | next pack's prompt …
    positions: 0 … P-1       | P … P+n1-1       | P …     | … | 0 …

Every layer but attention works token by token (embedding, norms, projections, MLP, and the
rotary embedding, which reads the restarting position ids), so those run on the packs: the
prompt once. Attention does not: it runs on the plain sequences p + c_i, gathered from the
packed queries, keys and values into one right-padded row per completion, by the attention
function the model was loaded with (`sdpa`, `eager`, `flash_attention_*`), then each packed
token takes its output back (the prompt's from its first completion's row; every row computes
the same prompt outputs). A completion's keys therefore sit at exactly the indices they have in
a plain forward, and its log-probs are the plain ones to fp32 rounding: bit for bit on the
AVX-512 machine (given the same padded widths, numerics.ATTENTION_WIDTH_MULTIPLE, and the same
matmul regime), a few ulps apart under AVX2, where the kernels sum other shapes in other orders;
see docs/design.md for what this holds against and where it stops. The first token of every completion is
predicted from the last prompt token (position P-1); token j > 0 from token j-1 of the same
completion.

A 4D mask over the pack (each completion sees the prompt and itself) was the first version: it
matched the plain forward only to rounding (1.24e-05 per token on SmolLM2-135M), because the
shifted keys of c_2, c_3 … fall into other lanes of the kernel's vectorised softmax sum, and
it paid attention over the whole W × W square, which the causal kernel skips. The second
version (issue 13) gathered attention as now but laid the packs out as the rows of a [B, W]
batch padded to the widest pack: the dense layers then paid for W on every row (issue 21
measured where the cost went: docs/benchmarks.md), so the rule that decides which packs pay off
had to model a W² term and rejected almost every group of real chat data.

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
from .numerics import ATTENTION_WIDTH_MULTIPLE

# A pack gathers at most this many tokens for attention (its completions × the longest
# P + c_i), or one completion if that alone is longer: a pack is one item of a scoring batch,
# and the token budget cuts batches at whole packs.
MAX_PACKED_TOKENS = 8192

# Constant of the rule that decides whether a pack pays off (`worth_packing`): the cost of
# packing per gathered token, in units of one token's dense work. See worth_packing for where
# the value comes from. Fixed, not read from the model, so that the plan (and the token counts in
# the manifest) are a pure function of the data and the layout.
GATHER_COST = 0.05


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
    length: int  # prompt + all completions: the tokens this pack computes in the dense layers
    width: int  # prompt + its longest completion: the widest plain sequence attention sees


def plan_packs(
    prompts: Sequence[Sequence[int]], completions: Sequence[Sequence[int]], keys: Sequence[Hashable], *, max_tokens: int = MAX_PACKED_TOKENS
) -> tuple[list[Pack], list[int]]:
    """Split the sequences into packs (≥ 2 completions sharing a prompt) and plain leftovers.

    A group's completions fill packs in key order, each pack gathering at most `max_tokens`
    tokens for attention (members × longest P + c_i; a pack may hold one longer sequence on its
    own). A pack is kept only if it pays off (`worth_packing`); otherwise, and for a pack of
    one, its sequences are scored plain. Deterministic: a pure function of the inputs, so a
    rerun forms the same packs and bytes.
    """
    packs: list[Pack] = []
    plain: list[int] = []
    for group in group_by_prompt(prompts):
        group = sorted(group, key=lambda i: keys[i])
        prompt_length = len(prompts[group[0]])
        current: list[int] = []
        longest = 0
        for i in group:
            n = len(completions[i])
            if current and (len(current) + 1) * (prompt_length + max(longest, n)) > max_tokens:
                _close(current, prompt_length, completions, packs, plain)
                current, longest = [], 0
            current.append(i)
            longest = max(longest, n)
        _close(current, prompt_length, completions, packs, plain)
    return packs, plain


def worth_packing(prompt_length: int, completion_lengths: Sequence[int], gather_cost: float | None = None) -> bool:
    """Does one pack cost less than its sequences scored plain?

    Packing saves the dense work of (k − 1) prompts. Attention costs what it costs plain (it runs
    on the same plain sequences, gathered), and the dense layers see no padding (the packs lie
    back to back); what packing adds is copying queries, keys, values and outputs to and from the
    gathered layout, a cost per gathered token. In dense-token units, with γ = gather_cost:

        saved = (k − 1) · P        extra = γ · Σ_i (P + c_i)

    i.e. pack when the prompts saved are more than γ of the tokens the group represents. The
    copies are memory-bound, so γ grows with the machine's load: profiled inside a scoring run
    of the real SmolLM2-135M (first 10 rows of kto_en_demo.json, CPU fp32, load 5.8) they took
    4.8 s (index_select) of 110 s, γ ≈ 0.036 (docs/benchmarks.md). GATHER_COST = 0.05 is that
    with a margin, and leaves plain the groups that would save under 5 % (on kto_en_demo.json
    0.2 % of the tokens: 21.78 % saved instead of 21.98 %).
    """
    gather_cost = GATHER_COST if gather_cost is None else gather_cost
    k, p = len(completion_lengths), prompt_length
    return (k - 1) * p > gather_cost * sum(p + c for c in completion_lengths)


def _close(members: list[int], prompt_length: int, completions, packs: list[Pack], plain: list[int]) -> None:
    lengths = [len(completions[i]) for i in members]
    if len(members) > 1 and worth_packing(prompt_length, lengths):
        packs.append(Pack(tuple(members), prompt_length, prompt_length + sum(lengths), prompt_length + max(lengths)))
    else:
        plain.extend(members)


@dataclass(frozen=True)
class PackedBatch:
    """Packs back to back in one row, and where each completion's plain sequence lies in it.

    The dense layers work token by token, so the packs need no padding: they lie one after the
    other in a single row of N = Σ pack lengths tokens, and no pack pays for the widest one.
    Only attention sees padding, on the gathered plain sequences (as plain scoring would).

    input_ids:     [1, N] int64, each prompt then its completions back to back, then the next pack
    position_ids:  [1, N] int64, 0..P-1 on a prompt, restarting at P for every completion
    gather_index:  [C, T] int64, one row per completion (C = len(lengths)): the flat index of
                   each token of its plain sequence prompt + completion, then of an arbitrary
                   real token up to T (the longest P + c_i rounded up to a multiple of
                   ATTENTION_WIDTH_MULTIPLE)
    scatter_index: [N] int64, per packed token the flat index c * T + t of its place in the
                   gathered layout (prompt tokens: in the pack's first completion's row)
    predict_from:  [M] int64, flat index of the hidden state that predicts scored token m
    targets:       [M] int64, the scored completion tokens, completion after completion
    lengths:       completion lengths in the order of `targets` (to split the M values)
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


def make_packed_batch(prompts: Sequence[Sequence[int]], completions: Sequence[Sequence[Sequence[int]]], pad_id: int = 0) -> PackedBatch:
    """Pack b = prompts[b] followed by completions[b][0], completions[b][1], …; packs back to back.

    `pad_id` is not used (the packs lie back to back with no padding token); it stays so that
    callers written for the padded [B, W] layout keep working.
    """
    del pad_id
    plain_width = _round_up(max((len(p) + len(c) for p, cs in zip(prompts, completions) for c in cs), default=0))
    ids: list[np.ndarray] = []
    positions: list[np.ndarray] = []
    gather: list[np.ndarray] = []
    scatter: list[np.ndarray] = []
    predict_from: list[np.ndarray] = []
    lengths: list[int] = []
    start = 0
    for p, cs in zip(prompts, completions):
        if len(p) == 0:
            raise ValueError("every sequence needs at least one prompt token to predict the first completion token")
        pack = _pack_indices(len(p), [len(c) for c in cs], start, len(gather), plain_width)
        ids += [np.asarray(p, dtype=np.int64)] + [np.asarray(c, dtype=np.int64) for c in cs]
        positions.append(pack.positions)
        gather += pack.gather
        scatter.append(pack.scatter)
        predict_from.append(pack.predict_from)
        lengths += [len(c) for c in cs]
        start += len(pack.positions)
    cat = lambda parts: torch.from_numpy(np.concatenate(parts)) if parts else torch.zeros(0, dtype=torch.long)
    targets = cat([np.asarray(c, dtype=np.int64) for cs in completions for c in cs])
    return PackedBatch(
        cat(ids)[None],
        cat(positions)[None],
        torch.from_numpy(np.stack(gather)) if gather else torch.zeros(0, plain_width, dtype=torch.long),
        cat(scatter),
        cat(predict_from),
        targets,
        lengths,
    )


@dataclass(frozen=True)
class _PackIndices:
    positions: np.ndarray  # [P + Σ c]
    gather: list[np.ndarray]  # one [T] row per completion
    scatter: np.ndarray  # [P + Σ c]
    predict_from: np.ndarray  # [Σ c]


def _pack_indices(prompt_length: int, completion_lengths: Sequence[int], start: int, first_row: int, width: int) -> _PackIndices:
    """Indices of one pack that starts at flat index `start`, its completions gathered into rows
    first_row, first_row + 1, … of width `width`."""
    n_prompt = prompt_length
    prompt = np.arange(start, start + n_prompt, dtype=np.int64)
    positions = [np.arange(n_prompt, dtype=np.int64)]
    # The prompt's outputs come from its first completion's plain sequence (all rows agree).
    scatter = [np.arange(n_prompt, dtype=np.int64) + first_row * width]
    gather, predict_from = [], []
    at = start + n_prompt
    for j, n in enumerate(completion_lengths):
        own = np.arange(at, at + n, dtype=np.int64)
        # Right padding of the plain sequence: any real token (causal: no real query sees it).
        gather.append(np.concatenate([prompt, own, np.full(width - n_prompt - n, start, dtype=np.int64)]))
        positions.append(np.arange(n_prompt, n_prompt + n, dtype=np.int64))
        scatter.append(np.arange(n_prompt, n_prompt + n, dtype=np.int64) + (first_row + j) * width)
        # Token 0 is predicted from the last prompt token, token j from token j-1.
        predict_from.append(np.concatenate([[start + n_prompt - 1], own[:-1]]) if n else own)
        at += n
    return _PackIndices(np.concatenate(positions), gather, np.concatenate(scatter), np.concatenate(predict_from).astype(np.int64))


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
    # The pack's position ids describe the packed row, not the gathered ones: a flash kernel
    # would read them as sequence boundaries. Each gathered row is one plain causal sequence.
    kwargs.pop("position_ids", None)
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
    # index_select on a 2D view: several times faster on CPU than advanced indexing (aten::index).
    flat = out.reshape(rows * width, -1).index_select(0, scatter)
    return flat.view(query.shape[0], query.shape[2], *out.shape[2:]), None


def _gather(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """[B, h, W, D] -> [C, h, T, D], laid out in memory as [C, T, h, D] like the projections'
    output that attention sees in a plain forward."""
    b, h, w, d = x.shape
    flat = x.transpose(1, 2).reshape(b * w, h * d)  # a view: the projections' output is [B, W, h, D]
    return flat.index_select(0, index.reshape(-1)).view(*index.shape, h, d).transpose(1, 2)


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
