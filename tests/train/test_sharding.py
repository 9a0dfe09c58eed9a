"""FSDP2 on 2 gloo CPU processes (torchrun, the same accelerate FSDP2 code path as on GPUs):
sharded checkpoints, exact resume, final/ as one directory; with and without LoRA.

Starting torchrun and its workers (importing torch, transformers, peft; loading the model) costs
far more than the 4-step runs, so the runs share two launches: one script calls `kto.train.run`
twice (FSDP, then FSDP with LoRA) in a process group it made itself, and a fresh launch (as after
a crash) resumes both crashed copies from kto-train's flags, one after the other."""

import json
import re
import textwrap

import pytest
import torch
from click.testing import CliRunner
from conftest import crashed_copy, metrics, torchrun
from numerics_bounds import assert_step0_agrees
from safetensors.torch import load_file

from kto.train.cli import main

ARGS = ["--batch-size", "2", "--lr", "1e-2", "--log-every", "1", "--warmup-ratio", "0.2", "--max-steps", "4", "--save-every", "2"]
LORA = ["--lora-r", "4"]
NEXT_RUN = "=== the script's second kto.train.run ==="
# The straight runs: ARGS and --fsdp (then LORA and --merge-adapters) as TrainConfig's keywords.
# The resumes go through the CLI with the flags, and kto_run.json refuses a resume whose settings
# differ from the run's: the two spellings are the same run.
STRAIGHT_RUNS = f"""
    import sys
    from pathlib import Path

    import torch
    import torch.distributed as dist

    import kto.train
    from kto.train.config import TrainConfig

    cache, model, full, lora = sys.argv[1:5]
    dist.init_process_group("gloo")  # the script's own group: kto.train.run must leave it alone
    common = dict(cache=Path(cache), model=model, batch_size=2, lr=1e-2, log_every=1, warmup_ratio=0.2, max_steps=4, save_every=2, fsdp=True)
    kto.train.run(TrainConfig(out=Path(full), **common))
    if dist.get_rank() == 0:
        print("{NEXT_RUN}", file=sys.stderr, flush=True)
    kto.train.run(TrainConfig(out=Path(lora), lora_r=4, merge_adapters=True, **common))
    ranks = torch.ones(1)
    dist.all_reduce(ranks)  # the group is still the script's to use
    assert ranks.item() == 2, ranks
    dist.destroy_process_group()
"""
# kto-train's flags, each list made a TrainConfig by the CLI's own code, then `kto.train.run` on
# each in turn in one process (the command itself would end the process group it made).
CLI_RUNS = """
    import json, sys

    import kto.train
    from kto.train.cli import config_from, main

    for args in json.loads(sys.argv[1]):
        ctx = main.make_context("kto-train", args)
        flags = dict(ctx.params)
        kto.train.run(config_from(ctx, flags.pop("config_file"), flags))
"""


def launch(tmp_path, name: str, script: str, *args: str) -> str:
    """`script` (dedented) under torchrun on 2 processes; returns its stderr."""
    path = tmp_path / f"{name}.py"
    path.write_text(textwrap.dedent(script))
    return torchrun(str(path), *args, timeout=600).stderr


def cli_args(cache, model, out, *extra) -> list[str]:
    return ["--cache", str(cache), "--model", str(model), "--out", str(out), *ARGS, "--fsdp", *extra]


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


def check_fsdp_run(full, tiny_model_dir, tmp_path):
    """The straight FSDP run: a sharded checkpoint with every rank's files, final/ whole."""
    from transformers import AutoModelForCausalLM

    ckpt = full / "checkpoint-2"
    assert (ckpt / "sharded" / ".metadata").is_file() and not (ckpt / "model.safetensors").exists()
    assert {p.name for p in ckpt.glob("rng-*.pt")} == {"rng-0.pt", "rng-1.pt"}
    assert_every_ranks_files_are_checksummed(ckpt, tmp_path / "damaged")
    lm = AutoModelForCausalLM.from_pretrained(full / "final")  # whole, not sharded: gathered on rank 0
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    assert lm.lm_head.weight.shape == base.lm_head.weight.shape
    assert not torch.equal(lm.lm_head.weight, base.lm_head.weight)  # the head trained (gathered when read)
    card = (full / "final" / "README.md").read_text()  # written by rank 0 inside final/'s temp folder
    assert "| steps | 4 (batch 2 × accumulation 1 × 2 processes) |" in card and "| weights in this folder | every weight (full fine-tune) |" in card


