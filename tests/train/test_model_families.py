"""Model families whose train-mode forward or LoRA targets need more than a Llama does:
MoE routers with train-mode noise (Mixtral's jitter, PhiMoE's sampling sparsemixer), MoE routers
that subclass nn.Linear (PhiMoE, Llama 4), and a multimodal model whose vision tower shares the
decoder's layer names (Gemma 3)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import TINY_LLAMA, chat_rows, make_cache, metrics, run_train, train_error_line

from kto.train import adapters
from kto.train.model import disable_dropout

MOE = {**TINY_LLAMA, "vocab_size": 97, "max_position_embeddings": 64, "num_local_experts": 4, "num_experts_per_tok": 2}


def tiny_moe(arch: str, **overrides: object) -> torch.nn.Module:
    import transformers as tf

    torch.manual_seed(0)
    if arch == "phimoe":  # its default config: router_jitter_noise 0.01, input_jitter_noise 0.0
        return tf.PhimoeForCausalLM(tf.PhimoeConfig(**{**MOE, **overrides}))
    if arch == "mixtral":
        return tf.MixtralForCausalLM(tf.MixtralConfig(**{**MOE, **overrides}))
    return tf.Llama4ForCausalLM(tf.Llama4TextConfig(**{**MOE, "intermediate_size_mlp": 64, "head_dim": 8, **overrides}))


def forward(model: torch.nn.Module, train: bool) -> torch.Tensor:
    ids = torch.randint(0, 97, (2, 24), generator=torch.Generator().manual_seed(0))
    model.train(train)
    with torch.no_grad():
        return model(input_ids=ids).logits


@pytest.mark.parametrize(
    ("arch", "overrides"),
    [("phimoe", {}), ("phimoe", {"input_jitter_noise": 0.1}), ("mixtral", {"router_jitter_noise": 0.3})],
    ids=["phimoe-default", "phimoe-input-jitter", "mixtral-jitter"],
)
def test_moe_train_mode_forwards_equal_the_eval_forward(arch: str, overrides: dict) -> None:
    """The cache's reference was scored in eval mode with the model's own config; after
    disable_dropout the train-mode forward must be that same function, bit for bit. PhiMoE's
    router_jitter_noise is a threshold its eval path reads too, so it must be kept, not zeroed."""
    model = tiny_moe(arch, **overrides)
    reference = forward(model, train=False)
    a, b = forward(model, train=True), forward(model, train=True)
    assert not torch.equal(a, b), "the test model must route at random in train mode before the fix"
    disable_dropout(model)
    a, b = forward(model, train=True), forward(model, train=True)
    assert a.shape == reference.shape and torch.equal(a, b) and torch.equal(a, reference)
    assert model.config.router_jitter_noise == (0.01 if arch == "phimoe" else 0.0)
    if arch == "phimoe":
        assert model.config.input_jitter_noise == 0.0
    disable_dropout(model)  # twice (a resume builds again): still one hook per router
    assert all(len(m._forward_pre_hooks) <= 1 for m in model.modules())


def test_pinned_phimoe_router_still_learns() -> None:
    """The eval path keeps the router's gradient (softmax over the kept experts)."""
    model = tiny_moe("phimoe")
    disable_dropout(model)
    model.train()
    ids = torch.randint(0, 97, (2, 24), generator=torch.Generator().manual_seed(0))
    model(input_ids=ids).logits.sum().backward()
    assert model.model.layers[0].mlp.router.weight.grad.abs().sum() > 0


def lora_flags(targets: str | None = None) -> SimpleNamespace:
    return SimpleNamespace(lora_r=4, lora_alpha=8, lora_dropout=0.0, lora_target_modules=targets, model="tiny")


def tiny_gemma3() -> torch.nn.Module:
    """Gemma 3's multimodal model with a tiny SigLIP vision tower: its q/k/v_proj share the
    decoder's names."""
    import transformers as tf

    text = dict(vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=8)
    vision = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, image_size=28, patch_size=14)
    torch.manual_seed(0)
    config = tf.Gemma3Config(text_config=text, vision_config=vision, mm_tokens_per_image=4, image_token_index=299, boi_token_index=297, eoi_token_index=298)
    return tf.Gemma3ForConditionalGeneration(config)


