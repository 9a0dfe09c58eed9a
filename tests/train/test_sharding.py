"""FSDP2 on 2 gloo CPU processes (torchrun, the same accelerate FSDP2 code path as on GPUs):
sharded checkpoints, exact resume, final/ as one directory; with and without LoRA."""

import pytest
import torch
from click.testing import CliRunner
from conftest import crashed_copy, metrics, torchrun
from numerics_bounds import assert_step0_agrees
from safetensors.torch import load_file

from kto.train.cli import main

ARGS = ["--batch-size", "2", "--lr", "1e-2", "--log-every", "1", "--warmup-ratio", "0.2", "--max-steps", "4", "--save-every", "2"]


def torchrun_train(cache, model, out, *extra):
    args = ["--cache", str(cache), "--model", str(model), "--out", str(out), *ARGS, "--fsdp", *extra]
    return torchrun("-m", "kto.train.cli", *args, timeout=600).stderr


def crash_after_step_2(out, dest):
    crashed_copy(out, dest, 2, metrics_lines=3)  # one line past it


def assert_same_run(a, b, weights):
    for x, y in zip(metrics(a), metrics(b), strict=True):
        for key in ("loss", "kl", "rewards/chosen", "rewards/rejected", "lr", "grad_norm"):
            assert x[key] == y[key], (x["step"], key)
    wa, wb = load_file(a / "final" / weights), load_file(b / "final" / weights)
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def assert_every_ranks_files_are_checksummed(ckpt, damaged):
    """Issue 19 item 7: each rank's DCP shard and RNG state is in checksums.json; a flipped byte
    in rank 1's shard makes the checkpoint unusable, naming that file."""
    import json
    import shutil

    from kto.train.checkpoint import checkpoint_problem

    files = json.loads((ckpt / "checksums.json").read_text())["files"]
    shards = sorted(str(p.relative_to(ckpt)) for p in (ckpt / "sharded").glob("*.distcp"))
    assert len(shards) == 2 and set(shards) <= set(files) and {"rng-0.pt", "rng-1.pt", "sharded/.metadata"} <= set(files)
    assert checkpoint_problem(ckpt) is None
    shutil.copytree(ckpt, damaged)
    shard = damaged / shards[1]
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0x01
    shard.write_bytes(bytes(data))
    assert checkpoint_problem(damaged).startswith(f"{shards[1]}: sha256 ")


@pytest.mark.distributed
@pytest.mark.numerics
def test_fsdp_resume_is_exact_and_final_is_one_hf_dir(tiny_cache, tiny_model_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    full = tmp_path / "full"
    log = torchrun_train(tiny_cache, tiny_model_dir, full)
    assert_step0_agrees(log, tiny_cache)  # sharded, otherwise batched: equal to fp32 rounding
    ckpt = full / "checkpoint-2"
    assert (ckpt / "sharded" / ".metadata").is_file() and not (ckpt / "model.safetensors").exists()
    assert {p.name for p in ckpt.glob("rng-*.pt")} == {"rng-0.pt", "rng-1.pt"}
    assert_every_ranks_files_are_checksummed(ckpt, tmp_path / "damaged")
    crashed = tmp_path / "crashed"
    crash_after_step_2(full, crashed)
    log = torchrun_train(tiny_cache, tiny_model_dir, crashed, "--resume")
    assert "resumed from" in log
    assert_same_run(full, crashed, "model.safetensors")
    lm = AutoModelForCausalLM.from_pretrained(full / "final")  # whole, not sharded: gathered on rank 0
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    assert lm.lm_head.weight.shape == base.lm_head.weight.shape
    assert not torch.equal(lm.lm_head.weight, base.lm_head.weight)  # the head trained (gathered when read)
    card = (full / "final" / "README.md").read_text()  # written by rank 0 inside final/'s temp folder
    assert "| steps | 4 (batch 2 × accumulation 1 × 2 processes) |" in card and "| weights in this folder | every weight (full fine-tune) |" in card
    # A sharded checkpoint needs FSDP to resume: one line, not a traceback.
    other = tmp_path / "other"
    crash_after_step_2(full, other)
    result = CliRunner().invoke(main, ["--cache", str(tiny_cache), "--model", str(tiny_model_dir), "--out", str(other), *ARGS, "--resume"])
    # (run/kto_run.json's check names the settings that differ first, world size among them; without
    # it, train/policy.py's WholeCopies.check_checkpoint says that the checkpoint is sharded.)
    assert result.exit_code == 2 and result.output.strip().splitlines()[-1].startswith("kto-train: error: --resume:")


@pytest.mark.distributed
def test_fsdp_with_lora_resumes_exactly_and_saves_a_peft_dir(tiny_cache, tiny_model_dir, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    full = tmp_path / "full"
    torchrun_train(tiny_cache, tiny_model_dir, full, "--lora-r", "4", "--merge-adapters")
    assert (full / "checkpoint-2" / "adapter_config.json").is_file()
    crashed = tmp_path / "crashed"
    crash_after_step_2(full, crashed)
    torchrun_train(tiny_cache, tiny_model_dir, crashed, "--lora-r", "4", "--resume")
    assert_same_run(full, crashed, "adapter_model.safetensors")
    adapters = load_file(full / "final" / "adapter_model.safetensors")
    assert len(adapters) == 28 and all("lora_" in k for k in adapters)
    assert "| weights in this folder | LoRA adapters (r 4, alpha 16) |" in (full / "final" / "README.md").read_text()
    assert "| weights in this folder | the base model with the LoRA adapters merged in" in (full / "final-merged" / "README.md").read_text()
    policy = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), full / "final").eval()
    merged = AutoModelForCausalLM.from_pretrained(full / "final-merged").eval()
    ids = torch.tensor([[1, 200, 300, 400, 500]])
    with torch.no_grad():
        torch.testing.assert_close(policy(input_ids=ids).logits, merged(input_ids=ids).logits, rtol=1e-4, atol=1e-5)


def test_fsdp_refuses_fp16_weights(tiny_cache, tiny_model_dir, tmp_path):
    result = CliRunner().invoke(
        main, ["--cache", str(tiny_cache), "--model", str(tiny_model_dir), "--out", str(tmp_path / "r"), "--fsdp", "--dtype", "fp16", "--mixed-precision", "no"]
    )
    assert result.exit_code == 2
    assert result.output.strip().splitlines()[-1].startswith("kto-train: error: --dtype fp16: not with FSDP")