def check_lora_run(full, tiny_model_dir):
    """The straight FSDP + LoRA run: adapter checkpoints, final/ a PEFT dir, final-merged/ the same model."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    assert (full / "checkpoint-2" / "adapter_config.json").is_file()
    adapters = load_file(full / "final" / "adapter_model.safetensors")
    assert len(adapters) == 28 and all("lora_" in k for k in adapters)
    assert "| weights in this folder | LoRA adapters (r 4, alpha 16) |" in (full / "final" / "README.md").read_text()
    assert "| weights in this folder | the base model with the LoRA adapters merged in" in (full / "final-merged" / "README.md").read_text()
    policy = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), full / "final").eval()
    merged = AutoModelForCausalLM.from_pretrained(full / "final-merged").eval()
    ids = torch.tensor([[1, 200, 300, 400, 500]])
    with torch.no_grad():
        torch.testing.assert_close(policy(input_ids=ids).logits, merged(input_ids=ids).logits, rtol=1e-4, atol=1e-5)


@pytest.mark.distributed
@pytest.mark.numerics
def test_fsdp_and_fsdp_lora_runs_in_one_launch_resume_exactly_in_another(tiny_cache, tiny_model_dir, tmp_path):
    """One test, so that pytest-xdist runs the two launches once (a module fixture would be
    built on each worker that takes a test of the module).
    Launch 1: `kto.train.run` twice in a process group the script made; the group survives both
    runs (before, the first run's `end_training` destroyed it and the second run failed).
    Launch 2: both crashed copies resumed from checkpoint-2, from kto-train's flags, in one
    process: the first run makes the process group, the second runs in it."""
    full, lora = tmp_path / "full", tmp_path / "lora"
    log = launch(tmp_path, "straight", STRAIGHT_RUNS, str(tiny_cache), str(tiny_model_dir), str(full), str(lora))
    assert log.count(NEXT_RUN) == 1
    for part in log.split(NEXT_RUN):  # each run's policy at step 0 is the reference: sharded, otherwise batched
        assert_step0_agrees(part, tiny_cache)
    check_fsdp_run(full, tiny_model_dir, tmp_path)
    check_lora_run(lora, tiny_model_dir)
    crashed, crashed_lora = tmp_path / "crashed", tmp_path / "crashed-lora"
    crash_after_step_2(full, crashed)
    crash_after_step_2(lora, crashed_lora)
    resumes = [cli_args(tiny_cache, tiny_model_dir, crashed, "--resume"), cli_args(tiny_cache, tiny_model_dir, crashed_lora, *LORA, "--resume")]
    log = launch(tmp_path, "resumes", CLI_RUNS, json.dumps(resumes))
    assert re.findall(r"^resumed from (\S+) at step 2$", log, re.MULTILINE) == [str(crashed / "checkpoint-2"), str(crashed_lora / "checkpoint-2")], log[-3000:]
    assert_same_run(full, crashed, "model.safetensors")
    assert_same_run(lora, crashed_lora, "adapter_model.safetensors")
    # A sharded checkpoint needs FSDP to resume: one line, not a traceback.
    other = tmp_path / "other"
    crash_after_step_2(full, other)
    result = CliRunner().invoke(main, ["--cache", str(tiny_cache), "--model", str(tiny_model_dir), "--out", str(other), *ARGS, "--resume"])
    # (run/kto_run.json's check names the settings that differ first, world size among them; without
    # it, train/policy.py's WholeCopies.check_checkpoint says that the checkpoint is sharded.)
    assert result.exit_code == 2 and result.output.strip().splitlines()[-1].startswith("kto-train: error: --resume:")


def test_fsdp_refuses_fp16_weights(tiny_cache, tiny_model_dir, tmp_path):
    result = CliRunner().invoke(
        main, ["--cache", str(tiny_cache), "--model", str(tiny_model_dir), "--out", str(tmp_path / "r"), "--fsdp", "--dtype", "fp16", "--mixed-precision", "no"]
    )
    assert result.exit_code == 2
    assert result.output.strip().splitlines()[-1].startswith("kto-train: error: --dtype fp16: not with FSDP")


@pytest.mark.parametrize("mixed", ["bf16", "fp16"])
def test_fsdp_keeps_the_weights_dtype_and_reduces_in_fp32_under_mixed_precision(tmp_path, monkeypatch, mixed):
    """On GPUs accelerate's state calls fsdp_plugin.set_mixed_precision(mixed) (state.py, when
    --mixed-precision is not no: bf16 by default on CUDA), which, to a plugin without a policy,
    gives MixedPrecisionPolicy(param_dtype=bf16, reduce_dtype=bf16): bf16 all-gathers and bf16
    gradient reduction, not the fp32 weights under bf16 autocast (`amp-bf16`) that the cache was
    scored with. The CPU runs never reach that call, so it is made here as accelerate makes it."""
    from torch.distributed.fsdp import MixedPrecisionPolicy

    from kto.train import sharding
    from kto.train.config import TrainConfig

    for name in ("FSDP_VERSION", "FSDP_AUTO_WRAP_POLICY", "FSDP_RESHARD_AFTER_FORWARD", "ACCELERATE_USE_FSDP"):
        monkeypatch.delenv(name, raising=False)
    plugin = sharding.fsdp_plugin(TrainConfig(cache=tmp_path, model="m", out=tmp_path / "run", fsdp=True))
    plugin.set_mixed_precision(mixed)
    policy = plugin.mixed_precision_policy
    assert isinstance(policy, MixedPrecisionPolicy)
    assert policy.param_dtype is None and policy.reduce_dtype == torch.float32
