"""A file in TRL's names that keeps a LoRA rank but leaves `use_peft` out (docs/migrating.md).

TRL's ModelConfig.use_peft defaults to false: TRL ignores lora_r then and trains every weight.
lora_r is also kto-train's own key, which turns LoRA on. Such a file trained LoRA here and every
weight there, silently; it is refused now in one line asking for use_peft: true or false."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from kto.formats.config_keys import TRAIN
from kto.formats.config_names import resolve
from kto.formats.errors import InputError

# The hunter's file (a.yaml): transformers' names beside TRL's ModelConfig LoRA keys, no use_peft.
TRL_LORA = {
    "model_name_or_path": "m",
    "output_dir": "o",
    "max_steps": 1,
    "learning_rate": 1.0e-6,
    "per_device_train_batch_size": 2,
    "lora_r": 16,
    "lora_alpha": 32,
    "lora_target_modules": ["q_proj", "v_proj"],
}


def test_a_trl_file_with_a_rank_but_no_use_peft_is_refused_in_one_line():
    with pytest.raises(InputError) as caught:
        resolve(TRL_LORA, TRAIN)
    message = str(caught.value)
    assert message == (
        "lora_r: 16 without use_peft: in TRL's names (model_name_or_path, output_dir, learning_rate, …) LoRA is off unless use_peft: true "
        "(TRL's default is false: it ignores lora_r and trains every weight), while kto-train's own lora_r turns LoRA on; write "
        "use_peft: true to train LoRA adapters, or use_peft: false to train every weight as TRL does"
    )
    assert "\n" not in message


def test_use_peft_either_way_decides_as_trl_does():
    off = resolve({**TRL_LORA, "use_peft": False}, TRAIN)
    assert off.values["lora_r"] == 0
    assert "use_peft: false -> every weight is trained (lora_r 0)" in off.notes
    assert "lora_r: 16 ignored (lora_r 0, as the key that turns it off says)" in off.notes
    on = resolve({**TRL_LORA, "use_peft": True}, TRAIN)
    assert (on.values["lora_r"], on.values["lora_alpha"], on.values["lora_target_modules"]) == (16, 32, "q_proj,v_proj")


@pytest.mark.parametrize(
    "raw",
    [
        {"model": "m", "lr": 1e-6, "lora_r": 16, "lora_alpha": 32},  # kto-train's own names: its own lora_r
        {"model_name_or_path": "m", "learning_rate": 1e-6, "lora_r": 0},  # no LoRA either way
        {"model_name_or_path": "m", "learning_rate": 1e-6},  # no rank: every weight, as TRL
        {"stage": "kto", "finetuning_type": "lora", "lora_r": 16},  # LLaMA-Factory's: finetuning_type decides
    ],
)
def test_files_whose_rank_means_one_thing_are_taken(raw):
    resolved = resolve(raw, TRAIN)
    assert resolved.values.get("lora_r", 0) == raw.get("lora_r", 8 if "stage" in raw else 0)


def test_kto_train_refuses_the_file_before_writing_anything(tmp_path, tiny_model_dir, tiny_cache):
    from kto.train.cli import main

    out = tmp_path / "run"
    config = tmp_path / "a.yaml"
    config.write_text(
        f"model_name_or_path: {tiny_model_dir}\ncache: {tiny_cache}\noutput_dir: {out}\nmax_steps: 1\nlearning_rate: 1.0e-6\nlora_r: 16\n"
        "lora_alpha: 32\nlora_target_modules: [q_proj, v_proj]\n"
    )
    result = CliRunner().invoke(main, ["--config", str(config)])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"kto-train: error: --config {config}: lora_r: 16 without use_peft: in TRL's names")
    assert not out.exists()
