"""Model families whose forward differs from Llama's where the shared log-prob definition
(formats/compute/logprob.py) must notice: logits scaled after the head (Falcon-H1's
lm_head_multiplier) or capped under another key (RecurrentGemma's logits_soft_cap) or on a text
config (multimodal models); learned position tables (GPT-2, OPT: a longer sequence ended
kto-precompute and kto-train in an IndexError); an attention implementation the model refuses
at load (Gemma2 under sdpa: the error named whisper-tiny, not the flag). Tiny random models."""

from __future__ import annotations

import pytest
import torch
from conftest import precompute_args, run_train, text_rows, train_error_line, write_rows


def falcon_h1(**extra):
    from transformers import FalconH1Config, FalconH1ForCausalLM

    torch.manual_seed(0)
    shape = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=8)
    mamba = dict(mamba_d_ssm=32, mamba_n_heads=4, mamba_d_head=8, mamba_n_groups=1, mamba_d_state=8, mamba_d_conv=4)
    return FalconH1ForCausalLM(FalconH1Config(**shape, **mamba, vocab_size=97, **extra)).eval()


def gpt2(n_positions: int, vocab_size: int = 97, **extra):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    return GPT2LMHeadModel(GPT2Config(vocab_size=vocab_size, n_embd=32, n_layer=2, n_head=4, n_positions=n_positions, **extra)).eval()


def reference_logps(lm, ids: torch.Tensor) -> torch.Tensor:
    """log softmax of the model's own logits (its forward: head, scale, cap) at every scored
    token of `ids` [1, T] (positions 1..T-1), float32."""
    with torch.no_grad():
        logits = lm(input_ids=ids).logits.float()
    return torch.log_softmax(logits[0, :-1], -1).gather(-1, ids[0, 1:, None]).squeeze(-1)


def ours(lm, ids: torch.Tensor) -> torch.Tensor:
    from kto.formats.compute.logprob import CompletionLogps

    score = torch.zeros_like(ids, dtype=torch.bool)
    score[:, 1:] = True
    with torch.no_grad():
        return CompletionLogps(lm)(ids, score)


# ---- 1. logits scaled or capped after the head -------------------------------------------------


def scaled(family: str):
    """Tiny models whose forward scales the logits after the head: Cohere multiplies by
    logit_scale, Granite divides by logits_scaling, Falcon-H1 multiplies by lm_head_multiplier."""
    import transformers as tf

    torch.manual_seed(0)
    shape = dict(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)
    if family == "cohere":
        return tf.CohereForCausalLM(tf.CohereConfig(**shape, logit_scale=0.5)).eval()
    if family == "granite":
        return tf.GraniteForCausalLM(tf.GraniteConfig(**shape, logits_scaling=4.0)).eval()
    return falcon_h1(lm_head_multiplier=0.5)


@pytest.mark.parametrize("family, factor", [("cohere", 0.5), ("granite", 0.25), ("falcon_h1", 0.5)])
def test_a_logit_scale_is_applied_as_the_models_forward_applies_it(family, factor):
    """Every Cohere (logit_scale 0.0625 and the like) and Granite model (logits_scaling) was
    refused: "scales its logits; not supported yet". The factor is read with its direction from
    the class's forward (Granite divides by logits_scaling, HyperCLOVAX multiplies by the same
    key); the scores are the model's own, under LoRA adapters too."""
    from peft import LoraConfig, get_peft_model

    from kto.formats.compute.logprob import CompletionLogps

    lm = scaled(family)
    assert CompletionLogps(lm).scale == factor
    ids = torch.randint(0, 97, (1, 11), generator=torch.Generator().manual_seed(1))
    expected = reference_logps(lm, ids)
    assert torch.allclose(ours(lm, ids), expected, atol=1e-5, rtol=0)
    targets = ["in_proj"] if family == "falcon_h1" else ["q_proj"]
    assert torch.allclose(ours(get_peft_model(lm, LoraConfig(r=2, target_modules=targets)).eval(), ids), expected, atol=1e-5, rtol=0)


