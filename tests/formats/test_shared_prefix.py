"""Shared-prefix scoring: the packed layout by hand, and its log-probs against the plain path.

The plain path (one right-padded sequence per prompt + completion) is the definition; packing
only changes the work. Its per-token log-probs must match the plain path to fp32 rounding
(tests/numerics_bounds.py: the batch shapes differ, so the kernels' summation order may), and
both must match a float64 forward of each sequence on its own within 1e-5.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import tiny_llama
from numerics_bounds import assert_sums_agree, assert_tokens_agree, scale_of, token_bound

from kto.formats.compute.logprob import CompletionLogps, make_token_batch
from kto.formats.compute.scoring import plan_scoring, score_sequences
from kto.formats.compute.shared_prefix import attention_buckets, bucket_call_cost, group_by_prompt, make_packed_batch, plan_packs, worth_packing
from kto.formats.errors import InputError


def test_packed_batch_by_hand():
    """Prompt [5, 6] with completions [7, 8] and [9]: tokens 5 6 7 8 9, positions 0 1 2 3 2.

    Token 7 (flat 2) and 9 (flat 4) are predicted from the last prompt token (flat 1), token 8
    from 7. Attention runs on the plain sequences 5 6 7 8 and 5 6 9, gathered from the pack and
    padded to 16 with a real token (flat 0); each packed token takes its output back from its
    place there: the prompt from the first completion's row.
    """
    b = make_packed_batch([[5, 6]], [[[7, 8], [9]]], pad_id=0)
    assert b.input_ids.tolist() == [[5, 6, 7, 8, 9]]
    assert b.position_ids.tolist() == [[0, 1, 2, 3, 2]]
    assert b.predict_from.tolist() == [1, 2, 1] and b.targets.tolist() == [7, 8, 9] and b.lengths == [2, 1]
    (rows,) = b.gather_index  # one bucket: both plain sequences are 16 wide once padded
    assert rows.tolist() == [[0, 1, 2, 3] + [0] * 12, [0, 1, 4] + [0] * 13]
    assert b.scatter_index.tolist() == [0, 1, 2, 3, 16 + 2]
    two = make_packed_batch([[5, 6], [3]], [[[7, 8], [9]], [[4]]], pad_id=0)
    # Packs lie back to back in one row with no padding: the dense layers never pay for the
    # widest pack (issue 21); only the gathered plain sequences are padded, to 16.
    assert two.input_ids.tolist() == [[5, 6, 7, 8, 9, 3, 4]]
    assert two.position_ids.tolist() == [[0, 1, 2, 3, 2, 0, 1]]
    assert two.predict_from.tolist() == [1, 2, 1, 5] and two.lengths == [2, 1, 1]
    # The second pack starts at flat 5; its one completion is the third gathered row (flat 32 on).
    (rows,) = two.gather_index
    assert rows[2].tolist() == [5, 6] + [5] * 14
    assert two.scatter_index.tolist()[5:7] == [32, 33]
    # The ids at the gathered places are the plain sequences.
    flat = two.input_ids.reshape(-1)
    assert flat[rows[0, :4]].tolist() == [5, 6, 7, 8] and flat[rows[1, :3]].tolist() == [5, 6, 9]
    assert flat[rows[2, :2]].tolist() == [3, 4]


def test_attention_buckets_by_hand():
    """Gathered rows are bucketed by their own padded width, at the least Σ (rows · T² + call).

    Rows of 16, 16, 16, 896, 896 and four of 448: one call pays 9 · 896² = 7.2 M (rows · T² units);
    three calls pay 3 · 16² + 4 · 448² + 2 · 896² + 3 · 64² = 2.42 M. Widths 432 and 448 split
    (448² − 432² = 14,080 units saved, more than one call's 4,096); 432 and 436 would not."""
    assert attention_buckets([16, 16, 16, 896, 896, 448, 448, 448, 448]) == [[0, 1, 2], [5, 6, 7, 8], [3, 4]]
    assert attention_buckets([448, 432]) == [[1], [0]]
    assert attention_buckets([448, 432], call_cost=20_000) == [[1, 0]]
    assert attention_buckets([436, 432]) == [[1, 0]]
    assert attention_buckets([]) == []
    assert attention_buckets([48, 16]) == [[1, 0]]  # 2 · 48² + 64² = 8,704 < 48² + 16² + 2 · 64² = 10,752
    # Equal widths stay together (ties in row order), whatever their number.
    assert attention_buckets([32, 64, 32] * 300) == [[i for i in range(900) if i % 3 != 1], list(range(1, 900, 3))]
    # On a GPU a call's launches cost more than padding: rows of 16 and 448 share one call there
    # (5 · 448² + 2048² = 5.2 M against 3 · 16² + 2 · 448² + 2 · 2048² = 8.8 M), not on CPU.
    assert bucket_call_cost("cpu") == 64 * 64 and bucket_call_cost("cuda") == 2048 * 2048
    assert attention_buckets([16, 448, 16, 448, 16], bucket_call_cost("cuda")) == [[0, 2, 4, 1, 3]]
    assert attention_buckets([16, 448, 16, 448, 16], bucket_call_cost("cpu")) == [[0, 2, 4], [1, 3]]
    with pytest.raises(ValueError, match="at least one completion"):
        make_packed_batch([[5, 6], [7]], [[[8]], []])
    # A pack whose completions differ in length: the long one gets its own, wider bucket.
    # Widths 208 and 16: one call 2 · 208² + 64² = 90,624 units, two calls 208² + 16² + 2 · 64² = 51,712.
    b = make_packed_batch([[5, 6]], [[[7] * 200, [9]]], pad_id=0)
    short, long = b.gather_index
    assert short.tolist() == [[0, 1, 202] + [0] * 13] and long.shape == (1, 208)
    assert long[0, :202].tolist() == list(range(202)) and long[0, 202:].tolist() == [0] * 6
    # Outputs lie bucket after bucket: the short row at 0..15, the long one from 16. The prompt
    # and the first completion come from the long row (the pack's first), token 9 from the short.
    assert b.scatter_index.tolist() == [16 + t for t in range(202)] + [2]


def test_grouping_and_packs():
    prompts = [[1, 2], [3], [1, 2], [1, 2], [3, 4]]
    completions = [[7] * 3, [8], [9] * 4, [6] * 5, [5]]
    assert group_by_prompt(prompts) == [[0, 2, 3], [1], [4]]
    assert group_by_prompt([np.array([1, 2], np.int32), [1, 2], np.array([1, 2, 0])]) == [[0, 1], [2]]
    keys = [5, 1, 2, 3, 4]  # members of a pack follow key order
    packs, plain = plan_packs(prompts, completions, keys)
    assert [(p.members, p.prompt_length, p.length, p.width) for p in packs] == [((2, 3, 0), 2, 14, 7)]
    assert plain == [1, 4]
    # The cap counts gathered tokens, members × (P + longest completion): [2, 3] gather
    # 2 · (2 + 5) = 14, [2, 3, 0] 3 · 7 = 21. A cap of 13 parts 2 and 3 (and 3 and 0), one of 14 keeps [2, 3].
    packs, plain = plan_packs(prompts, completions, keys, max_tokens=13)
    assert packs == [] and plain == [2, 3, 0, 1, 4]
    packs, _ = plan_packs(prompts, completions, keys, max_tokens=14)
    assert [p.members for p in packs] == [(2, 3)]
    plan = plan_scoring(prompts, completions, keys, share_prefixes=True)
    assert plan.represented_tokens == 5 + 2 + 6 + 7 + 3 and plan.computed_tokens == 14 + 2 + 3
    # The rule: (k − 1) · P saved against GATHER_COST · Σ (P + c_i) of copying. A 2-token prompt
    # before two 1000-token completions saves 2 tokens against 0.05 · 2004 = 100: plain. A
    # 1000-token prompt before two of 200 saves 1000 against 0.05 · 2400 = 120: packed.
    assert not worth_packing(2, [1000, 1000], gather_cost=0.05) and worth_packing(1000, [200, 200], gather_cost=0.05)
    packs, plain = plan_packs([[1, 2]] * 2, [[7] * 1000, [8] * 1000], [0, 1], max_tokens=4096)
    assert packs == [] and plain == [0, 1]
    # Issue 21's nearest miss on real pairs: P = 482 before four completions of 239-434 tokens
    # saves 3 · 482 = 1446. The W² rule of issue 13 charged 1.3e-3 · (W² − ½ Σ (P + c_i)²) = 2151
    # for it; the gathered layout charges 0.05 · 3279 = 164 (default constant): packed.
    assert worth_packing(482, [239, 300, 400, 434])
    off = plan_scoring(prompts, completions, keys, share_prefixes=False)
    assert off.computed_tokens == off.represented_tokens == 23 and off.packs == []


def test_rule_leaves_plain_a_group_that_saves_less_than_its_copies_cost():
    """The gather copies measured γ ≈ 0.036 dense tokens per gathered token inside a real
    SmolLM2 scoring run (worth_packing's docstring), so a group that saves less than that is
    slower packed than plain. P = 60 before two completions of 600 saves 60 tokens of the
    1320 it represents (4.5 %): the rule charges 0.05 · 1320 = 66 > 60, plain (the constant
    0.02 charged 26.4 and packed it). P = 80 saves 80 > 0.05 · 1360 = 68: packed."""
    assert not worth_packing(60, [600, 600])
    packs, plain = plan_packs([[1] * 60] * 2, [[7] * 600, [8] * 600], [0, 1])
    assert packs == [] and plain == [0, 1]
    assert worth_packing(80, [600, 600])


def tiny_lm(attn: str):
    return _set_attn(tiny_llama(97, max_position_embeddings=512).eval(), attn)


def _set_attn(lm, attn):
    lm.config._attn_implementation = attn
    return lm


def sequences(seed=0):
    """Rows with main and KL completions; two prompts repeat (a paired dataset), lengths vary."""
    g = torch.Generator().manual_seed(seed)
    ids = lambda n: torch.randint(3, 97, (n,), generator=g).tolist()
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


@pytest.mark.numerics
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
    assert_tokens_agree(shared.token_logps, plain.token_logps, what=f"shared vs plain ({attn}, budget {budget})")
    assert_sums_agree(shared.sums, plain.sums, plain.token_logps)
    for k, (a, t) in enumerate(zip(shared.token_logps, truth)):
        assert a.dtype == np.float32 and a.shape == (len(completions[k]),)
        np.testing.assert_allclose(a, t, atol=1e-5, rtol=0)  # fp32 against float64: not a rounding-order bound
        assert shared.sums[k] == pytest.approx(t.sum(), abs=1e-4)


def smollm2_shaped_case():
    """SmolLM2's head size (64) and GQA (9/3 heads), 2 layers; 4 prompts with 2-4 completions
    each, lengths straddling 16 so that the pack widths differ from every plain width."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=97, hidden_size=576, intermediate_size=64, num_hidden_layers=2, num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=512
    )
    torch.manual_seed(0)
    lm = _set_attn(LlamaForCausalLM(config).eval(), "sdpa")
    g = torch.Generator().manual_seed(1)
    ids = lambda n: torch.randint(3, 97, (n,), generator=g).tolist()
    prompts, completions = [], []
    for p, ns in ((40, (17, 30, 5)), (13, (3, 70)), (100, (33, 61, 20, 9)), (7, (1, 2))):
        shared = ids(p)
        prompts += [shared] * len(ns)
        completions += [ids(n) for n in ns]
    return lm, prompts, completions


@pytest.mark.numerics
def test_shared_prefix_agrees_with_plain_to_fp32_rounding():
    """The shared path computes what the plain one does on other shapes: the dense layers see
    the same rows within other batches, attention the same plain sequences padded to the same
    multiple of 16 (numerics.ATTENTION_WIDTH_MULTIPLE). How the kernels split their sums still
    depends on the CPU's vector width: equal bits on the AVX-512 Xeon, 9.5e-7 = 2 ulps of the
    largest |log p| apart there under forced AVX2, 1 ulp on an AVX2 EPYC (issue 18). So per token
    within numerics_bounds.token_bound, and each sum within the sum of its tokens' bounds; plain
    batches of two widths agree the same way."""
    lm, prompts, completions = smollm2_shaped_case()
    scorer = CompletionLogps(lm)
    keys = list(range(len(prompts)))
    kw = dict(pad_id=0, device=torch.device("cpu"), batch_tokens=4096)
    assert len(plan_scoring(prompts, completions, keys, share_prefixes=True).packs) == 4
    shared = score_sequences(scorer, prompts, completions, keys, share_prefixes=True, **kw)
    for budget in (4096, 128):  # other plain batches: other widths
        plain = score_sequences(scorer, prompts, completions, keys, share_prefixes=False, **{**kw, "batch_tokens": budget})
        assert_tokens_agree(shared.token_logps, plain.token_logps, what=f"shared vs plain (budget {budget})")
        assert_sums_agree(shared.sums, plain.sums, plain.token_logps)


def test_the_rounding_bound_catches_a_mask_off_by_one():
    """The bound is not loose enough to hide a real bug: a completion mask one token early
    (the last prompt token scored, the last completion token not) moves log-probs by far more."""
    lm, prompts, completions = smollm2_shaped_case()
    scorer = CompletionLogps(lm)
    ids = torch.tensor([prompts[0] + completions[0]])
    mask = torch.zeros_like(ids, dtype=torch.bool)
    mask[0, len(prompts[0]) :] = True
    with torch.no_grad():
        right, early = scorer(ids, mask), scorer(ids, mask.roll(-1, dims=1))
    worst = float((right - early).abs().max())
    bound = token_bound(scale_of([right.numpy()]))
    print(f"mask one token early: max |Δ| per token {worst:.2e}, bound {bound:.2e}")
    assert worst > 1e-2 > 100 * bound, (worst, bound)
    with pytest.raises(AssertionError, match="ulp"):
        assert_tokens_agree([right.numpy()], [early.numpy()])


def test_unsupported_attention_is_refused():
    lm = tiny_lm("flex_attention")
    b = make_packed_batch([[5, 6, 7]], [[[8, 9], [10, 11]]], pad_id=0)
    with pytest.raises(InputError, match="--no-prefix-sharing"):
        CompletionLogps(lm).forward_packed(b)
    assert lm.config._attn_implementation == "flex_attention"


def real_shaped_case():
    """SmolLM2's widths (hidden 576, MLP 1536, 9/3 heads of 64), 2 layers, 4096 tokens; the
    shapes of real chat rows (../shared/data: prompts median 156, up to 2,772; completions 3-928):
    a pair's four sequences behind a 482-token prompt (issue 21's nearest miss), and prompts of
    156 and 90 tokens before completions of 33-900. Sequences over 384 and over 512 tokens, where
    the CPU flash kernel changes its query and key block sizes."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=4096,
        hidden_size=576,
        intermediate_size=1536,
        num_hidden_layers=2,
        num_attention_heads=9,
        num_key_value_heads=3,
        max_position_embeddings=2048,
    )
    torch.manual_seed(0)
    lm = _set_attn(LlamaForCausalLM(config).eval(), "sdpa")
    g = torch.Generator().manual_seed(1)
    ids = lambda n: torch.randint(3, 4096, (n,), generator=g).tolist()
    prompts, completions = [], []
    for p, ns in ((482, (239, 300, 400, 434)), (156, (274, 900)), (90, (700, 33))):
        shared = ids(p)
        prompts += [shared] * len(ns)
        completions += [ids(n) for n in ns]
    return lm, prompts, completions