@pytest.mark.parametrize("targets", [None, "q_proj,v_proj"])
def test_multimodal_adapters_stay_in_the_decoder(targets: str | None, tmp_path: Path) -> None:
    peft = pytest.importorskip("peft")
    lm = tiny_gemma3()
    config = adapters.lora_config(lora_flags(targets), lm)
    adapted = sorted({n.split(".lora_A")[0] for n, _ in peft.get_peft_model(lm, config).named_parameters() if ".lora_A" in n})
    names = {"q_proj", "v_proj"} if targets else {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    assert len(adapted) == 2 * len(names)  # 2 decoder layers, and nothing of the vision tower
    assert all(n.startswith("base_model.model.model.language_model.layers.") for n in adapted), adapted
    assert sorted(config.target_modules) == sorted(names)
    assert config.exclude_modules == r"(?!model\.language_model\.).*"


def test_routers_are_no_default_target_and_are_refused_by_name() -> None:
    for arch in ("phimoe", "llama4"):
        lm = tiny_moe(arch)
        assert not any("router" in n for n in adapters.linear_modules(lm)), arch
        assert adapters.exclude_modules(lm, adapters.linear_names(lm)) is None
        with pytest.raises(adapters.InputError, match=r"^--lora-target-modules q_proj,router: model\.layers\.0\..*router is a \w+Router, .*a MoE router"):
            adapters.target_modules(lora_flags("q_proj,router"), lm)
    # A full module name is matched against the model's own names (it was refused before).
    assert adapters.target_modules(lora_flags("model.layers.1.self_attn.q_proj"), lm) == ["model.layers.1.self_attn.q_proj"]


def save_with_tokenizer(lm: torch.nn.Module, out: Path, tokenizer_dir: Path) -> Path:
    from transformers import AutoTokenizer

    AutoTokenizer.from_pretrained(tokenizer_dir).save_pretrained(out)
    lm.save_pretrained(out)
    return out


@pytest.mark.slow
def test_phimoe_trains_with_lora_and_in_full(tokenizer_dir: Path, tmp_path: Path) -> None:
    """A tiny PhiMoE (default config, 16 experts as Phi-3.5-MoE: with 4 the sparsemixer's 2 %
    threshold seldom leaves it two experts to draw from): the step-0 check sees no drift in train
    mode (it stopped the run at 9.5e-3 per token), and --lora-r 4 trains instead of crashing
    inside peft on the router, an nn.Linear that returns a tuple."""
    pytest.importorskip("peft")
    from transformers import AutoTokenizer

    vocab = len(AutoTokenizer.from_pretrained(tokenizer_dir))
    model = save_with_tokenizer(tiny_moe("phimoe", vocab_size=vocab, num_local_experts=16), tmp_path / "phimoe", tokenizer_dir)
    cache = make_cache(tmp_path, chat_rows(), model)
    for name, extra in (("full", []), ("lora", ["--lora-r", "4", "--lora-alpha", "8"])):
        result = run_train(cache, model, tmp_path / name, "--batch-size", "4", "--max-steps", "2", "--log-every", "1", *extra)
        assert result.exit_code == 0, result.output
        drift = float(re.search(r"step-0 check: max \|Δ log p\| per token vs cache = (\S+)", result.output).group(1))
        assert drift < 1e-5, result.output  # fp32 rounding (batch shapes differ); the sampled router gave 9.5e-3
        assert len(metrics(tmp_path / name)) == 2
    saved = json.loads((tmp_path / "lora" / "final" / "adapter_config.json").read_text())
    assert sorted(saved["target_modules"]) == ["k_proj", "o_proj", "q_proj", "v_proj"] and saved["exclude_modules"] is None
    result = run_train(cache, model, tmp_path / "named", "--max-steps", "1", "--lora-r", "4", "--lora-target-modules", "router")
    assert "PhimoeTopKRouter" in train_error_line(result.output)


@pytest.mark.slow
def test_llama_adapters_unchanged_and_older_ones_accepted(tiny_cache: Path, tiny_model_dir: Path, tmp_path: Path) -> None:
    """A Llama's adapters: the 7 names as before, no exclude_modules, loadable by peft; an
    adapter_config.json without exclude_modules still passes the --resume check."""
    peft = pytest.importorskip("peft")
    from transformers import AutoModelForCausalLM

    args = ["--batch-size", "2", "--max-steps", "2", "--lora-r", "4", "--lora-alpha", "8"]
    result = run_train(tiny_cache, tiny_model_dir, tmp_path / "run", *args)
    assert result.exit_code == 0, result.output
    assert "LoRA r = 4 on down_proj, gate_proj, k_proj, o_proj, q_proj, up_proj, v_proj:" in result.output
    saved = json.loads((tmp_path / "run" / "final" / "adapter_config.json").read_text())
    assert sorted(saved["target_modules"]) == ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"]
    assert saved["exclude_modules"] is None
    policy = peft.PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), tmp_path / "run" / "final")
    assert sum(".lora_A." in n for n, _ in policy.named_parameters()) == 14
    # What the code before wrote (peft < 0.14 wrote no exclude_modules key either) passes the
    # --resume check of the LoRA flags; a Gemma 3 run's old adapters, on the vision tower too, do not.
    older = tmp_path / "older"
    older.mkdir()
    config = {k: v for k, v in saved.items() if k != "exclude_modules"}
    (older / "adapter_config.json").write_text(json.dumps(config))
    adapters.check_adapter_settings(lora_flags(), AutoModelForCausalLM.from_pretrained(tiny_model_dir), older)
    (older / "adapter_config.json").write_text(json.dumps({**config, "target_modules": ["q_proj", "v_proj"]}))
    with pytest.raises(adapters.InputError, match=r"^--resume: .* other exclude_modules \(None there, \(\?!model"):
        adapters.check_adapter_settings(lora_flags("q_proj,v_proj"), tiny_gemma3(), older)


class KernelLinear(torch.nn.Linear):
    """A quantized layer whose forward needs a kernel the meta device has not (transformers'
    FP8Linear fetched one from the hub): the probe cannot run it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.is_meta:
            raise RuntimeError("no kernel for meta tensors")
        return super().forward(x)


class TupleLinear(torch.nn.Linear):
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = super().forward(x)
        return out, out.argmax(-1)


def test_only_a_layer_seen_to_return_no_tensor_is_left_out() -> None:
    """A review found FP8 layers dropped from the targets (and called routers) because their
    probe raised; a probe that cannot run now keeps the layer, as peft wrapped it before."""
    assert adapters._wrappable(KernelLinear(4, 3)) and adapters._wrappable(torch.nn.Linear(4, 3))
    assert not adapters._wrappable(TupleLinear(4, 3))
