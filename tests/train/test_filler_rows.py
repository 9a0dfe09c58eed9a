"""Filler rows (index -1: copies of a real row that pad an epoch's short last step) contribute
nothing: not to the KTO loss, the SFT term, the gradient, nor any logged sum or count.

A step [[a, b], [c, c', filler]] is compared with the same step without the filler slot, and
with a filler slot that copies another row. The model runs in float64, so the only differences
are float64 roundings of batches of other shapes (bounded below); a filler leaking into any sum
moves it by orders of magnitude more. c and c' share a prompt, so with prefix sharing the
second micro-batch packs them and runs the filler alone beside the pack.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from conftest import OneProcess, make_tiny_llama

# float64 forwards of batches of other shapes: sums of a few hundred terms of size ≲ 10 round
# differently by ~1e-14 relative; 1e-9 leaves room and is far below any filler's contribution.
REL = 1e-9

# Token counts and row counts are integers counted on the host: equal exactly. The padded slots
# of the policy pass are the one thing a filler row may change (it runs, as padding).
EXACT = ("examples", "desirable", "undesirable", "sft_tokens", "tokens", "kl_scopes", "steps")
EXACT += ("policy_real_tokens", "kl_real_tokens", "kl_padded_tokens", "saved_tokens")
MAY_DIFFER = ("policy_padded_tokens",)


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_cache, tokenizer_dir):
    """The tiny cache, a float64 policy unlike the reference (rewards, z and the NLL are not 0),
    and rows: a desirable and an undesirable row of one prompt (c, c'), and two other rows."""
    import numpy as np

    from kto.formats import schema as S
    from kto.formats.cache import open_cache
    from kto.formats.compute.loading import load_causal_lm
    from kto.formats.compute.logprob import CompletionLogps
    from kto.formats.compute.sources import resolve_source

    cache = open_cache(tiny_cache)
    policy = make_tiny_llama(tmp_path_factory.mktemp("filler-policy"), tokenizer_dir, seed=1)
    model = CompletionLogps(load_causal_lm(resolve_source(str(policy)), dtype=torch.float64).eval())
    cols = cache.rows(np.arange(cache.num_rows), (S.PROMPT_IDS, S.LABEL))
    prompts = [np.asarray(p).tobytes() for p in cols[S.PROMPT_IDS].to_list()]
    labels = [bool(x) for x in np.asarray(cols[S.LABEL])]
    groups: dict[bytes, list[int]] = {}
    for i, p in enumerate(prompts):
        groups.setdefault(p, []).append(i)
    pairs = [g for g in groups.values() if len(g) == 2 and labels[g[0]] != labels[g[1]]]
    assert len(pairs) >= 3
    # (desirable, undesirable) of each prompt; c desirable, first: a filler slot copies it.
    (a, u), (_, b), (c, c_) = [tuple(sorted(g, key=lambda i: not labels[i])) for g in pairs[:3]]
    return cache, model, (a, b, c, c_, u), labels


def collate(cache, rows, invalid=()):
    """The micro-batch of `rows` (-1: filler), with the slots in `invalid` made filler too (a
    filler copying that row instead of the micro-batch's first real row)."""
    import numpy as np

    from kto.train.data import collate_micro_batch

    b = collate_micro_batch(cache, np.array(rows), pad_id=0)
    if not invalid:
        return b
    valid = b.valid.clone()
    valid[list(invalid)] = False
    return dataclasses.replace(b, valid=valid)


def run_step(model, batches, share: bool, scope: str):
    from kto.train.loss import LossType
    from kto.train.step import LossSettings, forward_backward

    model.zero_grad(set_to_none=True)
    settings = LossSettings(0.1, 1.3, 0.7, LossType.KTO, 1.0, scope, kl_prefix_sharing=share, policy_prefix_sharing=share)
    stats = forward_backward(model, batches, settings, OneProcess())
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    return stats, grads


def assert_same_step(expected, got):
    (s0, g0), (s1, g1) = expected, got
    for field in s0._fields:
        if field in MAY_DIFFER:
            continue
        a, b = float(getattr(s0, field)), float(getattr(s1, field))
        if field in EXACT:
            assert a == b, (field, a, b)
        else:
            assert abs(a - b) <= REL * max(abs(a), 1e-3), (field, a, b)
    assert g0.keys() == g1.keys() and len(g0) > 5
    for name, g in g0.items():
        ref = float(torch.linalg.vector_norm(g))
        assert ref > 0, name
        diff = float(torch.linalg.vector_norm(g1[name] - g))
        assert diff <= REL * ref, f"{name}: |Δg| / |g| = {diff / ref:.2e}"


@pytest.mark.parametrize("scope", ["step", "microbatch"])
@pytest.mark.parametrize("share", [False, True])
def test_a_filler_row_changes_no_gradient_and_no_logged_sum(setup, share, scope):
    """[[a, b], [c, c', filler]] (the filler copies c, desirable, so it would add to the KTO
    loss, the SFT NLL and its token count, and rewards/chosen) against [[a, b], [c, c']]:
    every parameter's gradient and every StepStats field but the policy's padded slots agree."""
    cache, model, (a, b, c, c_, _), labels = setup
    assert labels[a] and not labels[b] and labels[c] and not labels[c_]
    without = run_step(model, [collate(cache, [a, b]), collate(cache, [c, c_])], share, scope)
    with_filler = run_step(model, [collate(cache, [a, b]), collate(cache, [c, c_, -1])], share, scope)
    stats = with_filler[0]
    assert float(stats.examples) == 4 and float(stats.desirable) == 2 and float(stats.sft_tokens) > 0
    assert float(stats.reward_d_sum) != 0 and float(stats.sft_nll_sum) > 0 and float(stats.kl_raw_sum) != 0
    # With sharing, the second micro-batch packs c and c' and runs the filler alone beside them.
    assert (float(stats.saved_tokens) > 0) == share
    assert float(stats.policy_padded_tokens) > float(without[0].policy_padded_tokens)
    assert_same_step(without, with_filler)


@pytest.mark.parametrize("share", [False, True])
def test_which_row_a_filler_copies_changes_nothing(setup, share):
    """The filler slot copying c (desirable, the collate's choice) or u (undesirable, another
    prompt): the same step."""
    cache, model, (a, b, c, c_, u), labels = setup
    assert not labels[u]
    first = run_step(model, [collate(cache, [a, b]), collate(cache, [c, c_, -1])], share, "step")
    other = run_step(model, [collate(cache, [a, b]), collate(cache, [c, c_, u], invalid=[2])], share, "step")
    assert_same_step(first, other)


def test_a_micro_batch_ending_in_filler_logs_the_real_rows_rewards():
    """Hand-worked batch_stats: rows r = [0.5, 2.0 (filler copying row 0's label), -1.0] with
    labels [True, True, False]: rewards/chosen sums 0.5 only, rewards/rejected -1.0."""
    from kto.formats.compute.logprob import TokenBatch
    from kto.formats.schema import LABEL, REF_KL_LOGP, REF_LOGP
    from kto.train.data import KTOMicroBatch
    from kto.train.loss import KTOLossOutput
    from kto.train.step import batch_stats

    ids = torch.tensor([[1, 2, 3], [1, 2, 3], [1, 4, 0]])
    attn = torch.tensor([[1, 1, 1], [1, 1, 1], [1, 1, 0]])
    score = torch.tensor([[0, 1, 1], [0, 1, 1], [0, 1, 0]], dtype=torch.bool)
    tb = TokenBatch(ids, attn, score)
    columns = {LABEL: torch.tensor([True, True, False]), REF_LOGP: torch.zeros(3, dtype=torch.float64), REF_KL_LOGP: torch.zeros(3, dtype=torch.float64)}
    b = KTOMicroBatch(tb, tb, columns, torch.tensor([True, False, True]))
    f64 = lambda *x: torch.tensor(x, dtype=torch.float64)
    out = KTOLossOutput(losses=f64(0.1, 0.2, 0.3), rewards=f64(0.5, 2.0, -1.0))
    stats = batch_stats(b, out, f64(-3.0, -4.0, -5.0), f64(0.0)[0], None, first=True)
    assert float(stats.reward_d_sum) == 0.5 and float(stats.reward_u_sum) == -1.0
    assert float(stats.logp_d_sum) == -3.0 and float(stats.logp_u_sum) == -5.0
    assert float(stats.loss_sum) == pytest.approx(0.4, abs=1e-15) and float(stats.sft_tokens) == 2


def test_a_packed_layout_counts_a_filler_row_as_padding_not_as_real_tokens():
    """Three rows of the prompt [1, 2], the third a filler: the first two pack (prompt once, then
    [5, 6] and [7]: 5 tokens), the filler runs alone (prompt and [8]: 3 tokens), 8 computed.
    Real: the 5 of the pack; saved: represented 4 + 3 + 3 = 10 less the 8 computed."""
    from kto.train.packing import shared_layout

    layout = shared_layout([[1, 2], [1, 2], [1, 2]], [[5, 6], [7], [8]], [True, True, False])
    assert layout is not None
    assert (layout.tokens.real, layout.tokens.saved) == (5, 2)
    # The pack, then the filler's unit, back to back in one unpadded row; rows already in order.
    assert layout.batch.input_ids.tolist() == [[1, 2, 5, 6, 7, 1, 2, 8]] and layout.tokens.slots == 8
    assert layout.to_rows.tolist() == [0, 1, 2, 3]