def test_falcon_h1_without_a_multiplier_is_accepted_and_scores_as_its_forward():
    """Bound 1e-5: the same head and log-softmax, on kernels of other shapes (the forward pads
    to a multiple of 16 and applies the head to the scored rows only)."""
    lm = falcon_h1(lm_head_multiplier=1.0)
    ids = torch.randint(0, 97, (1, 11), generator=torch.Generator().manual_seed(1))
    assert torch.allclose(ours(lm, ids), reference_logps(lm, ids), atol=1e-5, rtol=0)


def test_recurrent_gemma_soft_cap_is_applied():
    """RecurrentGemma caps its logits under `logits_soft_cap` (not final_logit_softcapping):
    before, the cap was left out (a cap of 0.5 makes that plain). Bound as above."""
    from transformers import RecurrentGemmaConfig, RecurrentGemmaForCausalLM

    from kto.formats.compute.logprob import CompletionLogps

    torch.manual_seed(0)
    config = RecurrentGemmaConfig(
        vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=1,
        head_dim=8, lru_width=32, attention_window_size=16, block_types=["recurrent", "attention"], logits_soft_cap=0.5,
    )  # fmt: skip
    lm = RecurrentGemmaForCausalLM(config).eval()
    assert CompletionLogps(lm).softcap == 0.5
    ids = torch.randint(0, 97, (1, 11), generator=torch.Generator().manual_seed(1))
    assert torch.allclose(ours(lm, ids), reference_logps(lm, ids), atol=1e-5, rtol=0)


def with_text_config(lm, **keys):
    """`lm` whose config's get_text_config() is another object holding `keys`, as a multimodal
    model's (Gemma3n's ...ForConditionalGeneration keeps final_logit_softcapping there)."""
    text = lm.config.__class__(**{**lm.config.to_dict(), **keys})
    lm.config.get_text_config = lambda *args, **kwargs: text
    return lm


def test_keys_on_the_text_config_are_read():
    from conftest import tiny_llama

    from kto.formats.compute.logprob import CompletionLogps
    from kto.formats.errors import InputError

    with pytest.raises(InputError, match=r"LlamaForCausalLM scales its logits \(lm_head_multiplier 0.25\)"):
        CompletionLogps(with_text_config(tiny_llama(97), lm_head_multiplier=0.25))
    # A cap is applied only by a class whose forward reads it: Llama's never does.
    assert CompletionLogps(with_text_config(tiny_llama(97), final_logit_softcapping=30.0)).softcap is None
    assert CompletionLogps(tiny_llama(97, final_logit_softcapping=0.5)).softcap is None


def test_gemma2_softcap_matches_its_forward():
    """Gemma2 applies final_logit_softcapping itself (here 0.5, so a missing or doubled cap
    would show): ours must give its numbers, once capped. Bound as above."""
    from transformers import Gemma2Config, Gemma2ForCausalLM

    torch.manual_seed(0)
    shape = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=8)
    lm = Gemma2ForCausalLM(Gemma2Config(vocab_size=97, **shape, final_logit_softcapping=0.5, attn_implementation="eager")).eval()
    ids = torch.randint(0, 97, (1, 11), generator=torch.Generator().manual_seed(1))
    assert torch.allclose(ours(lm, ids), reference_logps(lm, ids), atol=1e-5, rtol=0)


def test_gemma2_softcap_holds_under_lora_adapters():
    """kto-train scores the policy through peft's PeftModel: its forward names no softcap, so the
    cap was taken as unused and Gemma 2/3 with --lora-r stopped at the step-0 check (drift 2.0
    per token; kto-inspect score gave rewards of 0.19 for zero adapters). Zero adapters (B = 0)
    change nothing: the numbers must be the model's own, capped."""
    from peft import LoraConfig, get_peft_model
    from transformers import Gemma2Config, Gemma2ForCausalLM

    from kto.formats.compute.logprob import logit_softcap

    torch.manual_seed(0)
    shape = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=8)
    lm = Gemma2ForCausalLM(Gemma2Config(vocab_size=97, **shape, final_logit_softcapping=0.5, attn_implementation="eager")).eval()
    ids = torch.randint(0, 97, (1, 11), generator=torch.Generator().manual_seed(1))
    expected = reference_logps(lm, ids)
    wrapped = get_peft_model(lm, LoraConfig(r=4, target_modules=["q_proj", "v_proj"])).eval()
    assert logit_softcap(wrapped) == 0.5
    assert torch.allclose(ours(wrapped, ids), expected, atol=1e-5, rtol=0)


