"""`kto-inspect export` at its edges, found by a review: OUT under a missing folder or a file
(a traceback), OUT inside the checkpoint (written into it), a record's unknown --dtype (a
KeyError), refusals that named `--model` for export's CHECKPOINT, a killed export's temp folder
that nothing removed, and peft's placeholder README.md in an adapter export.

The FSDP checkpoints here are made in this one process (torch.distributed.checkpoint with
no_dist, the keys "lm.<HF key>" kto-train's FSDP save writes: formats/compute/sharded.py), so no
launch is needed; tests/export_checks.py checks exports of real FSDP runs."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import one_line_error
from export_checks import export, tensors

from kto.formats.runrecord import write_run_config

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja")


def fsdp_checkpoint(folder: Path, model_dir: Path, lora: bool = False) -> dict:
    """`folder` as an FSDP checkpoint of `model_dir` (every weight; under `lora` an adapter_config.json
    and the adapters only, as kto-train saves them); returns the weights saved, by HF key."""
    import torch.distributed.checkpoint as dcp
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir)
    if lora:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
        model.peft_config["default"].save_pretrained(folder)
    saved = {k: p.detach().clone() for k, p in model.named_parameters() if p.requires_grad}
    dcp.save({"model": {f"lm.{k}": v for k, v in saved.items()}}, checkpoint_id=folder / "sharded", no_dist=True)
    for name in TOKENIZER_FILES:
        if (model_dir / name).is_file():
            shutil.copy(model_dir / name, folder / name)
    return saved


def fake_checkpoint(folder: Path) -> Path:
    (folder / "sharded").mkdir(parents=True)
    return folder


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_out_under_a_missing_folder_or_a_file_is_one_line(tmp_path):
    ckpt = fake_checkpoint(tmp_path / "checkpoint-2")
    (tmp_path / "afile").write_text("")
    out = tmp_path / "nodir" / "x"
    assert one_line_error(export(ckpt, out)) == f"kto-inspect: error: OUT {out}: directory {out.parent} does not exist"
    for out in (tmp_path / "afile" / "x", tmp_path / "afile" / "sub" / "x"):
        assert one_line_error(export(ckpt, out)) == f"kto-inspect: error: OUT {out}: {tmp_path / 'afile'}, above it, is a file, not a directory"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "checkpoint-2"]


def test_out_inside_the_checkpoint_is_refused_outside_a_run_too(tmp_path):
    ckpt = fake_checkpoint(tmp_path / "lone" / "checkpoint-2")
    for out in (ckpt / "sharded" / "x", ckpt / "x"):
        assert one_line_error(export(ckpt, out, "--base-model", "tiny")) == (
            f"kto-inspect: error: OUT {out}: inside CHECKPOINT {ckpt}, which holds only the checkpoint's files; choose a directory outside it"
        )
    assert sorted(p.name for p in (ckpt / "sharded").iterdir()) == []


def test_a_records_unknown_dtype_is_one_line_naming_the_record(tmp_path):
    run = tmp_path / "run"
    fake_checkpoint(run / "checkpoint-2")
    write_run_config(run, {"model": "tiny", "dtype": "fp8"}, {})
    assert one_line_error(export(run / "checkpoint-2", tmp_path / "o")) == (
        f"kto-inspect: error: CHECKPOINT {run / 'checkpoint-2'}: its run's record {run / 'kto_run.json'} has config.dtype 'fp8', "
        "not one of fp32, bf16, fp16; give a checkpoint of an unedited run"
    )


def test_refusals_name_checkpoint_not_model(tmp_path, monkeypatch):
    lone = fake_checkpoint(tmp_path / "lone" / "checkpoint-2")
    assert one_line_error(export(lone, tmp_path / "o")) == (
        f"kto-inspect: error: CHECKPOINT {lone}: an FSDP checkpoint (its weights are sharded in sharded/*.distcp) with no run record "
        "(RUN/kto_run.json) naming the model it trained; pass that model as --base-model"
    )
    run = tmp_path / "run"
    fake_checkpoint(run / "checkpoint-2")
    write_run_config(run, {"model": "tiny"}, {})
    monkeypatch.chdir(run)
    assert one_line_error(export("checkpoint-2", tmp_path / "o")) == (
        f"kto-inspect: error: CHECKPOINT checkpoint-2: its run's --model, tiny, as {run.resolve() / 'kto_run.json'} records it, is a path "
        "relative to the folder that run started in (the record does not say which), and there is no tiny here; "
        "run this from that folder, or pass that model as --base-model"
    )


def test_a_killed_exports_temp_folder_is_removed_and_said(tmp_path, tiny_model_dir):
    ckpt = tmp_path / "lone" / "checkpoint-2"
    saved = fsdp_checkpoint(ckpt, tiny_model_dir)
    dead, live = tmp_path / f".out.tmp-{dead_pid()}-1", tmp_path / f".out.tmp-{os.getpid()}-1"
    for left in (dead, live):
        left.mkdir()
        (left / "model.safetensors").write_bytes(b"half")
    result = export(ckpt, tmp_path / "out", "--base-model", tiny_model_dir)
    assert result.exit_code == 0, result.output
    assert f"{tmp_path}: removed {dead.name} (left by a killed export)" in result.stderr.splitlines()
    assert not dead.exists() and live.is_dir()  # a live process's temp folder is its own
    written = tensors(tmp_path / "out" / "model.safetensors")
    assert written.keys() == saved.keys()
    assert all((written[k] - v).abs().max().item() == 0 for k, v in saved.items())


def test_an_adapter_export_holds_no_placeholder_card(tmp_path, tiny_model_dir):
    pytest.importorskip("peft")
    ckpt = tmp_path / "lone" / "checkpoint-2"
    saved = fsdp_checkpoint(ckpt, tiny_model_dir, lora=True)
    out = tmp_path / "adapters"
    result = export(ckpt, out, "--base-model", tiny_model_dir)
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == sorted(["adapter_config.json", "adapter_model.safetensors", *TOKENIZER_FILES])
    written = tensors(out / "adapter_model.safetensors")
    as_peft = {k.replace(".default.", "."): v for k, v in saved.items()}  # peft saves without the adapter name
    assert written.keys() == as_peft.keys()
    assert all((written[k] - v).abs().max().item() == 0 for k, v in as_peft.items())
    assert json.loads((out / "adapter_config.json").read_text())["r"] == 2