@pytest.mark.numerics
def test_shared_prefix_on_real_shaped_rows_within_1e5():
    """Issue 21: long prompts, several completions, sequences up to 1,056 tokens. Shared vs plain
    within 1e-5 per token (and the rounding bound), sums within their tokens' bounds; every group
    is packed. Measured: 2.9e-06 (3 ulps of |log p| ≈ 12.8) on AVX-512 for SmolLM2's vocabulary,
    where plain scoring at two batch widths differs by as much (docs/design.md)."""
    lm, prompts, completions = real_shaped_case()
    scorer = CompletionLogps(lm)
    keys = list(range(len(prompts)))
    kw = dict(pad_id=0, device=torch.device("cpu"), batch_tokens=4096)
    plan = plan_scoring(prompts, completions, keys, share_prefixes=True)
    assert sorted(len(p.members) for p in plan.packs) == [2, 2, 4] and plan.plain == []
    shared = score_sequences(scorer, prompts, completions, keys, share_prefixes=True, **kw)
    plain = score_sequences(scorer, prompts, completions, keys, share_prefixes=False, **kw)
    worst = assert_tokens_agree(shared.token_logps, plain.token_logps, what="shared vs plain, real-shaped rows")
    assert worst <= 1e-5
    assert_sums_agree(shared.sums, plain.sums, plain.token_logps)


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_buckets_carry_the_plain_log_probs_and_gradients(attn):
    """Two packs whose completions fall into four attention buckets (widths 32, 80, 224, 304):
    the log-probs equal the plain forward's to fp32 rounding, and gradients flow back through
    every bucket's gather and the joined scatter as through the plain forward (1e-5 relative
    per parameter, the bar of kto-train's shared step)."""
    lm = tiny_lm(attn)
    g = torch.Generator().manual_seed(3)
    ids = lambda n: torch.randint(3, 97, (n,), generator=g).tolist()
    p1, p2 = ids(20), ids(60)
    prompts, completions = [p1, p1, p2, p2], [ids(3), ids(200), ids(240), ids(5)]
    packed = make_packed_batch([p1, p2], [completions[:2], completions[2:]], pad_id=0)
    # Plain widths 32, 224 (pack 1) and 304, 80 (pack 2): every row is its own bucket.
    assert [tuple(x.shape) for x in packed.gather_index] == [(1, 32), (1, 80), (1, 224), (1, 304)]
    scorer = CompletionLogps(lm, chunk_size=64)

    def grads(forward):
        lm.zero_grad(set_to_none=True)
        flat = forward()
        (flat * torch.linspace(0.5, 1.5, flat.numel())).sum().backward()
        return flat.detach(), {n: p.grad.clone() for n, p in lm.named_parameters() if p.grad is not None}

    shared, g_shared = grads(lambda: scorer.forward_packed(packed))
    plain_batch = make_token_batch(prompts, completions, 0)
    plain, g_plain = grads(lambda: scorer(plain_batch.input_ids, plain_batch.score_mask))
    split = lambda flat: [x.numpy() for x in torch.split(flat, packed.lengths)]
    assert_tokens_agree(split(shared), split(plain), what=f"buckets vs plain ({attn})")
    assert g_plain.keys() == g_shared.keys() and len(g_plain) > 5
    for name, ref in g_plain.items():
        assert float((g_shared[name] - ref).norm()) <= 1e-5 * float(ref.norm()), name