# ---- 2. learned position tables ----------------------------------------------------------------


def test_learned_positions_of_each_family():
    from transformers import LlamaConfig, LlamaForCausalLM, OPTConfig, OPTForCausalLM

    from kto.formats.compute.logprob import learned_positions

    opt = OPTForCausalLM(
        OPTConfig(vocab_size=97, hidden_size=32, num_hidden_layers=2, ffn_dim=64, num_attention_heads=4, max_position_embeddings=40, word_embed_proj_dim=32)
    )
    assert opt.model.decoder.embed_positions.num_embeddings == 42  # 2 ids of offset
    llama = LlamaForCausalLM(
        LlamaConfig(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=40)
    )
    assert (learned_positions(gpt2(40)), learned_positions(opt), learned_positions(llama)) == (40, 40, None)


def test_an_encoders_positions_nested_in_the_decoder_are_not_the_texts():
    """Phi-4-multimodal's decoder holds its image and audio encoders, whose patch positions (1024)
    were read as the text's (rotary, any length): rows over 1024 tokens were refused (a review)."""
    from transformers import Phi4MultimodalConfig, Phi4MultimodalForCausalLM

    from kto.formats.compute.logprob import learned_positions

    with torch.device("meta"):
        assert learned_positions(Phi4MultimodalForCausalLM(Phi4MultimodalConfig())) is None


def test_a_softcap_the_class_never_applies_is_not_applied():
    """Gemma 3's multimodal model keeps its text config's final_logit_softcapping and its forward
    never applies it (its causal LM does): read from the text config, it bent every log-prob."""
    from transformers import Gemma3Config, Gemma3ForCausalLM, Gemma3ForConditionalGeneration, Gemma3TextConfig

    from kto.formats.compute.logprob import logit_softcap

    text = dict(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=8)
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=28, patch_size=14)
    with torch.device("meta"):
        multimodal = Gemma3ForConditionalGeneration(Gemma3Config(text_config={**text, "final_logit_softcapping": 0.5}, vision_config=vision))
        causal = Gemma3ForCausalLM(Gemma3TextConfig(**text, final_logit_softcapping=0.5))
    assert (logit_softcap(multimodal), logit_softcap(causal)) == (None, 0.5)


def test_the_train_check_reads_lengths_not_shards(tiny_cache, monkeypatch):
    """kto-train's check runs on every start with a learned-position model: it read (hashed and
    copied) every shard; list offsets are enough."""
    from kto.formats.cache import ShardedCache, open_cache
    from kto.formats.compute.logprob import check_cache_positions

    def no_reading(self, k, **kwargs):
        raise AssertionError("a shard was read whole")

    cache = open_cache(tiny_cache)
    longest = int(cache.longest_sequences().max())
    assert cache.manifest.content.max_length > longest  # so the check must look at the rows
    with monkeypatch.context() as patched:
        patched.setattr(ShardedCache, "read_shard", no_reading)
        check_cache_positions(cache, gpt2(longest), "--model m")  # every row fits: nothing read, nothing said
    with pytest.raises(Exception, match=f"has {longest} tokens, more than the {longest - 1} positions"):
        check_cache_positions(cache, gpt2(longest - 1), "--model m")  # the refusal reads the row's id


