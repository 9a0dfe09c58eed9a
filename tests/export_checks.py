"""The checks of `kto-inspect export` on FSDP checkpoints (tests/inspection/test_export_checkpoint.py
says why), run by the tests that already launch FSDP runs, so that no launch is added:
tests/inspection/test_score_sharded_checkpoint.py (full fine-tune and LoRA; its long/checkpoint-2
and short/final hold the same weights) and tests/train/test_fsdp_final_ties.py (a tied head)."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from kto.inspection.cli import main

# Written by the run (final/) and not by export: the model card and kto-train's checksum record.
RUN_ONLY = {"README.md", "checksums.json"}


def export(*args) -> object:
    return CliRunner().invoke(main, ["export", *map(str, args)])


def eval_only_line(model: Path, eval_cache: Path, *extra: str) -> dict:
    """`kto-train --eval-only --model MODEL` 's JSON line, less `model`; the runs' batch size given,
    so that an export (no run record) is evaluated as its checkpoint is."""
    from accelerate.state import AcceleratorState

    from kto.train.cli import main as train

    AcceleratorState._reset_state(reset_partial_state=True)
    result = CliRunner().invoke(train, ["--eval-only", "--model", str(model), "--eval-cache", str(eval_cache), "--batch-size", "2", *extra])
    assert result.exit_code == 0, result.output + repr(result.exception)
    line = json.loads(result.stdout.strip().splitlines()[-1])
    return {k: v for k, v in line.items() if k != "model"}


def tensors(path: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(path)


def eval_only_weights(checkpoint: Path, merged: bool = False) -> dict:
    """The state dict of the policy `kto-train --eval-only --model CHECKPOINT` evaluates (its
    loader); `merged`: its LoRA adapters merged into the base, as `export --merge` merges them."""
    import torch

    from kto.formats.compute.loading import load_completion_logps
    from kto.formats.compute.policy_dirs import policy_to_load

    policy = policy_to_load(str(checkpoint), None)
    lm = load_completion_logps(policy.source, dtype=torch.float32, adjust=policy.adjust).lm
    return (lm.merge_and_unload() if merged else lm).state_dict()


def check_full_export(eval_cache: Path, tmp_path: Path, short: Path, long: Path) -> None:
    ckpt, out = long / "checkpoint-2", tmp_path / "exported"
    result = export(ckpt, out)
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == f"wrote {out}: a model directory, fp32, from {ckpt}"
    final = short / "final"
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in final.iterdir() if p.name not in RUN_ONLY)
    saved, loaded = tensors(out / "model.safetensors"), eval_only_weights(ckpt)
    assert saved.keys() == tensors(final / "model.safetensors").keys()  # the tied head stored once, as final/ stores it
    assert saved.keys() == loaded.keys()  # an untied head (a tied one: test_fsdp_final_ties.py)
    for key, value in saved.items():
        assert value.dtype == loaded[key].dtype and (value - loaded[key]).abs().max().item() == 0, key
    for name in ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        assert (out / name).read_bytes() == (final / name).read_bytes(), name
    assert (out / "model.safetensors").stat().st_mode == (out / "config.json").stat().st_mode  # not transformers' 0600
    assert eval_only_line(out, eval_cache) == eval_only_line(ckpt, eval_cache)
    # What training and kto-precompute refused is now a model directory.
    from kto.formats.compute.sources import resolve_source

    assert resolve_source(str(out)).directory == out.resolve()


def check_tied_export(checkpoint: Path, final: Path, tmp_path: Path) -> None:
    """A model whose head is tied to its embeddings: stored once, as final/ stores it."""
    out = tmp_path / "exported"
    result = export(checkpoint, out)
    assert result.exit_code == 0, result.output
    saved, plain = tensors(out / "model.safetensors"), tensors(final / "model.safetensors")
    assert saved.keys() == plain.keys() and "lm_head.weight" not in saved
    assert all((saved[k] - plain[k]).abs().max().item() == 0 for k in saved)


def check_lora_export(_eval_cache: Path, tmp_path: Path, short: Path, long: Path) -> None:
    ckpt, out, merged = long / "checkpoint-2", tmp_path / "adapters", tmp_path / "merged"
    result = export(ckpt, out)
    assert result.exit_code == 0, result.output
    assert (out / "adapter_model.safetensors").stat().st_mode == (out / "tokenizer_config.json").stat().st_mode
    final = short / "final"
    names = sorted(p.name for p in out.iterdir())  # no README.md: peft's placeholder card is not kept
    assert names == sorted(p.name for p in final.iterdir() if p.name not in RUN_ONLY), names
    exported, plain_config = (json.loads((d / "adapter_config.json").read_text()) for d in (out, final))
    as_set = lambda c: {**c, "target_modules": sorted(c["target_modules"])}  # peft writes a set, in no fixed order
    assert as_set(exported) == as_set(plain_config)
    saved, plain = tensors(out / "adapter_model.safetensors"), tensors(final / "adapter_model.safetensors")
    assert saved.keys() == plain.keys() and all((saved[k] - plain[k]).abs().max().item() == 0 for k in saved)
    # The weights compared, not eval lines: --eval-only of final/ is the run's own eval line (README),
    # and each --eval-only call costs seconds (check_full_export compares the lines once).
    result = export("--merge", ckpt, merged)
    assert result.exit_code == 0, result.output
    assert "LoRA adapters merged into their base (a model directory)" in result.stdout
    assert (merged / "config.json").is_file() and not (merged / "adapter_config.json").exists()
    saved, loaded = tensors(merged / "model.safetensors"), eval_only_weights(ckpt, merged=True)
    assert saved.keys() == loaded.keys()
    assert all((saved[k] - loaded[k]).abs().max().item() == 0 for k in saved)
    unmerged = eval_only_weights(ckpt)  # the adapters are in: each targeted weight moved off its base's
    targeted = [k for k in saved if f"base_model.model.{k.removesuffix('.weight')}.base_layer.weight" in unmerged]
    assert targeted and all((saved[k] - unmerged[f"base_model.model.{k.removesuffix('.weight')}.base_layer.weight"]).abs().max().item() > 0 for k in targeted)
