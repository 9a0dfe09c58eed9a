"""LoRA adapters (peft): no drift at step 0 beyond fp32 rounding, adapters-only optimizer and checkpoints, exact
resume, final/ as a PEFT dir and a merged HF dir, gradient checkpointing, the one-line refusals."""

import hashlib
import json
import sys

import pytest
import torch
from click.testing import CliRunner
from conftest import crashed_copy, metrics, run_train, train_error_line
from numerics_bounds import assert_step0_agrees, cache_sum_bound
from safetensors.torch import load_file

from kto.train.cli import main


@pytest.fixture(autouse=True, scope="module")  # before the module's own fixtures
def _needs_peft():
    """Every test here needs peft. Skipped when a test runs, not imported at collection: peft
    pulls bitsandbytes and torch's inductor (about 6 s), which every xdist worker paid for each
    run, also the AVX2 `numerics` pass that selects only two tests of this module."""
    pytest.importorskip("peft")


ARGS = ["--batch-size", "2", "--lr", "1e-2", "--log-every", "1", "--warmup-ratio", "0.2", "--lora-r", "4", "--lora-alpha", "8"]


def train_cli(cache, model, out, *extra, args=ARGS):
    return run_train(cache, model, out, *args, *extra)


@pytest.fixture(scope="module")
def lora_run(tiny_cache, tiny_model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("lora") / "run"
    result = train_cli(tiny_cache, tiny_model_dir, out, "--max-steps", "4", "--save-every", "2", "--merge-adapters")
    assert result.exit_code == 0, result.output
    return out, result.output


@pytest.mark.numerics
def test_policy_starts_as_the_reference_and_only_adapters_train(lora_run, tiny_model_dir, tiny_cache):
    out, output = lora_run
    # Adapters start at B = 0: the policy is the reference. Its batches are shaped otherwise
    # than precompute's, so it agrees to fp32 rounding (tests/numerics_bounds.py), not bit for bit.
    assert_step0_agrees(output, tiny_cache)
    lines, sums = metrics(out), cache_sum_bound(tiny_cache)
    assert abs(lines[0]["rewards/chosen"]) <= 0.1 * sums and abs(lines[0]["kl_raw"]) <= sums  # β = 0.1
    assert abs(lines[-1]["rewards/chosen"]) > 0.1 * sums  # moved past what rounding explains
    # 2 layers × 7 linear layers × (A: 4×in + B: out×4); Llama-tiny: hidden 32, mlp 64, kv 16.
    per_layer = 4 * (32 + 32) * 2 + 4 * (32 + 16) * 2 + 4 * (32 + 64) * 3
    assert f"{2 * per_layer:,} trainable parameters" in output
    ckpt = out / "checkpoint-2"
    adapter = load_file(ckpt / "adapter_model.safetensors")
    assert len(adapter) == 28 and all("lora_" in k for k in adapter)
    assert not (ckpt / "model.safetensors").exists()
    optimizer = torch.load(ckpt / "optimizer.pt", weights_only=True)
    assert len(optimizer["state"]) == 28  # AdamW holds moments for the adapters only
    assert sum(s["exp_avg"].numel() for s in optimizer["state"].values()) == 2 * per_layer


def test_final_is_a_peft_dir_and_the_merged_dir_is_the_same_model(lora_run, tiny_model_dir):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    out, _ = lora_run
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    before = {k: v.clone() for k, v in base.state_dict().items()}
    policy = PeftModel.from_pretrained(base, out / "final").eval()
    merged = AutoModelForCausalLM.from_pretrained(out / "final-merged").eval()
    ids = torch.tensor([[1, 200, 300, 400, 500, 600]])
    with torch.no_grad():
        a, b = policy(input_ids=ids).logits, merged(input_ids=ids).logits
        with policy.disable_adapter():
            ref = policy(input_ids=ids).logits
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    assert (a - ref).abs().max() > 1e-4  # the adapters moved the policy
    # The merged weights differ from the base exactly where adapters were applied.
    m = merged.state_dict()
    assert not torch.equal(m["model.layers.0.self_attn.q_proj.weight"], before["model.layers.0.self_attn.q_proj.weight"])
    assert torch.equal(m["model.embed_tokens.weight"], before["model.embed_tokens.weight"])
    assert torch.equal(m["lm_head.weight"], before["lm_head.weight"])


def test_resume_with_adapters_is_exact(lora_run, tiny_cache, tiny_model_dir, tmp_path):
    out, _ = lora_run
    crashed = crashed_copy(out, tmp_path / "crashed", 2, metrics_lines=2)
    result = train_cli(tiny_cache, tiny_model_dir, crashed, "--max-steps", "4", "--save-every", "2", "--resume")
    assert result.exit_code == 0, result.output
    for x, y in zip(metrics(out), metrics(crashed), strict=True):
        for key in ("loss", "kl", "rewards/chosen", "rewards/rejected", "lr", "grad_norm"):
            assert x[key] == y[key], (x["step"], key)
    a, b = load_file(out / "final" / "adapter_model.safetensors"), load_file(crashed / "final" / "adapter_model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_resume_takes_the_same_lora_targets_however_written(lora_run, tiny_cache, tiny_model_dir, tmp_path):
    """Seen by a hunter: `--lora-target-modules q_proj,v_proj` resumed with `v_proj,q_proj` (or
    "q_proj, v_proj") was refused as other settings, though peft builds the same adapters. The
    default (every linear layer of the decoder, recorded as null) written out as a list is the same
    too. The record and the checkpoints' settings digest keep the run's first spelling; a real
    difference is still refused, named."""
    out = tmp_path / "named"
    two = ["--max-steps", "2", "--save-every", "1"]
    result = train_cli(tiny_cache, tiny_model_dir, out, *two, "--lora-target-modules", "q_proj,v_proj")
    assert result.exit_code == 0, result.output
    for i, spelling in enumerate(("v_proj,q_proj", "q_proj, v_proj")):
        crashed = crashed_copy(out, tmp_path / f"crashed{i}", 1, metrics_lines=1)
        resumed = train_cli(tiny_cache, tiny_model_dir, crashed, *two, "--lora-target-modules", spelling, "--resume")
        assert resumed.exit_code == 0, resumed.output
        assert json.loads((crashed / "kto_run.json").read_text())["config"]["lora_target_modules"] == "q_proj,v_proj"
        assert metrics(crashed)[-1]["loss"] == metrics(out)[-1]["loss"]
    other = train_cli(tiny_cache, tiny_model_dir, crashed_copy(out, tmp_path / "other", 1), *two, "--lora-target-modules", "q_proj", "--resume")
    assert other.exit_code == 2 and "lora_target_modules (q_proj,v_proj there, q_proj now)" in train_error_line(other.output)
    default, _ = lora_run
    crashed = crashed_copy(default, tmp_path / "default", 2, metrics_lines=2)
    every = "v_proj,q_proj,k_proj,o_proj, gate_proj,up_proj,down_proj"
    result = train_cli(tiny_cache, tiny_model_dir, crashed, "--max-steps", "4", "--save-every", "2", "--lora-target-modules", every, "--resume")
    assert result.exit_code == 0, result.output
    assert json.loads((crashed / "kto_run.json").read_text())["config"]["lora_target_modules"] is None


def test_a_resumed_run_names_the_base_as_this_kto_does(lora_run, tiny_cache, tiny_model_dir, tmp_path):
    """A checkpoint from an earlier kto may name its base otherwise (a GGUF run named the .gguf
    file, which peft cannot load): final/ and later checkpoints name the base as --model is now."""
    out, _ = lora_run
    crashed = crashed_copy(out, tmp_path / "crashed", 2, metrics_lines=2)
    config_path = crashed / "checkpoint-2" / "adapter_config.json"
    saved = json.loads(config_path.read_text())
    config_path.write_text(json.dumps({**saved, "base_model_name_or_path": "elsewhere/model.gguf"}))
    # (the checkpoint's checksums.json records the file: rewrite that entry as a kto that wrote it would have)
    checksums = json.loads((crashed / "checkpoint-2" / "checksums.json").read_text())
    checksums["files"]["adapter_config.json"] = hashlib.sha256(config_path.read_bytes()).hexdigest()
    (crashed / "checkpoint-2" / "checksums.json").write_text(json.dumps(checksums))
    result = train_cli(tiny_cache, tiny_model_dir, crashed, "--max-steps", "4", "--save-every", "2", "--resume")
    assert result.exit_code == 0, result.output
    for folder in ("final", "checkpoint-4"):
        named = json.loads((crashed / folder / "adapter_config.json").read_text())["base_model_name_or_path"]
        assert named == json.loads((out / "final" / "adapter_config.json").read_text())["base_model_name_or_path"] != "elsewhere/model.gguf"


def test_resuming_adapters_needs_the_same_lora_flags(lora_run, tiny_cache, tiny_model_dir, tmp_path):
    out, _ = lora_run
    crashed = crashed_copy(out, tmp_path / "crashed", 2)
    plain = [a for a in ARGS if a not in ("--lora-r", "4", "--lora-alpha", "8")]
    result = train_cli(tiny_cache, tiny_model_dir, crashed, "--max-steps", "4", "--save-every", "2", "--resume", args=plain)
    assert result.exit_code == 2 and "lora_r (4 there, 0 now)" in result.output.strip().splitlines()[-1]
    result = train_cli(tiny_cache, tiny_model_dir, crashed, "--max-steps", "4", "--save-every", "2", "--resume", "--lora-r", "8")
    assert result.exit_code == 2 and "lora_r (4 there, 8 now)" in result.output
    # Without run/kto_run.json (a checkpoint copied elsewhere), the checkpoint itself says so.
    (crashed / "kto_run.json").unlink()
    from kto.train.adapters import check_checkpoint_kind
    from kto.train.config import TrainConfig

    with pytest.raises(Exception, match=r"holds LoRA adapters \(r = 4\), not a whole model; pass --lora-r 4"):
        check_checkpoint_kind(TrainConfig(cache=tiny_cache, model=str(tiny_model_dir), out=crashed), crashed / "checkpoint-2")


def test_lora_with_gradient_checkpointing_gives_the_same_step(lora_run, tiny_cache, tiny_model_dir, tmp_path):
    out, _ = lora_run
    result = train_cli(tiny_cache, tiny_model_dir, tmp_path / "r", "--max-steps", "2", "--gradient-checkpointing")
    assert result.exit_code == 0, result.output
    a, b = metrics(out), metrics(tmp_path / "r")
    assert b[0]["grad_norm"] > 0
    assert b[0]["loss"] == a[0]["loss"] and b[0]["grad_norm"] == pytest.approx(a[0]["grad_norm"], rel=1e-5)


def test_reentrant_checkpointing_reaches_the_adapters(tiny_model_dir, tiny_cache, tmp_path):
    """The enable_input_require_grads trap: with reentrant checkpointing and a frozen base, no
    input of a checkpointed layer requires grad, so the adapters inside it get no gradient.
    transformers 5 and peft add the hook in the usual order, and adapters.prepare_base adds it
    whenever --gradient-checkpointing is set, whatever the order."""
    from transformers import AutoModelForCausalLM

    from kto.train import adapters
    from kto.train.config import TrainConfig

    lm = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": True})
    cfg = TrainConfig(cache=tiny_cache, model=str(tiny_model_dir), out=tmp_path, lora_r=4, gradient_checkpointing=True)
    policy = adapters.add_adapters(cfg, lm).train()
    ids = torch.tensor([[1, 200, 300, 400]])

    def adapter_grads():
        policy.zero_grad(set_to_none=True)
        policy(input_ids=ids).logits.sum().backward()
        return [p.grad for n, p in policy.named_parameters() if "lora_B" in n]

    assert all(g is not None and g.abs().sum() > 0 for g in adapter_grads())


def test_bad_lora_input_is_one_line(tiny_cache, tiny_model_dir, tmp_path, monkeypatch):
    result = train_cli(tiny_cache, tiny_model_dir, tmp_path / "a", "--max-steps", "1", "--lora-target-modules", "q_proj,qkv")
    assert result.exit_code == 2 and "has no linear layer named qkv (its decoder has: down_proj, gate_proj" in result.output
    assert not (tmp_path / "a").exists() or not any((tmp_path / "a").iterdir())  # nothing written
    plain = [a for a in ARGS if a not in ("--lora-r", "4", "--lora-alpha", "8")]
    result = train_cli(tiny_cache, tiny_model_dir, tmp_path / "b", "--load-in-4bit", args=plain)
    assert result.exit_code == 2 and "--load-in-4bit: needs adapters (--lora-r R > 0)" in result.output
    result = train_cli(tiny_cache, tiny_model_dir, tmp_path / "b", "--merge-adapters", args=plain)
    assert result.exit_code == 2 and "--merge-adapters: needs adapters (--lora-r R > 0); with every weight trained, final/ is" in result.output
    from kto.train import adapters

    monkeypatch.setattr(adapters, "bitsandbytes_backend", lambda device, bits: "bitsandbytes 0.0 has no cpu backend (RuntimeError)")
    result = train_cli(tiny_cache, tiny_model_dir, tmp_path / "c", "--load-in-4bit")
    assert result.exit_code == 2
    assert result.output.strip().splitlines()[-1] == "kto-train: error: --load-in-4bit: bitsandbytes 0.0 has no cpu backend (RuntimeError)"


def test_the_lm_head_as_a_target_is_refused_as_what_it_is(tiny_cache, tiny_model_dir, tmp_path):
    """Not "has no linear layer named lm_head": it has one, the LM head, which the chunked scoring
    reads by its weight (an adapter there would never run)."""
    result = train_cli(tiny_cache, tiny_model_dir, tmp_path / "a", "--max-steps", "1", "--lora-target-modules", "q_proj,lm_head")
    assert result.exit_code == 2
    assert train_error_line(result.output) == (
        "kto-train: error: --lora-target-modules q_proj,lm_head: lm_head is the model's LM head, which kto-train does not adapt "
        "(its log-probs use the head's weight directly, so an adapter there would never run); name layers of the decoder only"
    )
    assert not (tmp_path / "a").exists() or not any((tmp_path / "a").iterdir())  # refused before --out is touched


def test_missing_bitsandbytes_is_refused_before_the_cache_and_any_model(tiny_cache, tiny_model_dir, tmp_path, monkeypatch):
    """QLoRA's preconditions come first: without bitsandbytes, --load-in-4bit is one line before
    the cache is read (a missing one is not even noticed) and before any model or tokenizer loads."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    def loaded(*args, **kwargs):
        raise AssertionError("loaded before the bitsandbytes check")

    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # import bitsandbytes -> ImportError
    for cls, name in ((AutoModelForCausalLM, "from_pretrained"), (AutoModelForCausalLM, "from_config"), (AutoTokenizer, "from_pretrained")):
        monkeypatch.setattr(cls, name, loaded)
    for cache in (tmp_path / "no-cache-here", tiny_cache):
        out = tmp_path / "run"
        result = train_cli(cache, tiny_model_dir, out, "--load-in-4bit", "--max-steps", "1")
        assert result.exit_code == 2, result.output
        assert train_error_line(result.output) == "kto-train: error: --load-in-4bit: bitsandbytes is not installed (pip install 'kto-offline[lora]')"
        assert not out.exists()


@pytest.mark.skipif(__import__("importlib").util.find_spec("bitsandbytes") is None, reason="bitsandbytes not installed")
def test_the_8bit_probe_asks_for_int8(monkeypatch):
    """--load-in-8bit needs bitsandbytes' int8 kernels, not its NF4 ones: a release without the
    int8 op on this device is refused for 8-bit and still accepted for 4-bit."""
    import bitsandbytes.functional as F

    from kto.train.adapters import bitsandbytes_backend

    if bitsandbytes_backend("cpu", 4):
        pytest.skip(bitsandbytes_backend("cpu", 4))

    def no_int8(*args, **kwargs):
        raise NotImplementedError("no int8 kernel")

    monkeypatch.setattr(F, "int8_vectorwise_quant", no_int8)
    assert bitsandbytes_backend("cpu", 4) is None
    assert "has no cpu backend (NotImplementedError)" in bitsandbytes_backend("cpu", 8)


def test_bitsandbytes_backend_says_why_it_cannot_quantize():
    from kto.train.adapters import bitsandbytes_backend

    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        assert bitsandbytes_backend("cpu") == "bitsandbytes is not installed (pip install 'kto-offline[lora]')"
    else:
        why = bitsandbytes_backend("cpu")
        assert why is None or "has no cpu backend" in why


@pytest.mark.skipif(__import__("importlib").util.find_spec("bitsandbytes") is None, reason="bitsandbytes not installed")
def test_qlora_4bit_trains_where_bitsandbytes_has_a_backend(tiny_cache, tiny_model_dir, tmp_path):
    from kto.train.adapters import bitsandbytes_backend

    if bitsandbytes_backend("cpu"):
        pytest.skip(bitsandbytes_backend("cpu"))
    result = train_cli(tiny_cache, tiny_model_dir, tmp_path / "q", "--max-steps", "2", "--load-in-4bit")
    assert result.exit_code == 0, result.output
    assert "not enforced with quantized base weights" in result.output
    assert len(load_file(tmp_path / "q" / "final" / "adapter_model.safetensors")) == 28


def test_kto_inspect_scores_an_adapter_dir(lora_run, tiny_cache, tmp_path):
    from kto.inspection.cli import main as inspect

    out, _ = lora_run
    runs = {}
    for name in ("final", "final-merged"):
        result = CliRunner().invoke(inspect, ["score", str(tiny_cache), "--model", str(out / name), "--out", str(tmp_path / f"{name}.parquet"), "--json"])
        assert result.exit_code == 0, result.output
        runs[name] = json.loads(result.stdout)
    a, b = runs["final"], runs["final-merged"]
    assert a["desirable"]["mean_reward"] != 0
    assert a["desirable"]["mean_reward"] == pytest.approx(b["desirable"]["mean_reward"], rel=1e-3, abs=1e-6)
    assert a["undesirable"]["mean_reward"] == pytest.approx(b["undesirable"]["mean_reward"], rel=1e-3, abs=1e-6)


def test_every_config_field_is_a_flag():
    """The CLI mirrors TrainConfig one to one (the LoRA and FSDP fields included)."""
    from kto.train.config import field_names

    flags = {p.name for p in main.params if p.expose_value} - {"config_file"}
    assert flags == set(field_names())


def test_disk_full_while_writing_final_merged_is_one_line(tiny_cache, tiny_model_dir, tmp_path, monkeypatch):
    """Issue 19 item 12: safetensors says a full disk with its own SafetensorError (measured on a
    64 KiB tmpfs: "Error while serializing: I/O error: No space left on device (os error 28)"),
    which came out of --merge-adapters as a traceback."""
    import transformers.modeling_utils
    from safetensors import SafetensorError

    def full(tensors, filename, metadata=None):
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(transformers.modeling_utils, "safe_save_file", full)
    out = tmp_path / "r"
    result = train_cli(tiny_cache, tiny_model_dir, out, "--max-steps", "1", "--merge-adapters")
    assert result.exit_code == 2, result.output
    line = [x for x in result.output.splitlines() if x.startswith("kto-train: error:")]
    assert "Traceback" not in result.output and len(line) == 1, result.output
    assert line[0].endswith(f"{out / 'final-merged'}: no space left on device; free some space and run the command again"), line
    assert (out / "final").is_dir() and not [p.name for p in out.iterdir() if "final-merged" in p.name]


@pytest.mark.parametrize("keep_dropout", [False, True])
def test_lora_dropout_is_off_with_the_models_dropout(tiny_cache, tiny_model_dir, tmp_path, keep_dropout):
    """TRL's and LLaMA-Factory's KTO trainers disable dropout after the adapters are added, so
    a TRL file's lora_dropout 0.05 (use_peft's default) trains without it there. Here the
    model's dropout was turned off before peft added its own: train-mode forwards stayed
    random, the KL pass noisy, and --keep-dropout changed nothing. The adapters' B is made
    non-zero, else their output (and any dropout in it) is zero."""
    from kto.formats.compute.sources import resolve_source
    from kto.train.adapters import add_adapters
    from kto.train.config import TrainConfig
    from kto.train.model import load_policy

    cfg = TrainConfig(cache=tiny_cache, model=str(tiny_model_dir), out=tmp_path, lora_r=4, lora_dropout=0.5, keep_dropout=keep_dropout)
    policy = load_policy(cfg, resolve_source(cfg.model), lambda lm: add_adapters(cfg, lm))
    lm = policy.lm
    with torch.no_grad():
        for name, p in lm.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5, generator=torch.Generator().manual_seed(1))
    ids = torch.tensor([[1, 200, 300, 400, 500, 600]])
    lm.train()
    with torch.no_grad():
        first, second = lm(input_ids=ids).logits, lm(input_ids=ids).logits
    assert torch.equal(first, second) is not keep_dropout


def test_adding_adapters_warns_nothing(tiny_model_dir, tiny_cache, tmp_path):
    """peft's PeftModel asks is_gradient_checkpointing, which transformers 5 deprecates: a
    FutureWarning on every LoRA run, nothing the user could change."""
    import warnings

    from transformers import AutoModelForCausalLM

    from kto.train.adapters import add_adapters
    from kto.train.config import TrainConfig

    lm = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        add_adapters(TrainConfig(cache=tiny_cache, model=str(tiny_model_dir), out=tmp_path, lora_r=4), lm)
    assert not [w for w in caught if "is_gradient_checkpointing" in str(w.message)], [str(w.message) for w in caught]


@pytest.mark.skipif(__import__("importlib").util.find_spec("bitsandbytes") is None, reason="bitsandbytes not installed")
@pytest.mark.parametrize("bits", [4, 8])
def test_the_probe_quantizes_float16_as_the_cuda_kernels_require(monkeypatch, bits):
    """bitsandbytes 0.50.2's CUDA int8_vectorwise_quant raises ValueError unless A is float16
    (backends/cuda/ops.py); CPU's kernel takes any dtype, so a float32 probe passed here and
    refused --load-in-8bit on every GPU. With the quantizers wrapped in that check, the probe
    must still find the backend, for 8-bit and for 4-bit alike."""
    import bitsandbytes.functional as F

    from kto.train.adapters import bitsandbytes_backend

    if why := bitsandbytes_backend("cpu", bits):
        pytest.skip(why)
    for name in ("int8_vectorwise_quant", "quantize_4bit"):
        real = getattr(F, name)

        def as_on_cuda(A, *args, _real=real, **kwargs):
            if A.dtype != torch.float16:
                raise ValueError(f"A must be float16, got {A.dtype}")
            return _real(A, *args, **kwargs)

        monkeypatch.setattr(F, name, as_on_cuda)
    assert bitsandbytes_backend("cpu", bits) is None


@pytest.mark.skipif(__import__("importlib").util.find_spec("bitsandbytes") is None, reason="bitsandbytes not installed")
@pytest.mark.parametrize(
    ("dtype", "autocast", "expected"),
    [
        ("fp32", "no", torch.float32),
        ("fp32", "bf16", torch.bfloat16),
        ("fp32", "fp16", torch.float16),
        ("bf16", "no", torch.bfloat16),
        ("fp16", "no", torch.float16),
    ],
)
def test_4bit_layers_compute_in_the_runs_dtype(tiny_model_dir, tmp_path, dtype, autocast, expected):
    """NF4 layers compute in what the rest of the run computes in: the autocast dtype, else the
    weights' --dtype. A fixed bfloat16 sent fp16 runs (a T4 has no bf16) and --mixed-precision no
    runs through bf16 matmuls in every quantized layer."""
    from kto.train.adapters import bitsandbytes_backend, quantization_config
    from kto.train.config import TrainConfig

    if why := bitsandbytes_backend("cpu", 4):
        pytest.skip(why)
    cfg = TrainConfig(cache=tmp_path, model=str(tiny_model_dir), out=tmp_path / "o", lora_r=4, load_in_4bit=True, dtype=dtype)
    assert quantization_config(cfg, "cpu", autocast).bnb_4bit_compute_dtype == expected


def test_wrapping_the_policy_in_adapters_holds_bitsandbytes_logging_back():
    """peft imports bitsandbytes as it wraps the first layer (peft_quietly's block, in
    add_adapters and with_adapters); on a CPU with AVX512-BF16 its CPU backend then logged
    `Failed to load CPU gemm_4bit_forward from kernels-community: …` in every LoRA run, quantized
    or not (seen in a fresh process; a test process has imported it long before). Inside the
    block a warning of that logger is held back; after it, the logger is as it was."""
    import logging

    from kto.formats.compute.adapters import peft_quietly

    ops = logging.getLogger("bitsandbytes.backends.cpu.ops")
    assert ops.isEnabledFor(logging.WARNING)
    with peft_quietly():
        assert not ops.isEnabledFor(logging.WARNING) and ops.isEnabledFor(logging.ERROR)
    assert ops.isEnabledFor(logging.WARNING)