def test_an_offloaded_embedding_runs_the_packed_forward_where_its_hook_runs(tmp_path):
    """--device-map may offload the embedding (accelerate leaves its weight on `meta`): the packed
    batch goes to the device accelerate's hook runs the layer on, not to `meta` ("Cannot copy
    out of meta tensor" before), and the log-probs are the in-memory model's, bit for bit (the
    same kernels on the same shapes)."""
    from accelerate import dispatch_model

    from kto.formats.compute.logprob import input_device

    lm = tiny_llama(vocab_size=64).eval()
    batch = make_packed_batch([[5, 6, 7, 8]], [[[9, 10, 11], [12, 13]]])
    with torch.no_grad():
        expected = CompletionLogps(lm)(batch)
    placement = {"model.embed_tokens": "disk", "model.layers": "cpu", "model.norm": "cpu", "model.rotary_emb": "cpu", "lm_head": "cpu"}
    dispatch_model(lm, device_map=placement, main_device="cpu", offload_dir=tmp_path)
    assert lm.get_input_embeddings().weight.is_meta and input_device(lm) == torch.device("cpu")
    with torch.no_grad():
        assert torch.equal(CompletionLogps(lm)(batch), expected)


@pytest.mark.parametrize(
    "hook",
    [
        pytest.param(lambda: SimpleNamespace(execution_device="cpu"), id="str"),
        pytest.param(lambda: SimpleNamespace(execution_device=torch.device("cpu")), id="torch.device"),
        pytest.param(lambda: SimpleNamespace(hooks=[SimpleNamespace(), SimpleNamespace(execution_device="cpu")]), id="inside a SequentialHook"),
    ],
)
def test_input_device_reads_every_form_of_accelerates_hook(hook):
    from kto.formats.compute.logprob import input_device

    lm = tiny_llama(vocab_size=64)
    assert input_device(lm) == torch.device("cpu")  # in memory: the weight's device
    lm.get_input_embeddings().to("meta")
    lm.get_input_embeddings()._hf_hook = hook()
    assert input_device(lm) == torch.device("cpu")


