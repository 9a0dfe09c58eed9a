"""Prefix sharing in kto-train's two passes: sequences of a step that share a prompt run it once.

The layout is kto-precompute's (formats/compute/shared_prefix.py): the dense layers run on
packs (a prompt, then each of its completions back to back, positions restarting after the
prompt), attention runs on each completion's plain sequence gathered from the pack, and every
gather and scatter is an index op, so autograd carries the gradient back through them: a
prompt's keys and values receive the gradient of every completion that attends to them, its
query only that of the completion whose row its output is taken from (the others' are
discarded, as their outputs are). Which groups pack is `plan_packs`'s rule, the one
kto-precompute applies, so both phases share the same groups.

A packed forward returns the completions' log-probs pack by pack; `SharedLayout.to_rows`
reorders them into the row-major order of the plain batch, so everything downstream (sums per
row, the SFT mask, the step-0 check) reads them as it reads a plain forward's.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from kto.formats.compute.logprob import TokenBatch
from kto.formats.compute.shared_prefix import PackedBatch, bucket_call_cost, make_packed_batch, plan_packs

# Token id of the packs' right padding: never attended by a real token (causal, after every real
# token of its row) nor scored, as in the plain batches.
PAD_ID = 0


@dataclass(frozen=True)
class PassTokens:
    """What one forward computed, for the padding/* and tokens/saved metrics.

    real:  tokens of valid rows run through the model (a shared prompt counted once)
    slots: token slots run, padding and filler rows included (rows × width)
    saved: tokens that the plain layout would have run and sharing did not
    """

    real: int
    slots: int
    saved: int


@dataclass(frozen=True)
class SharedLayout:
    """A batch's sequences laid out for a packed forward.

    batch:   the packed batch (packs of ≥ 2 completions, and packs of one for the rest)
    to_rows: [N] int64 index into the packed forward's flat log-probs that puts them in the
             row-major order of the sequences given (completion after completion)
    tokens:  what the forward computes
    """

    batch: PackedBatch
    to_rows: torch.Tensor
    tokens: PassTokens


def split_sequences(input_ids: torch.Tensor, score_mask: torch.Tensor) -> tuple[list[list[int]], list[list[int]]]:
    """Right-padded [B, T] prompt+completion rows -> (prompt ids, completion ids) per row.

    The completion is the scored run of each row (make_token_batch: prompt first, then the
    completion, then padding), so the prompt is everything before it. kto-train gives it the
    CPU copies: on an accelerator, `.cpu()` would wait for every queued kernel first."""
    ids, score = input_ids.cpu(), score_mask.cpu()
    n_completion = score.sum(1).tolist()
    n_prompt = (score.long().cumsum(1) == 0).sum(1).tolist()  # tokens before the first scored one
    rows = ids.tolist()
    prompts = [row[:p] for row, p in zip(rows, n_prompt)]
    completions = [row[p : p + c] for row, p, c in zip(rows, n_prompt, n_completion)]
    return prompts, completions


def shared_layout(prompts: list[list[int]], completions: list[list[int]], shareable: list[bool], device_type: str = "cpu") -> SharedLayout | None:
    """The packed layout of these sequences, or None when no group of them pays off (then the
    plain forward runs, unchanged). Only `shareable` sequences (a batch's valid rows) may join a
    pack; the others run alone, as filler, counted as padding. `device_type`: where the forward
    runs (how its attention rows are bucketed, shared_prefix.bucket_call_cost)."""
    candidates = [i for i, ok in enumerate(shareable) if ok]
    packs, _ = plan_packs([prompts[i] for i in candidates], [completions[i] for i in candidates], candidates)
    if not packs:
        return None
    packed = {candidates[m] for p in packs for m in p.members}
    units = [[candidates[m] for m in p.members] for p in packs] + [[i] for i in range(len(prompts)) if i not in packed]
    batch = make_packed_batch([prompts[u[0]] for u in units], [[completions[i] for i in u] for u in units], PAD_ID, call_cost=bucket_call_cost(device_type))
    order = [i for u in units for i in u]
    start = dict(zip(order, torch.tensor([0, *batch.lengths]).cumsum(0).tolist()))
    to_rows = torch.cat([torch.arange(start[i], start[i] + len(completions[i])) for i in range(len(prompts))])
    computed = sum(len(prompts[u[0]]) + sum(len(completions[i]) for i in u) for u in units)
    represented = sum(len(p) + len(c) for p, c in zip(prompts, completions))
    filler = sum(len(prompts[i]) + len(completions[i]) for i, ok in enumerate(shareable) if not ok)
    tokens = PassTokens(real=computed - filler, slots=batch.input_ids.numel(), saved=represented - computed)
    return SharedLayout(batch, to_rows.to(torch.long), tokens)


def plain_tokens(batch: TokenBatch, valid: torch.Tensor) -> PassTokens:
    """A plain forward's accounting: the valid rows' tokens in the slots of the batch as given
    (before CompletionLogps pads its width to a multiple; the metric has always counted so).
    Give it the CPU copies: it reads the count back."""
    real = int((batch.attention_mask.sum(1) * valid).sum())
    return PassTokens(real=real, slots=batch.input_ids.numel(), saved=0)


def completion_logps(
    model: torch.nn.Module, batch: TokenBatch, valid: torch.Tensor, share: bool, host: TokenBatch | None = None
) -> tuple[torch.Tensor, PassTokens]:
    """Flat [N] completion log-probs of `batch`'s rows (row-major over its score_mask, as the
    plain forward gives them), with or without autograd as the caller runs it; and what ran.

    `batch` lies where the forward runs; `host` is its CPU copy (None: `batch` is on the CPU)
    and `valid` lies beside it. The layout is planned from them, so that planning reads nothing
    back from an accelerator. One forward through `model` (the wrapper DDP or FSDP hooks into)
    either way, so every rank runs as many forwards whatever its data packs into."""
    host = batch if host is None else host
    layout = shared_layout(*split_sequences(host.input_ids, host.score_mask), valid.tolist(), batch.input_ids.device.type) if share else None
    if layout is None:
        # The count from the CPU copy: the forward then finds the scored positions without a wait.
        return model(batch.input_ids, batch.score_mask, scored=int(host.score_mask[:, 1:].sum())), plain_tokens(host, valid)
    flat = model(layout.batch)
    return flat[layout.to_rows.to(flat.device, non_blocking=True)], layout.tokens
