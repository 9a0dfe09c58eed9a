"""Shared-prefix scoring: the packed layout by hand, and its log-probs against the plain path.

The plain path (one right-padded sequence per prompt + completion) is the definition; packing
only changes the work. Its per-token log-probs must match the plain path within 1e-5 in fp32,
and both must match a float64 forward of each sequence on its own.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import tiny_llama

from kto.formats.compute.logprob import CompletionLogps
from kto.formats.compute.scoring import plan_scoring, score_sequences
from kto.formats.compute.shared_prefix import group_by_prompt, make_packed_batch, plan_packs, worth_packing


def test_packed_batch_by_hand():
    """Prompt [5, 6] with completions [7, 8] and [9]: tokens 5 6 7 8 9 pad, positions 0 1 2 3 2 4.

    Token 7 (flat 2) and 9 (flat 4) are predicted from the last prompt token (flat 1), token 8
    from 7. Query 9 sees the prompt and itself, not 7 or 8; the pad sees its whole past.
    """
    b = make_packed_batch([[5, 6]], [[[7, 8], [9]]], pad_id=0)
    assert b.input_ids.tolist() == [[5, 6, 7, 8, 9]]
    assert b.position_ids.tolist() == [[0, 1, 2, 3, 2]] and b.segment.tolist() == [[0, 0, 1, 1, 2]]
    assert b.predict_from.tolist() == [1, 2, 1] and b.targets.tolist() == [7, 8, 9] and b.lengths == [2, 1]
    assert b.attention_allowed()[0].int().tolist() == [
        [1, 0, 0, 0, 0],
        [1, 1, 0, 0, 0],
        [1, 1, 1, 0, 0],
        [1, 1, 1, 1, 0],
        [1, 1, 0, 0, 1],
    ]
    two = make_packed_batch([[5, 6], [3]], [[[7, 8], [9]], [[4]]], pad_id=0)
    assert two.input_ids.tolist() == [[5, 6, 7, 8, 9], [3, 4, 0, 0, 0]]
    assert two.position_ids[1].tolist() == [0, 1, 2, 3, 4]
    assert two.predict_from.tolist() == [1, 2, 1, 5] and two.lengths == [2, 1, 1]
    assert two.attention_allowed()[1].int().tolist()[2] == [1, 1, 1, 0, 0]  # a pad sees its past: no empty row


def test_grouping_and_packs():
    prompts = [[1, 2], [3], [1, 2], [1, 2], [3, 4]]
    completions = [[7] * 3, [8], [9] * 4, [6] * 5, [5]]
    assert group_by_prompt(prompts) == [[0, 2, 3], [1], [4]]
    assert group_by_prompt([np.array([1, 2], np.int32), [1, 2], np.array([1, 2, 0])]) == [[0, 1], [2]]
    keys = [5, 1, 2, 3, 4]  # members of a pack follow key order
    packs, plain = plan_packs(prompts, completions, keys)
    assert [(p.members, p.prompt_length, p.length) for p in packs] == [((2, 3, 0), 2, 14)]
    assert plain == [1, 4]
    # A cap of 9 tokens: [2, 3] make 2 + 4 + 5 = 11 > 9, so 2 and 3 part; 3 + 0 = 2 + 5 + 3 = 10 > 9.
    packs, plain = plan_packs(prompts, completions, keys, max_tokens=9)
    assert packs == [] and plain == [2, 3, 0, 1, 4]
    packs, _ = plan_packs(prompts, completions, keys, max_tokens=11)
    assert [p.members for p in packs] == [(2, 3)]
    plan = plan_scoring(prompts, completions, keys, share_prefixes=True)
    assert plan.represented_tokens == 5 + 2 + 6 + 7 + 3 and plan.computed_tokens == 14 + 2 + 3
    # A 2-token prompt before two 1000-token completions: saves 2 tokens of dense work, costs
    # ρ · (2002² − ½ · 2 · 1002²) = 1.3e-3 · 3,004,000 ≈ 3905 in attention. Not packed; a
    # 1000-token prompt before two of 200 saves 1000 for 1.3e-3 · (1400² − 1200²) = 676.
    assert not worth_packing(2, [1000, 1000]) and worth_packing(1000, [200, 200])
    packs, plain = plan_packs([[1, 2]] * 2, [[7] * 1000, [8] * 1000], [0, 1], max_tokens=4096)
    assert packs == [] and plain == [0, 1]
    off = plan_scoring(prompts, completions, keys, share_prefixes=False)
    assert off.computed_tokens == off.represented_tokens == 23 and off.packs == []


def tiny_lm(attn: str):
    return _set_attn(tiny_llama(97, max_position_embeddings=512).eval(), attn)


def _set_attn(lm, attn):
    lm.config._attn_implementation = attn
    return lm


def sequences(seed=0):
    """Rows with main and KL completions; two prompts repeat (a paired dataset), lengths vary."""
    g = torch.Generator().manual_seed(seed)
    ids = lambda n: torch.randint(3, 97, (n,), generator=g).tolist()  # noqa: E731
    shared = ids(23)
    prompts = [shared, ids(7), shared, ids(40), ids(1), shared]
    completions = [ids(n) for n in (5, 9, 1, 17, 4, 12)]
    kl = [ids(n) for n in (8, 3, 11, 2, 6, 1)]
    keys = [(i, 0) for i in range(6)] + [(i, 1) for i in range(6)]
    return prompts * 2, completions + kl, keys


def float64_reference(lm, prompts, completions):
    lm64 = _set_attn(type(lm)(lm.config).double().eval(), "eager")
    lm64.load_state_dict({k: v.double() for k, v in lm.state_dict().items()})
    out = []
    with torch.no_grad():
        for p, c in zip(prompts, completions):
            ids = torch.tensor([list(p) + list(c)])
            logp = torch.log_softmax(lm64(ids).logits[0, :-1], -1)
            out.append(logp[len(p) - 1 :].gather(1, ids[0, len(p) :, None])[:, 0].numpy())
    return out


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("budget", [64, 4096])
def test_shared_prefix_matches_plain_and_float64(attn, budget):
    lm = tiny_lm(attn)
    scorer = CompletionLogps(lm, chunk_size=16)
    prompts, completions, keys = sequences()
    kw = dict(batch_tokens=budget, pad_id=0, device=torch.device("cpu"))
    plan = plan_scoring(prompts, completions, keys, share_prefixes=True)
    assert sorted(len(p.members) for p in plan.packs) == [2, 2, 2, 6] and plan.computed_tokens < plan.represented_tokens
    shared = score_sequences(scorer, prompts, completions, keys, share_prefixes=True, **kw)
    plain = score_sequences(scorer, prompts, completions, keys, share_prefixes=False, **kw)
    truth = float64_reference(lm, prompts, completions)
    for k, (a, b, t) in enumerate(zip(shared.token_logps, plain.token_logps, truth)):
        assert a.dtype == np.float32 and a.shape == (len(completions[k]),)
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=0)
        np.testing.assert_allclose(a, t, atol=1e-5, rtol=0)
        assert shared.sums[k] == pytest.approx(t.sum(), abs=1e-4)
    np.testing.assert_allclose(shared.sums, plain.sums, atol=1e-4, rtol=0)


def test_boolean_mask_would_be_wrong_under_eager():
    """Why the mask is additive: eager attention adds the mask to the scores, so True/False
    would add 1/0 instead of blocking siblings. Guard the reason in the module docstring."""
    lm = tiny_lm("eager")
    b = make_packed_batch([[5, 6, 7]], [[[8, 9], [10, 11]]], pad_id=0)
    dec = lm.get_decoder()
    with torch.no_grad():
        bool_mask = dec(input_ids=b.input_ids, position_ids=b.position_ids, attention_mask=b.attention_allowed()[:, None]).last_hidden_state
        additive = torch.zeros(b.attention_allowed().shape).masked_fill_(~b.attention_allowed(), torch.finfo(torch.float32).min)[:, None]
        good = dec(input_ids=b.input_ids, position_ids=b.position_ids, attention_mask=additive).last_hidden_state
        alone = dec(input_ids=torch.tensor([[5, 6, 7, 10, 11]])).last_hidden_state
    torch.testing.assert_close(good[0, 5:], alone[0, 3:], atol=1e-5, rtol=0)
    assert (bool_mask[0, 5:] - alone[0, 3:]).abs().max() > 1e-2