def test_padding_stays_inside_the_position_table():
    """18 tokens pad to 32 (a multiple of 16) but a table of 20 positions ends at 20: before,
    the pads' positions 20..31 ended the forward in an IndexError. Bound as above."""
    lm = gpt2(20)
    ids = torch.randint(0, 97, (1, 18), generator=torch.Generator().manual_seed(1))
    assert torch.allclose(ours(lm, ids), reference_logps(lm, ids), atol=1e-5, rtol=0)


@pytest.fixture(scope="module")
def tokenizer(tokenizer_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tokenizer_dir)


def gpt2_dir(path, tokenizer, n_positions: int):
    special = dict(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    gpt2(n_positions, vocab_size=len(tokenizer), **special).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def precompute(tmp_path, model, *extra):
    from click.testing import CliRunner

    from kto.precompute.cli import main

    data = write_rows(tmp_path / "rows.jsonl", text_rows())
    return CliRunner().invoke(main, precompute_args(data, model, tmp_path / "cache", *extra))


def test_kto_precompute_refuses_rows_longer_than_the_position_table(tmp_path, tokenizer):
    """Before: IndexError (F.embedding) from the first batch, prefix sharing or not."""
    model = gpt2_dir(tmp_path / "gpt2", tokenizer, 16)
    for extra in ([], ["--no-prefix-sharing"]):
        result = precompute(tmp_path, model, *extra, "--overwrite")
        assert result.exit_code != 0 and "Traceback" not in result.output and not isinstance(result.exception, IndexError), result.output
        lines = [line for line in result.output.splitlines() if "error:" in line]
        assert len(lines) == 1 and lines[0].endswith("more than the 16 positions GPT2LMHeadModel learned; give --max-length 16 or less"), result.output
        assert "--max-length 64: row " in lines[0]
        assert not list((tmp_path / "cache").glob("shard-*.arrow"))  # refused before any shard was scored


def test_after_that_refusal_the_advised_rerun_needs_no_overwrite(tmp_path, tokenizer):
    """The refusal came after the rows were staged in --out: --out stayed, holding a staging file
    of the refused content, so the rerun the message advises was refused in turn (another
    cache in --out) unless given --overwrite, which the message did not say."""
    model = gpt2_dir(tmp_path / "gpt2", tokenizer, 16)
    refused = precompute(tmp_path, model)
    assert refused.exit_code != 0 and "give --max-length 16 or less" in refused.output, refused.output
    assert not (tmp_path / "cache").exists()  # the run created --out and removed it again
    rerun = precompute(tmp_path, model, "--max-length", "16", "--max-prompt-length", "8")
    assert rerun.exit_code == 0, rerun.output


@pytest.mark.parametrize("sharing", ["--prefix-sharing", "--no-prefix-sharing"])
def test_kto_precompute_accepts_rows_within_the_table(tmp_path, tokenizer, sharing):
    """--max-length 20 cuts every row to the 20 positions learned. 20 is not a multiple of 16:
    before, a plain batch (--no-prefix-sharing) was padded to 32 and its pads' positions ended
    in an IndexError; packs pass their own position ids and took no padding."""
    model = gpt2_dir(tmp_path / "gpt2", tokenizer, 20)
    result = precompute(tmp_path, model, "--max-length", "20", "--max-prompt-length", "10", sharing)
    assert result.exit_code == 0, result.output


def test_kto_train_refuses_a_policy_with_fewer_positions_than_the_cache_rows(tmp_path, tokenizer, tiny_cache):
    """The cache was scored by the rotary tiny Llama at --max-length 64; a GPT-2 policy of 16
    positions with the same tokenizer ended in an IndexError at its first forward."""
    model = gpt2_dir(tmp_path / "gpt2", tokenizer, 16)
    result = run_train(tiny_cache, model, tmp_path / "run", "--batch-size", "4", "--max-steps", "1")
    line = train_error_line(result.output)
    assert "more than the 16 positions GPT2LMHeadModel learned" in line and "--cache" in line, line
    assert not (tmp_path / "run").exists()  # checked on the model's skeleton, before --out is touched


def test_kto_inspect_score_refuses_such_a_policy_in_one_line(tmp_path, tokenizer, tiny_cache):
    """The same cache and policy through `kto-inspect score`: an IndexError mid-shard before."""
    from click.testing import CliRunner

    from kto.inspection.cli import main

    model = gpt2_dir(tmp_path / "gpt2", tokenizer, 16)
    result = CliRunner().invoke(main, ["score", str(tiny_cache), "--model", str(model), "--out", str(tmp_path / "scores.parquet")])
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    assert "more than the 16 positions GPT2LMHeadModel learned" in result.output and not (tmp_path / "scores.parquet").exists()


# ---- 3. an attention implementation the model refuses at load ----------------------------------


def test_gemma2_under_sdpa_names_the_flag(tmp_path):
    """Before: `--model DIR: cannot load model (ValueError: ... whisper-tiny ...)`."""
    from transformers import Gemma2Config, Gemma2ForCausalLM

    from kto.formats.compute.loading import load_causal_lm
    from kto.formats.compute.sources import resolve_source
    from kto.formats.errors import InputError

    shape = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=8)
    Gemma2ForCausalLM(Gemma2Config(vocab_size=97, **shape)).save_pretrained(tmp_path)
    source = resolve_source(str(tmp_path))
    with pytest.raises(InputError) as refused:
        load_causal_lm(source, dtype=torch.float32, attn_implementation="sdpa")
    assert str(refused.value) == "--attn-implementation sdpa: Gemma2ForCausalLM does not support it; give --attn-implementation eager"
    assert type(load_causal_lm(source, dtype=torch.float32, attn_implementation="eager")).__name__ == "Gemma2ForCausalLM"


