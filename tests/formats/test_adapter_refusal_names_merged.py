"""--model RUN/final of a LoRA run (or RUN/checkpoint-STEP) where a whole model is needed
(kto-train, kto-precompute): the refusal names RUN/final-merged first where the run wrote it,
and kto-inspect export for a checkpoint, rather than a peft recipe. Seen by a hunter: `--model
RUN/final` said "merge it into tiny first (peft: ...)" beside an existing final-merged/."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kto.formats.compute.sources import resolve_source
from kto.formats.errors import InputError
from kto.formats.runrecord import write_run_config


def lora_run(root: Path, *, merged: bool, checkpoint: bool = False, sharded: bool = False) -> Path:
    run = root / "run"
    folders = ["final", *(["checkpoint-3"] if checkpoint else [])]
    for name in folders:
        (run / name).mkdir(parents=True)
        (run / name / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "tiny", "peft_type": "LORA"}))
    if sharded:
        (run / "checkpoint-3" / "sharded").mkdir()
    write_run_config(run, {"model": "tiny"}, {})
    if merged:
        (run / "final-merged").mkdir()
        (run / "final-merged" / "config.json").write_text("{}")
    return run


def refusal(spec: str) -> str:
    with pytest.raises(InputError) as caught:
        resolve_source(spec)
    return str(caught.value)


def test_final_names_the_merged_folder_beside_it(tmp_path, monkeypatch):
    lora_run(tmp_path, merged=True)
    monkeypatch.chdir(tmp_path)
    assert refusal("run/final") == (
        "--model run/final: a LoRA run's adapters (adapter_config.json), not a model; the run merged them into its base: give run/final-merged"
    )


def test_final_without_a_merged_folder_says_how_to_merge(tmp_path, monkeypatch):
    lora_run(tmp_path, merged=False)
    monkeypatch.chdir(tmp_path)
    assert refusal("run/final") == (
        "--model run/final: a LoRA run's adapters (adapter_config.json), not a model; "
        "`kto-inspect export --merge run/final DIR` writes them merged into tiny: give DIR"
    )


@pytest.mark.parametrize("sharded", [False, True])
def test_a_checkpoint_names_the_runs_merged_folder_then_how_to_merge_its_own_adapters(tmp_path, monkeypatch, sharded):
    lora_run(tmp_path, merged=True, checkpoint=True, sharded=sharded)
    monkeypatch.chdir(tmp_path)
    what = "a LoRA run's adapters (adapter_config.json" + (", their weights sharded by FSDP in sharded/*.distcp)" if sharded else ")")
    assert refusal("run/checkpoint-3") == (
        f"--model run/checkpoint-3: {what}, not a model; run/final-merged holds the run's final adapters merged into its base "
        "(give that), or `kto-inspect export --merge run/checkpoint-3 DIR` writes these merged into tiny: give DIR"
    )


def test_a_full_fsdp_checkpoint_names_the_export(tmp_path):
    ckpt = tmp_path / "checkpoint-2"
    (ckpt / "sharded").mkdir(parents=True)
    assert refusal(str(ckpt)) == (
        f"--model {ckpt}: an FSDP checkpoint (its weights are sharded in sharded/*.distcp), not a model directory; "
        f"`kto-inspect export {ckpt} DIR` writes it as one: give DIR, or give RUN/final"
    )


def test_an_adapter_folder_of_no_run_keeps_the_peft_recipe(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "tiny"}))
    said = refusal(str(tmp_path / "a"))
    assert said.startswith(f"--model {tmp_path / 'a'}: a LoRA adapter folder (adapter_config.json), not a model; merge it into tiny first")
    assert f"`kto-inspect export --merge {tmp_path / 'a'} DIR`" in said


def test_a_link_to_final_names_the_merged_folder_of_the_run_it_lies_in(tmp_path, monkeypatch):
    """`xs/final -> ../run/final`: xs/final-merged does not exist; the run's real one does."""
    lora_run(tmp_path, merged=True, checkpoint=True)
    (tmp_path / "xs").mkdir()
    (tmp_path / "xs" / "final").symlink_to("../run/final")
    (tmp_path / "xs" / "checkpoint-3").symlink_to("../run/checkpoint-3")
    monkeypatch.chdir(tmp_path)
    merged = (tmp_path / "run" / "final-merged").resolve()
    assert refusal("xs/final").endswith(f"; the run merged them into its base: give {merged}")
    assert f"; {merged} holds the run's final adapters merged into its base (give that)" in refusal("xs/checkpoint-3")