def test_an_offloaded_embedding_with_no_device_to_run_on_is_refused():
    from kto.formats.compute.logprob import input_device

    lm = tiny_llama(vocab_size=64)
    lm.get_input_embeddings().to("meta")
    with pytest.raises(InputError, match="--device-map: the embedding is offloaded"):
        input_device(lm)


def _windowed_lm(kind: str, attn: str):
    """A tiny float32 model whose layers attend within an 8-token window (Gemma 3: every other
    layer), so that rows of up to 40 tokens reach well past it."""
    torch.manual_seed(0)
    if kind == "mistral":
        from transformers import MistralConfig, MistralForCausalLM

        cfg = MistralConfig(
            vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, sliding_window=8
        )
        lm = MistralForCausalLM(cfg)
    else:
        from transformers import Gemma3ForCausalLM, Gemma3TextConfig

        cfg = Gemma3TextConfig(
            vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=8, sliding_window=8,
            layer_types=["sliding_attention", "full_attention"],
        )  # fmt: skip
        lm = Gemma3ForCausalLM(cfg)
    return _set_attn(lm.eval(), attn)


@pytest.mark.parametrize("kind", ["mistral", "gemma3"])
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_sliding_window_layers_keep_their_window_when_packed(kind, attn):
    """Mistral and Gemma pass their window as a keyword that only flash kernels read: packed
    attention must build it into the mask, as transformers does for a plain forward. Without it
    these log-probs were 0.077 (Mistral) and 0.26 (Gemma 3) per token off."""
    lm = _windowed_lm(kind, attn)
    scorer = CompletionLogps(lm, chunk_size=16)
    prompts, completions, keys = sequences()
    kw = dict(batch_tokens=4096, pad_id=0, device=torch.device("cpu"))
    assert max(len(p) + len(c) for p, c in zip(prompts, completions)) > 8 * 4
    shared = score_sequences(scorer, prompts, completions, keys, share_prefixes=True, **kw)
    plain = score_sequences(scorer, prompts, completions, keys, share_prefixes=False, **kw)
    truth = float64_reference(lm, prompts, completions)
    for a, b, t in zip(shared.token_logps, plain.token_logps, truth):
        np.testing.assert_allclose(b, t, atol=1e-5, rtol=0)  # plain: transformers' own window
        np.testing.assert_allclose(a, t, atol=1e-5, rtol=0)