def test_both_commands_refuse_sdpa_for_gemma2_before_out_is_touched(tmp_path, tokenizer, tiny_cache):
    """The refusal named the flag but came after kto-precompute had claimed and staged --out, so
    the rerun it advised was refused in turn (a different configuration: pass --overwrite)."""
    from transformers import Gemma2Config, Gemma2ForCausalLM

    shape = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=8)
    special = dict(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    model = tmp_path / "gemma2"
    Gemma2ForCausalLM(Gemma2Config(vocab_size=len(tokenizer), **shape, **special)).save_pretrained(model)
    tokenizer.save_pretrained(model)
    said = "--attn-implementation sdpa: Gemma2ForCausalLM does not support it; give --attn-implementation eager"
    result = precompute(tmp_path, model)
    assert result.exit_code == 2 and said in result.output and not (tmp_path / "cache").exists(), result.output
    assert precompute(tmp_path, model, "--attn-implementation", "eager").exit_code == 0
    result = run_train(tiny_cache, model, tmp_path / "run", "--max-steps", "1")
    assert said in train_error_line(result.output) and not (tmp_path / "run").exists()


# ---- 4. rotary scaling that follows the batch ---------------------------------------------------


def rotary(kind: str, limit: int = 48):
    """A tiny Qwen2 whose rotary frequencies change past `limit` positions: `dynamic` (NTK, from
    max_position_embeddings) or `longrope` (Phi-3's long factor past original_max_position_embeddings)."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    shape = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)
    if kind == "dynamic":
        config = Qwen2Config(vocab_size=97, **shape, max_position_embeddings=limit, rope_parameters={"rope_type": "dynamic", "rope_theta": 1e4, "factor": 4.0})
    else:
        rope = {"rope_type": "longrope", "rope_theta": 1e4, "short_factor": [1.0] * 4, "long_factor": [4.0] * 4, "original_max_position_embeddings": limit}
        config = Qwen2Config(vocab_size=97, **shape, max_position_embeddings=4 * limit, rope_parameters=rope)
    return Qwen2ForCausalLM(config).eval()


@pytest.mark.parametrize("kind", ["dynamic", "longrope"])
def test_rotary_scaling_that_follows_the_batch_bounds_the_length(kind):
    """transformers recomputes these frequencies from the longest position of each call: a row of
    40 tokens scored beside one of 60 (or padded past 48) got other log-probs than alone, 0.3 to
    2.2 nats a row; the cache then depended on --batch-tokens. Up to the limit the scaling is
    fixed, and padding stays within it; past it, a row is refused like one past a learned table."""
    from kto.formats.compute.logprob import CompletionLogps, position_limit

    lm = rotary(kind, limit=44)
    assert position_limit(lm).count == 44 and "rotary" in position_limit(lm).what
    assert CompletionLogps(lm).positions == 44
    ids = torch.randint(0, 97, (1, 40), generator=torch.Generator().manual_seed(1))
    # 40 tokens pad to 44, not to 48 (a multiple of 16), which would switch the frequencies
    assert torch.allclose(ours(lm, ids), reference_logps(lm, ids), atol=1e-5, rtol=0)


def test_kto_precompute_refuses_rows_past_the_rotary_limit(tmp_path, tokenizer):
    model = tmp_path / "dyn"
    special = dict(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    from transformers import Qwen2Config, Qwen2ForCausalLM

    shape = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)
    rope = {"rope_type": "dynamic", "rope_theta": 1e4, "factor": 4.0}
    Qwen2ForCausalLM(Qwen2Config(vocab_size=len(tokenizer), **shape, max_position_embeddings=16, rope_parameters=rope, **special)).save_pretrained(model)
    tokenizer.save_pretrained(model)
    result = precompute(tmp_path, model)
    line = [line for line in result.output.splitlines() if "error:" in line]
    assert result.exit_code != 0 and len(line) == 1 and line[0].endswith("give --max-length 16 or less"), result.output
    assert "rotary" in line[0] and not (tmp_path / "cache").exists()


def test_the_rotary_limit_holds_for_kto_train_and_hunyuans_alpha_is_not_bounded(tmp_path, tokenizer, tiny_cache):
    """kto-train reads the limit through check_cache_positions on the skeleton; Hunyuan's
    `dynamic` with `alpha` is transformers' static ntk_alpha, bounded by nothing."""
    from transformers import HunYuanDenseV1Config, HunYuanDenseV1ForCausalLM, LlamaConfig, LlamaForCausalLM

    from kto.formats.compute.logprob import position_limit

    model = tmp_path / "dyn"
    special = dict(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    shape = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)
    rope = {"rope_type": "dynamic", "rope_theta": 1e4, "factor": 4.0}
    LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), **shape, max_position_embeddings=16, rope_parameters=rope, **special)).save_pretrained(model)
    tokenizer.save_pretrained(model)  # a Llama: the cache's tokenizer loads as the cache's
    result = run_train(tiny_cache, model, tmp_path / "run", "--batch-size", "4", "--max-steps", "1")
    line = train_error_line(result.output)
    assert "more than the 16 positions within which LlamaForCausalLM's dynamic rotary scaling is fixed" in line and "--max-length 16" in line, line
    assert not (tmp_path / "run").exists()
    hunyuan = {"rope_type": "dynamic", "alpha": 1e3, "factor": 1.0, "rope_theta": 1e4}
    config = HunYuanDenseV1Config(vocab_size=97, **shape, head_dim=8, max_position_embeddings=32, rope_parameters=hunyuan)
    assert position_limit(HunYuanDenseV1ForCausalLM(config)) is None


def test_a_factor_the_forward_transforms_is_not_taken_for_the_configs():
    """A line `logits = self.lm_head(h) * self.logit_scale.exp()` multiplies by e^value, not by
    the config's value: refused, as a forward that does not show its factor."""
    from kto.formats.compute.logprob import _scaling_in_forward

    class Learned:
        def forward(self, h):
            logits = self.lm_head(h) * self.logit_scale.exp()
            return logits

    class Plain:
        def forward(self, h):
            logits = self.lm_head(h)
            logits = logits / self.config.logits_scaling  # as Granite
            return logits

    assert _scaling_in_forward(Learned, "logit_scale") is None
    assert _scaling_in_forward(Plain, "logits_scaling") == "/"
