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
a plain forward, and its log-probs are the plain ones to fp32 rounding: the kernels sum in an
order that depends on the padded width a row's attention sees, which differs between any two
batchings (plain against plain too). Bit for bit on the suite's tiny and 2-layer models on the
AVX-512 machine; up to 2.7e-5 per token (14 ulps) on the 30-layer SmolLM2, as between two plain
batchings (docs/benchmarks.md, issue 21). The rows go to attention in buckets of similar width
(`attention_buckets`): a pack's completions differ in length (a pair's chosen, rejected and
two KL completions), and one call padded to the longest made the packed layout's attention
1.17× (unpaired) to 1.40× (paired) the plain layout's work on ../shared/data. The first token of every completion is
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
from collections.abc import Callable, Hashable, Iterator, Sequence
from dataclasses import dataclass, field

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
    Only attention sees padding, on the gathered plain sequences (as plain scoring would), and
    the gathered rows are bucketed by their own width (`attention_buckets`), so a short
    completion is not padded to the batch's longest.

    input_ids:     [1, N] int64, each prompt then its completions back to back, then the next pack
    position_ids:  [1, N] int64, 0..P-1 on a prompt, restarting at P for every completion
    gather_index:  per bucket, [C_b, T_b] int64, one row per completion of the bucket: the flat
                   index of each token of its plain sequence prompt + completion, then of an
                   arbitrary real token up to T_b (the bucket's longest P + c_i rounded up to a
                   multiple of ATTENTION_WIDTH_MULTIPLE)
    scatter_index: [N] int64, per packed token its place in the buckets' gathered outputs laid
                   end to end (bucket after bucket, row after row, T_b places a row; prompt
                   tokens: in the row of the pack's first completion)
    predict_from:  [M] int64, flat index of the hidden state that predicts scored token m
    targets:       [M] int64, the scored completion tokens, completion after completion
    lengths:       completion lengths in the order of `targets` (to split the M values)
    """

    input_ids: torch.Tensor
    position_ids: torch.Tensor
    gather_index: tuple[torch.Tensor, ...]
    scatter_index: torch.Tensor
    predict_from: torch.Tensor
    targets: torch.Tensor
    lengths: list[int]

    def to(self, device: torch.device | str) -> PackedBatch:
        move = lambda t: t.to(device, non_blocking=True)
        return PackedBatch(
            move(self.input_ids),
            move(self.position_ids),
            tuple(move(g) for g in self.gather_index),
            move(self.scatter_index),
            move(self.predict_from),
            move(self.targets),
            self.lengths,
        )


# Fixed cost of one more attention call (its three gathers, the kernel launch, its share of the
# output copy), in the unit of `attention_buckets`' cost model: one row × width² term. On the
# 2-core CPU a unit costs about 0.015 µs per SmolLM2 layer (plain SDPA: 7.56 s for 17.2 M units ×
# 30 layers on the first 8 pairs of dpo_en_demo.json; docs/benchmarks.md, issue 21), so 64² units
# are about 0.06 ms, the order of a small call's own overhead: buckets are split off only where
# they save more padded attention than a call costs. On a GPU a unit costs picoseconds and a call
# tens of microseconds of launches, so 2048² keeps about one call per batch there (the layout
# before buckets). On the H200 (1B shape, amp-bf16) shared scoring with it ran 1.63× plain's
# tokens/s on a paired mix and 1.05× on the synthetic one: never slower (docs/benchmarks.md).
BUCKET_CALL_COST_CPU = 64 * 64
BUCKET_CALL_COST_ACCELERATOR = 2048 * 2048


def bucket_call_cost(device_type: str) -> int:
    """`attention_buckets`' call cost on this kind of device ("cpu", "cuda", …)."""
    return BUCKET_CALL_COST_CPU if device_type == "cpu" else BUCKET_CALL_COST_ACCELERATOR


def attention_buckets(widths: Sequence[int], call_cost: int = BUCKET_CALL_COST_CPU) -> list[list[int]]:
    """Rows of padded widths `widths` split into buckets, each one attention call padded to its
    widest row, at the least modelled cost Σ_b (rows_b · T_b² + call_cost).

    Causal attention over a right-padded row of width T costs in proportion to T² (about T² / 2
    score pairs, padded queries included), so one call over rows of 100 and 900 tokens pays for
    900 twice. Rows of equal width never gain from being split (a call costs more than nothing),
    so the cut is searched over the distinct widths, sorted, by dynamic programming: at most
    max_length / 16 of them, whatever the batch's row count. Each bucket lists its rows in
    (width, index) order: a pure function of the widths, so the same batch always gathers the
    same buckets (and bits)."""
    rows_of: dict[int, list[int]] = {}
    for i in sorted(range(len(widths)), key=lambda i: (widths[i], i)):
        rows_of.setdefault(widths[i], []).append(i)
    distinct = list(rows_of)  # ascending: filled in sorted order
    counts = np.cumsum([0] + [len(rows_of[w]) for w in distinct])
    # best[j]: least cost of the j narrowest widths; cut[j]: where its last bucket starts.
    best, cut = [0] * (len(distinct) + 1), [0] * (len(distinct) + 1)
    for j in range(1, len(distinct) + 1):
        best[j], cut[j] = min((best[i] + int(counts[j] - counts[i]) * distinct[j - 1] ** 2 + call_cost, i) for i in range(j))
    buckets, j = [], len(distinct)
    while j > 0:
        buckets.append([r for w in distinct[cut[j] : j] for r in rows_of[w]])
        j = cut[j]
    return buckets[::-1]


def make_packed_batch(
    prompts: Sequence[Sequence[int]], completions: Sequence[Sequence[Sequence[int]]], pad_id: int = 0, *, call_cost: int = BUCKET_CALL_COST_CPU
) -> PackedBatch:
    """Pack b = prompts[b] followed by completions[b][0], completions[b][1], …; packs back to back.

    `pad_id` is not used (the packs lie back to back with no padding token); it stays so that
    callers written for the padded [B, W] layout keep working. `call_cost`: `attention_buckets`'
    (`bucket_call_cost` of the device the batch runs on).
    """
    del pad_id
    if not prompts or any(len(cs) == 0 for cs in completions):
        raise ValueError("a packed batch needs at least one pack, and every pack at least one completion")
    ids: list[np.ndarray] = []
    positions: list[np.ndarray] = []
    rows: list[np.ndarray] = []  # per completion: the flat indices of its plain sequence
    pad_of_row: list[int] = []  # per completion: a real token of its pack, its right padding
    owners: list[tuple[int, int, np.ndarray]] = []  # per pack part: (row, offset in row, flat slice) for the scatter
    predict_from: list[np.ndarray] = []
    lengths: list[int] = []
    start = 0
    for p, cs in zip(prompts, completions):
        if len(p) == 0:
            raise ValueError("every sequence needs at least one prompt token to predict the first completion token")
        n_prompt = len(p)
        prompt = np.arange(start, start + n_prompt, dtype=np.int64)
        ids += [np.asarray(p, dtype=np.int64)] + [np.asarray(c, dtype=np.int64) for c in cs]
        positions.append(np.arange(n_prompt, dtype=np.int64))
        # The prompt's outputs come from its first completion's plain sequence (all rows agree).
        owners.append((len(rows), 0, prompt))
        at = start + n_prompt
        for c in cs:
            own = np.arange(at, at + len(c), dtype=np.int64)
            owners.append((len(rows), n_prompt, own))
            rows.append(np.concatenate([prompt, own]))
            pad_of_row.append(start)
            positions.append(np.arange(n_prompt, n_prompt + len(c), dtype=np.int64))
            # Token 0 is predicted from the last prompt token, token j from token j-1.
            predict_from.append(np.concatenate([[start + n_prompt - 1], own[:-1]]) if len(c) else own)
            lengths.append(len(c))
            at += len(c)
        start = at
    gather, base = _gather_buckets(rows, pad_of_row, call_cost)
    scatter = [base[row] + at_in_row + np.arange(len(flat), dtype=np.int64) for row, at_in_row, flat in owners]
    cat = lambda parts: torch.from_numpy(np.concatenate(parts)) if parts else torch.zeros(0, dtype=torch.long)
    return PackedBatch(
        cat(ids)[None],
        cat(positions)[None],
        gather,
        cat(scatter),
        cat(predict_from).to(torch.long),
        cat([np.asarray(c, dtype=np.int64) for cs in completions for c in cs]),
        lengths,
    )


def _gather_buckets(rows: list[np.ndarray], pad_of_row: list[int], call_cost: int) -> tuple[tuple[torch.Tensor, ...], np.ndarray]:
    """The completions' plain sequences (flat indices) in attention buckets: per bucket a [C_b, T_b]
    gather index, and per row where its T_b output places begin once the buckets' outputs lie
    end to end."""
    widths = [_round_up(len(r)) for r in rows]
    gather: list[torch.Tensor] = []
    base = np.zeros(len(rows), dtype=np.int64)
    offset = 0
    for bucket in attention_buckets(widths, call_cost):
        t = max(widths[r] for r in bucket)
        # Right padding of the plain sequence: any real token (causal: no real query sees it).
        gather.append(torch.from_numpy(np.stack([np.concatenate([rows[r], np.full(t - len(rows[r]), pad_of_row[r], dtype=np.int64)]) for r in bucket])))
        base[bucket] = offset + t * np.arange(len(bucket), dtype=np.int64)
        offset += t * len(bucket)
    return tuple(gather), base


def _round_up(n: int) -> int:
    return -(-n // ATTENTION_WIDTH_MULTIPLE) * ATTENTION_WIDTH_MULTIPLE


# Attention over the gathered plain sequences --------------------------------------------------

ATTENTION_NAME = "kto_shared_prefix"
# Implementations whose attention, given no mask, is the causal one of a right-padded batch.
_CAUSAL_WITHOUT_MASK = ("sdpa", "flash_attention_2", "flash_attention_3", "flash_attention_4")


@dataclass(frozen=True)
class _Gather:
    """What the attention function needs besides q, k, v: the batch's indices and the attention
    the model was loaded with (called on the gathered plain sequences); `calls` counts the layers
    that called it in one forward (shared_prefix_attention checks them against the model's)."""

    gather_index: tuple[torch.Tensor, ...]
    scatter_index: torch.Tensor
    inner: str
    calls: list = field(default_factory=list)
    windows: set = field(default_factory=set)
    """The `sliding_window` keywords the layers passed (None for a layer without one)."""


def _gathered_attention(module, query, key, value, attention_mask, *, kto_gather: _Gather | None = None, **kwargs):
    """Attention of the packed rows, computed on each completion's plain sequence.

    query/key/value: [B, heads, W, D] in the packed layout (after the rotary embedding, which
    used the restarting position ids). Per bucket, gathered into [C_b, heads, T_b, D], one plain
    right-padded sequence per completion (its prompt's keys at 0..P-1, its own at P..), the
    model's own attention runs on them exactly as on a plain batch, and each packed row takes its
    output back. `attention_mask` is a placeholder (see `shared_prefix_attention`) and unused.
    """
    _check_call(module, attention_mask, kto_gather, kwargs)
    scatter = kto_gather.scatter_index.to(query.device)
    # The pack's position ids describe the packed row, not the gathered ones: a flash kernel
    # would read them as sequence boundaries. Each gathered row is one plain causal sequence.
    kwargs.pop("position_ids", None)
    outputs = []
    for index in kto_gather.gather_index:
        index = index.to(query.device)
        q, k, v = (_gather(x, index) for x in (query, key, value))
        out = _attention(module, q, k, v, kto_gather.inner, **kwargs)  # [C_b, T_b, heads, D]
        outputs.append(out.reshape(-1, out.shape[-2] * out.shape[-1]))
    heads, dim = out.shape[-2:]
    # index_select on a 2D view: several times faster on CPU than advanced indexing (aten::index).
    flat = (outputs[0] if len(outputs) == 1 else torch.cat(outputs)).index_select(0, scatter)
    return flat.view(query.shape[0], query.shape[2], heads, dim), None


def _check_call(module, attention_mask, gather: _Gather | None, kwargs: dict) -> None:
    """Refuse a layer whose attention packing cannot reproduce: one that does not pass the
    attention keywords through (Nemotron), or one that builds a mask of its own (Doge's dynamic
    mask), which the gathered rows would ignore. Counts the call for shared_prefix_attention."""
    name = type(module).__name__
    if gather is None:
        raise InputError(f"--prefix-sharing: {name} does not pass the attention keywords that packing needs; use --no-prefix-sharing")
    if attention_mask is not None and tuple(attention_mask.shape[-2:]) != (1, 1):  # the placeholder is [B, 1, 1, 1]
        raise InputError(f"--prefix-sharing: {name} builds an attention mask of its own, which packing would ignore; use --no-prefix-sharing")
    gather.calls.append(module)
    gather.windows.add(kwargs.get("sliding_window"))


def _attention(module, q, k, v, inner: str, **kwargs) -> torch.Tensor:
    """The model's own attention over right-padded causal rows [C, heads, T, D] -> [C, T, heads, D].

    A sliding-window layer (Mistral, Gemma 2/3, Qwen2's `use_sliding_window`…) gets its window
    from the model as the `sliding_window` keyword, which only the flash kernels read: transformers
    builds the window into the mask it passes sdpa and eager, and here there is no such mask. So
    rows wider than the window get the mask plain scoring would: causal, and a key at most
    window − 1 places behind its query (transformers' `sliding_window_overlay`)."""
    width, window = q.shape[2], kwargs.get("sliding_window")
    windowed = inner in ("eager", "sdpa") and window is not None and 0 < window < width  # flash_attention_* apply it themselves
    allowed = None
    if inner == "eager" or windowed:
        allowed = torch.ones(width, width, dtype=torch.bool, device=q.device).tril_()
        if windowed:
            allowed.triu_(1 - window)
    if inner == "eager":
        eager = sys.modules[type(module).__module__].eager_attention_forward
        mask = torch.zeros(width, width, dtype=q.dtype, device=q.device).masked_fill_(~allowed, torch.finfo(q.dtype).min)
        return eager(module, q, k, v, mask[None, None], **kwargs)[0]
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    # sdpa without a mask is the causal kernel of a right-padded batch; with one, the window's.
    return ALL_ATTENTION_FUNCTIONS[inner](module, q, k, v, None if allowed is None else allowed[None, None], **kwargs)[0]


def _gather(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """[B, h, W, D] -> [C, h, T, D], laid out in memory as [C, T, h, D] like the projections'
    output that attention sees in a plain forward."""
    b, h, w, d = x.shape
    flat = x.transpose(1, 2).reshape(b * w, h * d)  # a view: the projections' output is [B, W, h, D]
    return flat.index_select(0, index.reshape(-1)).view(*index.shape, h, d).transpose(1, 2)


# Kinds of a config's `layer_types` whose only token mixing is causal attention (sliding or not):
# any other (conv, mamba, linear_attention, chunked_attention…) would mix a pack's completions.
_ATTENTION_LAYERS = ("full_attention", "sliding_attention")


def packing_refusal(lm: torch.nn.Module) -> str | None:
    """Why `lm` cannot score packs, or None. Packing is exact only when every layer mixes tokens
    by attention alone, through transformers' attention interface, which it replaces: a model
    that calls its own attention (Bloom, Falcon, Jamba), a convolution over tokens (LFM2, Mamba
    and its hybrids, Qwen3-Next) or linear attention would let a pack's completions see each
    other, and its log-probs came out wrong without a word (by 5e-5 to 7.5e-3 per token on tiny
    random models, where plain scoring agrees to 0). Read from the model's class, config and modules, so a
    meta-device skeleton (meta_device.py model_skeleton) answers before any weight is read."""
    name = type(lm).__name__
    if not getattr(lm, "_supports_attention_backend", False):
        return f"{name} does not attend through transformers' attention interface (or has no attention), which packing replaces"
    config = lm.config.get_text_config()
    kinds = sorted(set(getattr(config, "layer_types", None) or ()) - set(_ATTENTION_LAYERS))
    if kinds:
        return f"{name} has {', '.join(map(str, kinds))} layers, which mix tokens outside causal attention"
    conv = next((m for m in lm.get_decoder().modules() if isinstance(m, torch.nn.modules.conv._ConvNd)), None)
    if conv is not None:
        return f"{name} convolves over tokens ({type(conv).__name__})"
    return None


def sharing_refusal(build: Callable[[], torch.nn.Module]) -> str | None:
    """packing_refusal of the model `build` makes (a meta-device skeleton), or why it could not be
    built for the check: a model that cannot be checked is not packed."""
    try:
        skeleton = build()
    except InputError as exc:
        return f"its layers could not be checked ({exc})"
    return packing_refusal(skeleton)


# Config keys of masks other than causal (+ a sliding window, which `_attention` builds): chunked
# attention (Llama 4) and bidirectional attention would need their own mask on the gathered rows.
_OTHER_MASKS = ("attention_chunk_size", "use_bidirectional_attention")


def _refuse_other_masks(configs) -> None:
    for c in configs:
        for key in _OTHER_MASKS:
            if getattr(c, key, None):
                raise InputError(f"--prefix-sharing does not build the mask of {type(c).__name__}'s {key} = {getattr(c, key)}; use --no-prefix-sharing")


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
    reason = packing_refusal(lm)
    if reason is not None:
        raise InputError(f"--prefix-sharing: {reason}; use --no-prefix-sharing")
    _refuse_other_masks(configs.values())
    from transformers import AttentionInterface
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    if ATTENTION_NAME not in ALL_ATTENTION_FUNCTIONS:
        AttentionInterface.register(ATTENTION_NAME, _gathered_attention)
    (name,) = inner
    for c in configs.values():
        c._attn_implementation = ATTENTION_NAME
    gather = _Gather(batch.gather_index, batch.scatter_index, name)
    try:
        placeholder = torch.zeros((batch.input_ids.shape[0], 1, 1, 1), device=batch.input_ids.device)
        yield {"attention_mask": placeholder, "kto_gather": gather}
    finally:
        for c in configs.values():
            c._attn_implementation = name
    _check_forward(lm, gather)


def _check_forward(lm: torch.nn.Module, gather: _Gather) -> None:
    """The last guard, after a packed forward, for what packing_refusal cannot see in a model:
    every layer attended through the gathered rows (a layer that mixes tokens some other way
    never calls them; a layer may call them more than once, as DiffLlama's do), and a window in
    the config reached attention (PhiMoE's layers do not pass theirs, which only the mask that
    packing replaces held)."""
    config = lm.config.get_text_config()
    layers, attended = config.num_hidden_layers, len({id(m) for m in gather.calls})
    if attended < layers:
        raise InputError(
            f"--prefix-sharing: {type(lm).__name__} attended through the packed layout in {attended} of its {layers} layers; "
            "the others would mix a pack's completions; use --no-prefix-sharing"
        )
    window, widest = getattr(config, "sliding_window", None), max(index.shape[-1] for index in gather.gather_index)
    # A window the config keeps but no layer uses (SmolLM3's use_sliding_window false, layer_types
    # without sliding_attention) is no window.
    unused = getattr(config, "use_sliding_window", True) is False or "sliding_attention" not in (getattr(config, "layer_types", None) or ["sliding_attention"])
    if isinstance(window, int) and 0 < window < widest and gather.windows == {None} and not unused:
        raise InputError(
            f"--prefix-sharing: {type(lm).__name__}'s config has sliding_window {window} but its layers do not pass it to attention; use --no-prefix-sharing"
        )
