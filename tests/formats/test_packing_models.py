"""Prefix sharing on models whose layers mix tokens outside attention. Packing puts a prompt's
completions back to back in one row and reroutes only attention; a convolution over tokens
(LFM2, Mamba and its hybrids, Qwen3-Next), linear attention, or an attention that does not go
through transformers' attention interface (Bloom, Falcon) then lets a completion see the ones
before it. Those models' log-probs came out of kto-precompute's default run wrong without a word
(LFM2 5.4e-5, Jamba 1.2e-4, Falcon-H1 3.0e-4, Qwen3-Next 7.5e-3 per token off plain scoring on
tiny random models); Bloom, Falcon and Mamba ended in a traceback. Now both commands score such
a model whole, saying so in one line, and the packed forward refuses it as a last guard."""

from __future__ import annotations

import json
import math

import pyarrow as pa
import pytest
import torch
from conftest import make_cache, metrics, precompute_args, run_train, text_rows, tiny_llama, write_rows

from kto.formats.compute.logprob import CompletionLogps
from kto.formats.compute.shared_prefix import make_packed_batch, packing_refusal
from kto.formats.errors import InputError

TINY = dict(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)


def lfm2(**extra):
    from transformers import Lfm2Config, Lfm2ForCausalLM

    return Lfm2ForCausalLM(Lfm2Config(**{**TINY, **extra}, layer_types=["conv", "full_attention"]))


def on_meta(build):
    with torch.device("meta"):
        return build()


def test_models_whose_layers_mix_tokens_outside_attention_are_named_with_why():
    from transformers import (
        BloomConfig,
        BloomForCausalLM,
        GPT2Config,
        GPT2LMHeadModel,
        MambaConfig,
        MambaForCausalLM,
        MiniMaxConfig,
        MiniMaxForCausalLM,
        Qwen2Config,
        Qwen2ForCausalLM,
    )

    assert packing_refusal(on_meta(lfm2)) == "Lfm2ForCausalLM has conv layers, which mix tokens outside causal attention"
    minimax = on_meta(lambda: MiniMaxForCausalLM(MiniMaxConfig(**TINY, head_dim=8, layer_types=["linear_attention", "full_attention"], num_local_experts=2)))
    assert packing_refusal(minimax) == "MiniMaxForCausalLM has linear_attention layers, which mix tokens outside causal attention"
    for model in (on_meta(lambda: BloomForCausalLM(BloomConfig(vocab_size=97, hidden_size=32, n_layer=2, n_head=4))),
                  on_meta(lambda: MambaForCausalLM(MambaConfig(vocab_size=97, hidden_size=32, num_hidden_layers=2, state_size=4)))):  # fmt: skip
        assert (
            packing_refusal(model)
            == f"{type(model).__name__} does not attend through transformers' attention interface (or has no attention), which packing replaces"
        )
    # Causal attention alone, through the interface: packed, as before.
    assert packing_refusal(on_meta(lambda: tiny_llama(vocab_size=97))) is None
    assert packing_refusal(on_meta(lambda: Qwen2ForCausalLM(Qwen2Config(**TINY)))) is None
    assert packing_refusal(on_meta(lambda: GPT2LMHeadModel(GPT2Config(vocab_size=97, n_embd=32, n_layer=2, n_head=4)))) is None


class TokenwiseMixer(torch.nn.Module):
    """Stands in for a layer that mixes tokens without calling attention (the guard must not
    need to know how): a running mean over the sequence."""

    def forward(self, hidden_states, **kwargs):
        steps = torch.arange(1, hidden_states.shape[1] + 1, device=hidden_states.device)[None, :, None]
        return hidden_states.cumsum(1) / steps, None


def test_a_layer_that_never_attends_is_refused_by_the_packed_forward_itself():
    lm = tiny_llama(vocab_size=97).eval()
    lm.model.layers[1].self_attn = TokenwiseMixer()
    batch = make_packed_batch([[5, 6, 7]], [[[8, 9], [10, 11]]], pad_id=0)
    with pytest.raises(
        InputError, match=r"^--prefix-sharing: LlamaForCausalLM attended through the packed layout in 1 of its 2 layers; .*use --no-prefix-sharing$"
    ):
        with torch.no_grad():
            CompletionLogps(lm).forward_packed(batch)
    assert lm.config._attn_implementation == "sdpa"


