"""--model RUN where adapters are taken as --model (kto-train --eval-only, kto-inspect score, or
a file's adapter_name_or_path with do_train: false): a LoRA run's final/ is loadable there, so the
refusal says "give RUN/final", not "merge them into the base" (which training and kto-precompute,
which take whole models only, still say)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kto.formats.compute.policy_dirs import policy_to_load
from kto.formats.compute.sources import resolve_source
from kto.formats.errors import InputError
from kto.formats.runrecord import write_run_config


def lora_run(root: Path, *, merged: bool = False) -> Path:
    run = root / "run"
    (run / "final").mkdir(parents=True)
    write_run_config(run, {"model": "m"}, {})
    (run / "final" / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "m", "peft_type": "LORA"}))
    if merged:
        (run / "final-merged").mkdir()
    return run


@pytest.mark.parametrize("merged", [False, True])
def test_where_adapters_are_taken_the_refusal_says_give_final(tmp_path, merged):
    run = lora_run(tmp_path, merged=merged)
    with pytest.raises(InputError) as caught:
        policy_to_load(str(run), "base")
    said = f"--model {run}: a kto-train run directory, not a model; its trained model is {run}/final (LoRA adapters): give {run}/final"
    assert str(caught.value) == said + (f" (or {run}/final-merged, merged into the base)" if merged else "")


def test_where_only_whole_models_are_taken_it_still_says_merge(tmp_path):
    run = lora_run(tmp_path)
    with pytest.raises(InputError, match=r"LoRA adapters: merge them into the base"):
        resolve_source(str(run))


def test_a_files_adapter_name_or_path_at_the_run_says_give_final(tmp_path, tiny_model_dir, tiny_eval_cache):
    from click.testing import CliRunner

    from kto.train.cli import main

    run = lora_run(tmp_path)
    config = tmp_path / "ev.yaml"
    config.write_text(
        f"model_name_or_path: {tiny_model_dir}\nadapter_name_or_path: {run}\nstage: kto\ndo_train: false\nfinetuning_type: lora\n"
        f"eval_cache: {tiny_eval_cache}\noutput_dir: {tmp_path / 'ev'}\n"
    )
    result = CliRunner().invoke(main, ["--config", str(config)])
    assert result.exit_code == 2, result.output
    assert f"adapter_name_or_path: {run}" in result.output and f"give {run}/final" in result.output, result.output
    assert "merge them" not in result.output
