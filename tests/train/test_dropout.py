"""Dropout really off: two train-mode forwards must be bit-identical, and the config must say so."""

import pytest
import torch

from kto.train.model import disable_dropout


def tiny(arch: str):
    import transformers as tf

    common = dict(vocab_size=97, max_position_embeddings=64)
    if arch == "llama":
        config = tf.LlamaConfig(
            hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, attention_dropout=0.3, **common
        )
        return tf.LlamaForCausalLM(config)
    if arch == "qwen2":
        config = tf.Qwen2Config(
            hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, attention_dropout=0.3, **common
        )
        return tf.Qwen2ForCausalLM(config)
    # GPT-2: hidden (residual, embedding) dropout as nn.Dropout modules, plus attention dropout.
    config = tf.GPT2Config(
        n_embd=32, n_layer=2, n_head=4, resid_pdrop=0.3, embd_pdrop=0.3, attn_pdrop=0.3, vocab_size=97, n_positions=64, bos_token_id=0, eos_token_id=0
    )
    return tf.GPT2LMHeadModel(config)


def two_train_forwards(model) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.randint(0, 97, (2, 24), generator=torch.Generator().manual_seed(0))
    model.train()
    with torch.no_grad():
        return model(input_ids=ids).logits, model(input_ids=ids).logits


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gpt2"])
def test_train_mode_forwards_are_bit_identical_after_disable_dropout(arch, tmp_path):
    torch.manual_seed(0)
    model = tiny(arch)
    a, b = two_train_forwards(model)
    assert not torch.equal(a, b), "the test model must have live dropout before the fix"
    disable_dropout(model)
    a, b = two_train_forwards(model)
    assert torch.equal(a, b)
    # The saved config is honest: every dropout field reads 0.0, and reloading it builds a model
    # whose train-mode forwards are deterministic too.
    model.save_pretrained(tmp_path)
    saved = type(model.config).from_pretrained(tmp_path).to_dict()
    fields = {k: v for k, v in saved.items() if ("dropout" in k or "pdrop" in k) and isinstance(v, float)}
    assert fields and all(v == 0.0 for v in fields.values()), fields
    reloaded = type(model).from_pretrained(tmp_path)
    a, b = two_train_forwards(reloaded)
    assert torch.equal(a, b)


def test_attention_layers_hold_no_dropout_copy():
    """The float copy Llama's attention takes from the config at build time is what runs."""
    model = tiny("llama")
    assert {m.attention_dropout for m in model.modules() if hasattr(m, "attention_dropout")} == {0.3}
    disable_dropout(model)
    assert {m.attention_dropout for m in model.modules() if hasattr(m, "attention_dropout")} == {0.0}
