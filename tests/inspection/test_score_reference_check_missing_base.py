"""A LoRA run trained with a relative --model records that relative path as its adapters' base
(adapter_config.json); from another folder it names nothing, and `kto-inspect score --model
RUN/final` ended with `...: the base its adapter_config.json names, tiny: no such file or
directory`, not saying that --base-model is the way out. Every command that loads adapters
through formats/compute/policy_dirs.py (score, export, kto-train --eval-only) now says it."""

import os
import shutil

import pytest
from click.testing import CliRunner
from conftest import one_line_error, run_train

HINT = "no such file or directory; give the model the adapters were trained on as --base-model"


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory, tiny_cache, tiny_model_dir):
    """root/L: a 2-step LoRA run trained from root/tiny named relatively (`--model tiny`)."""
    root = tmp_path_factory.mktemp("relative-base")
    shutil.copytree(tiny_model_dir, root / "tiny")
    here = os.getcwd()
    os.chdir(root)
    try:
        result = run_train(tiny_cache, "tiny", "L", "--batch-size", "4", "--max-steps", "2", "--lora-r", "4", "--lora-alpha", "8")
    finally:
        os.chdir(here)
    assert result.exit_code == 0, result.output
    return root / "L"


def test_score_export_and_eval_only_name_base_model(lora_run, tiny_cache, tiny_eval_cache, tiny_model_dir, tmp_path, monkeypatch):
    from accelerate.state import AcceleratorState

    from kto.inspection.cli import main as inspect_main
    from kto.train.cli import main as train_main

    monkeypatch.chdir(tmp_path)  # no `tiny` here
    final = lora_run / "final"
    said = f"the base its adapter_config.json names, tiny: {HINT}"
    result = CliRunner().invoke(inspect_main, ["score", str(tiny_cache), "--model", str(final), "--out", "s.parquet"])
    assert result.output.strip().splitlines()[-1] == f"kto-inspect: error: --model {final}: {said}"
    assert result.exit_code == 2 and not (tmp_path / "s.parquet").exists()
    line = one_line_error(CliRunner().invoke(inspect_main, ["export", str(final), "merged", "--merge"]))
    assert line == f"kto-inspect: error: CHECKPOINT {final}: {said}"
    AcceleratorState._reset_state(reset_partial_state=True)
    result = CliRunner().invoke(train_main, ["--eval-only", "--model", str(final), "--eval-cache", str(tiny_eval_cache)])
    assert result.exit_code == 2, result.output
    assert f"kto-train: error: --model {final}: {said}" in result.output.splitlines()
    assert sorted(p.name for p in tmp_path.iterdir()) == []
    # The way out it names works.
    result = CliRunner().invoke(inspect_main, ["score", str(tiny_cache), "--model", str(final), "--base-model", str(tiny_model_dir), "--out", "s.parquet"])
    assert result.exit_code == 0, result.output