@pytest.fixture(scope="module")
def lfm2_dir(tmp_path_factory, tokenizer_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    torch.manual_seed(0)
    model = tmp_path_factory.mktemp("lfm2")
    lfm2(vocab_size=len(tok), bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id).save_pretrained(model)
    tok.save_pretrained(model)
    return model


def test_kto_precompute_scores_such_a_model_whole_and_says_so(tmp_path, lfm2_dir):
    from click.testing import CliRunner

    from kto.precompute.cli import main

    model = lfm2_dir
    data = write_rows(tmp_path / "rows.jsonl", text_rows())  # pairs: every prompt has two rows
    runs = {}
    for name, extra in (("default", []), ("plain", ["--no-prefix-sharing"])):
        result = CliRunner().invoke(main, precompute_args(data, model, tmp_path / name, *extra), catch_exceptions=False)
        assert result.exit_code == 0, result.output
        runs[name] = result.output
    assert (
        "note: prefix sharing off: Lfm2ForCausalLM has conv layers, which mix tokens outside causal attention; each sequence is scored whole" in runs["default"]
    )
    assert "prefix sharing off" not in runs["plain"]
    manifests = {name: json.loads((tmp_path / name / "manifest.json").read_text()) for name in runs}
    assert manifests["default"]["layout"]["prefix_sharing"] is False and manifests["default"]["counts"]["prefix_tokens_saved"] == 0
    assert manifests["default"]["fingerprint"] == manifests["plain"]["fingerprint"]
    for shard in sorted((tmp_path / "plain").glob("shard-*.arrow")):
        ours, plain = (pa.ipc.open_file(tmp_path / name / shard.name).read_all() for name in ("default", "plain"))
        assert ours.equals(plain), shard.name  # before: ref_logp and ref_kl_logp off the plain scores


def test_kto_train_steps_score_such_a_model_whole_and_say_so(tmp_path, lfm2_dir):
    cache = make_cache(tmp_path, text_rows(), lfm2_dir)
    result = run_train(cache, lfm2_dir, tmp_path / "run", "--batch-size", "4", "--max-steps", "2", "--log-every", "1")
    assert result.exit_code == 0, result.output
    assert "note: prefix sharing off in the steps: Lfm2ForCausalLM has conv layers, which mix tokens outside causal attention" in result.output
    record = json.loads((tmp_path / "run" / "kto_run.json").read_text())
    # The record said prefix_sharing true and nothing else: what the steps did is derived, for the reader
    assert record["config"]["prefix_sharing"] is True and record["derived"]["steps_share_prefixes"] is False
    first = metrics(tmp_path / "run")[0]
    # The policy starts as the reference: scored whole, its log-ratios are the cache's to rounding.
    assert abs(first["rewards/chosen"]) < 1e-6 and abs(first["rewards/rejected"]) < 1e-6 and abs(first["kl"]) < 1e-6


def scores(lm, share: bool):
    from kto.formats.compute.scoring import score_sequences

    prompts = [[5, 6, 7, 8, 9, 10, 11]] * 3
    completions = [[12, 13, 14, 15, 16, 17], [18, 19, 20], [21, 22, 23, 24, 25, 26, 27, 28]]
    with torch.no_grad():
        scored = score_sequences(
            CompletionLogps(lm.eval()), prompts, completions, [(i, 0) for i in range(3)],
            batch_tokens=4096, pad_id=0, device=torch.device("cpu"), share_prefixes=share,
        )  # fmt: skip
    return scored.sums


def test_a_layer_that_attends_twice_still_packs():
    """DiffLlama's layers call attention twice each (4 calls, 2 layers); the guard counts layers
    that attended, so it packs, to the plain scores (the first guard counted calls and refused)."""
    from transformers import DiffLlamaConfig, DiffLlamaForCausalLM

    torch.manual_seed(0)
    lm = DiffLlamaForCausalLM(DiffLlamaConfig(**TINY))
    assert packing_refusal(lm) is None
    torch.testing.assert_close(torch.as_tensor(scores(lm, True)), torch.as_tensor(scores(lm, False)), rtol=0, atol=1e-5)


def models_packing_cannot_reproduce():
    from transformers import DogeConfig, DogeForCausalLM, NemotronConfig, NemotronForCausalLM, PhimoeConfig, PhimoeForCausalLM

    yield DogeForCausalLM(DogeConfig(**TINY, keep_window_size=4)), "DogeAttention builds an attention mask of its own, which packing would ignore"
    yield NemotronForCausalLM(NemotronConfig(**TINY)), "NemotronAttention does not pass the attention keywords that packing needs"
    phimoe = PhimoeForCausalLM(PhimoeConfig(**TINY, num_local_experts=2, sliding_window=4))
    yield phimoe, "PhimoeForCausalLM's config has sliding_window 4 but its layers do not pass it to attention"


def test_layers_whose_attention_packing_cannot_reproduce_are_refused_in_the_forward():
    """Each passes packing_refusal and was scored wrong without a word (Doge's dynamic mask up to
    0.37 per row, PhiMoE's unpassed window 4.9e-2) or ended in a TypeError (Nemotron)."""
    for lm, why in models_packing_cannot_reproduce():
        assert packing_refusal(lm) is None
        with pytest.raises(InputError) as refused:
            scores(lm, True)
        assert str(refused.value) == f"--prefix-sharing: {why}; use --no-prefix-sharing"
        assert all(map(math.isfinite, scores(lm, False)))  # plain scoring is theirs


def test_a_model_that_cannot_be_checked_is_not_packed():
    from kto.formats.compute.shared_prefix import sharing_refusal

    def fails():
        raise InputError("--model custom: cannot build the model from its config (ValueError: meta)")

    assert sharing_refusal(fails) == "its layers could not be checked (--model custom: cannot build the model from its config (ValueError: meta))"


def test_a_window_the_config_keeps_but_no_layer_uses_is_no_reason_to_refuse():
    """SmolLM3 with use_sliding_window false keeps sliding_window in its config and attends in
    full: the window guard refused it (a final review), though packing is exact there."""
    from transformers import SmolLM3Config, SmolLM3ForCausalLM

    torch.manual_seed(0)
    lm = SmolLM3ForCausalLM(SmolLM3Config(**TINY, sliding_window=4, use_sliding_window=False, pad_token_id=0, bos_token_id=1, eos_token_id=2))
    torch.testing.assert_close(torch.as_tensor(scores(lm, True)), torch.as_tensor(scores(lm, False)), rtol=0, atol=1e-5)
