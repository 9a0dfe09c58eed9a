"""kto-train --eval-only --model RUNDIR: the refusal ("a kto-train run directory, not a model;
... give RUNDIR/final") comes before the settings line, which said "--model is in no kto-train
run" just above it."""

from __future__ import annotations

import json

from click.testing import CliRunner

from kto.formats.runrecord import write_run_config


def test_a_run_directory_is_refused_before_the_settings_line(tmp_path, tiny_eval_cache):
    from kto.train.cli import main

    run = tmp_path / "run"
    (run / "final").mkdir(parents=True)
    write_run_config(run, {"model": "m"}, {})
    (run / "final" / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "m", "peft_type": "LORA"}))
    result = CliRunner().invoke(main, ["--eval-only", "--model", str(run), "--eval-cache", str(tiny_eval_cache)])
    assert result.exit_code == 2, result.output
    assert f"--model {run}: a kto-train run directory, not a model; its trained model is {run}/final (LoRA adapters): give {run}/final" in result.output
    assert "settings:" not in result.output and "in no kto-train run" not in result.output, result.output