def test_chunked_attention_is_refused_not_scored_without_its_mask():
    lm = tiny_lm("sdpa")
    lm.config.attention_chunk_size = 8
    b = make_packed_batch([[5, 6, 7]], [[[8, 9], [10, 11]]], pad_id=0)
    with pytest.raises(InputError, match="attention_chunk_size = 8; use --no-prefix-sharing"):
        CompletionLogps(lm).forward_packed(b)
    assert lm.config._attn_implementation == "sdpa"


def test_a_pack_never_gathers_more_than_its_cap():
    """A mutation hunt's example: with a pack's width taken from its last member rather than its
    longest, rows of completions 5, 1, 1 behind a 2-token prompt went into one pack gathering
    3 × 7 = 21 tokens under a cap of 16 (and the manifest counted other tokens). Every pack of
    random groups holds members × width ≤ max_tokens, or is one sequence alone."""
    packs, plain = plan_packs([[7, 7]] * 3, [[1] * 5, [2], [3]], [0, 1, 2], max_tokens=16)
    assert [(p.members, p.width) for p in packs] == [((0, 1), 7)] and plain == [2]
    rng = np.random.default_rng(0)
    for _ in range(300):
        n, cap = int(rng.integers(2, 30)), int(rng.integers(8, 200))
        prompts = [[int(g)] * (2 + int(g)) for g in rng.integers(0, 4, n)]
        completions = [[9] * int(c) for c in rng.integers(1, 60, n)]
        packs, plain = plan_packs(prompts, completions, list(range(n)), max_tokens=cap)
        assert sorted([i for p in packs for i in p.members] + plain) == list(range(n))
        for p in packs:
            assert p.width == p.prompt_length + max(len(completions[i]) for i in p.members)
            assert len(p.members) * p.width <= cap, (p, cap)


def test_worth_packing_at_its_boundary():
    """(k − 1)·P > γ·Σ(P + c_i), strictly: P = 1 and completions 9, 9 save 1 token against a
    gather cost of 0.05 × 20 = 1, no gain, left plain; 9, 8 cost 0.95, packed."""
    assert not worth_packing(1, [9, 9]) and worth_packing(1, [9, 8])
