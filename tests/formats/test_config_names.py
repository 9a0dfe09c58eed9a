"""formats/config_names.py: TRL's and LLaMA-Factory's names in `--config` files (docs/migrating.md)."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from kto.formats.config_names import PRECOMPUTE, PRECOMPUTE_KEYS, TRAIN, TRAIN_KEYS, resolve
from kto.formats.errors import InputError
from kto.precompute import cli as precompute_cli
from kto.train import cli as train_cli


def options(command) -> set[str]:
    return {p.name for p in command.params if p.expose_value} - {"config_file"}


def test_the_key_lists_are_the_commands_options():
    """formats/ may not import the commands, so it lists their options; this keeps them equal."""
    assert TRAIN_KEYS == options(train_cli.main)
    assert PRECOMPUTE_KEYS == options(precompute_cli.main)


def test_trl_names_become_ours():
    raw = {
        "model_name_or_path": "m",
        "learning_rate": 5e-7,
        "per_device_train_batch_size": 4,
        "gradient_accumulation_steps": 2,
        "num_train_epochs": 1.5,
        "lr_scheduler_type": "cosine",
        "warmup_steps": 3,
        "logging_steps": 5,
        "save_steps": 10,
        "beta": 0.2,
        "desirable_weight": 1.33,
        "undesirable_weight": 1.0,
        "output_dir": "run",
        "report_to": ["none"],
        "lora_target_modules": "all-linear",
        "dtype": "bfloat16",
    }
    values = resolve(raw, TRAIN).values
    assert values == {
        "model": "m",
        "lr": 5e-7,
        "batch_size": 4,
        "grad_accum": 2,
        "epochs": 1.5,
        "lr_schedule": "cosine",
        "warmup_steps": 3,
        "log_every": 5,
        "save_every": 10,
        "beta": 0.2,
        "desirable_weight": 1.33,
        "undesirable_weight": 1.0,
        "out": "run",
        "report_to": "none",
        "lora_target_modules": None,
        "dtype": "bf16",
    }


def test_llama_factory_names_become_ours_and_its_own_keys_say_what_they_did():
    raw = {
        "stage": "kto",
        "do_train": True,
        "finetuning_type": "lora",
        "lora_target": "all",
        "pref_beta": 0.1,
        "pref_ftx": 0.5,
        "kto_chosen_weight": 1.2,
        "kto_rejected_weight": 0.8,
        "template": "llama3",
        "plot_loss": True,
        "bf16": True,
        "cutoff_len": 512,
    }
    resolved = resolve(raw, TRAIN)
    # finetuning_type: lora -> LLaMA-Factory's defaults: rank 8, alpha 2 × rank.
    assert resolved.values == {
        "lora_r": 8,
        "lora_alpha": 16.0,
        "lora_target_modules": None,
        "beta": 0.1,
        "sft_weight": 0.5,
        "desirable_weight": 1.2,
        "undesirable_weight": 0.8,
        "epochs": 3.0,  # transformers' num_train_epochs default, which LLaMA-Factory keeps
    }
    notes = resolved.notes
    for key in ("stage", "do_train", "finetuning_type", "template", "plot_loss", "bf16"):
        assert sum(note.startswith(f"{key}:") for note in notes) == 1, (key, notes)
    # The other command's key is named with the command that takes it, in one line.
    assert "kto-precompute's key, ignored by kto-train: cutoff_len" in notes
    assert resolve({"finetuning_type": "lora", "lora_rank": 4, "max_steps": 5}, TRAIN).values == {"lora_r": 4, "lora_alpha": 8.0, "max_steps": 5}
    assert resolve({"finetuning_type": "full", "epochs": 1}, TRAIN).values == {"lora_r": 0, "epochs": 1}


def test_a_file_in_their_dialect_gets_their_defaults_where_it_is_silent():
    """A LLaMA-Factory `stage: kto` file without finetuning_type ran LoRA there (its default) and
    trained every weight here; a TRL or LLaMA-Factory file without num_train_epochs ran 3 epochs
    there (transformers' default) and 1 here. Our own names keep our defaults."""
    lf = resolve({"stage": "kto", "lora_rank": 16, "learning_rate": 5e-5}, TRAIN)
    assert lf.values == {"lora_r": 16, "lora_alpha": 32.0, "lr": 5e-5, "epochs": 3.0}
    assert "finetuning_type not given: lora, LLaMA-Factory's default" in lf.notes
    assert resolve({"learning_rate": 1e-6, "num_train_epochs": 2}, TRAIN).values == {"lr": 1e-6, "epochs": 2}
    assert resolve({"learning_rate": 1e-6, "max_steps": 40}, TRAIN).values == {"lr": 1e-6, "max_steps": 40}
    assert resolve({"lr": 1e-6, "beta": 0.2}, TRAIN).values == {"lr": 1e-6, "beta": 0.2}


def test_precompute_takes_its_keys_from_a_file_both_commands_read():
    raw = {"model_name_or_path": "m", "cutoff_len": 512, "val_size": 0.1, "max_samples": 100, "cache": "c", "out": "run", "learning_rate": 1e-6}
    resolved = resolve(raw, PRECOMPUTE)
    assert resolved.values == {"model": "m", "max_length": 512, "eval_fraction": 0.1, "max_samples": 100, "out": "c"}
    assert resolved.notes == ["kto-train's keys, ignored by kto-precompute: out, learning_rate"]
    assert resolve({"dataset_name": "org/set", "dataset_train_split": "train_prefs"}, PRECOMPUTE).values == {"data": ["hf:org/set:train_prefs"]}
    assert resolve({"val_size": 0.1}, TRAIN).eval_in_cache


def test_every_unknown_key_is_listed_at_once_each_with_a_did_you_mean():
    with pytest.raises(InputError) as err:
        resolve({"lerning_rate": 1e-6, "lr": 1e-6, "per_device_batch_size": 2, "zzz": 1, "max_lenght": 64}, TRAIN)
    assert str(err.value) == (
        "unknown keys 'lerning_rate' (did you mean learning_rate?); 'per_device_batch_size' (did you mean per_device_train_batch_size?); "
        "'zzz' (no close name); 'max_lenght' (did you mean max_length (a kto-precompute key)?)"
    )


@pytest.mark.parametrize(
    "raw, message",
    [
        ({"lr": 1e-6, "learning_rate": 2e-6}, "lr: 1e-06 and learning_rate: 2e-06 set the same option (lr); give one"),
        ({"stage": "dpo"}, "stage: dpo: kto-offline trains KTO only (stage: kto)"),
        ({"finetuning_type": "freeze"}, "finetuning_type: freeze: not supported here; choose lora or full"),
    ],
)
def test_contradictions_and_other_methods_are_refused(raw, message):
    with pytest.raises(InputError) as err:
        resolve(raw, TRAIN)
    assert str(err.value) == message


def test_val_size_as_a_row_count_is_refused():
    with pytest.raises(InputError, match="val_size 200: a row count"):
        resolve({"val_size": 200}, PRECOMPUTE)


def test_the_cli_prints_each_note_and_the_error_in_one_line(tmp_path, monkeypatch):
    import kto.train.api

    seen = []
    monkeypatch.setattr(kto.train.api, "run", seen.append)
    monkeypatch.setattr(train_cli, "check_paths", lambda cfg: None)  # "c" and "m" are placeholders
    path = tmp_path / "lf.yaml"
    path.write_text("stage: kto\nlearning_rate: 5.0e-6\ncutoff_len: 64\nval_size: 0.1\n")
    result = CliRunner().invoke(train_cli.main, ["--config", str(path), "--cache", "c", "--model", "m", "--out", str(tmp_path / "o")])
    assert result.exit_code == 0, result.output
    assert seen[0].lr == 5e-6 and str(seen[0].eval_cache) == "c/eval"
    assert f"kto-train: --config {path}: stage: kto: ignored (that is what this does)" in result.output
    assert f"kto-train: --config {path}: kto-precompute's keys, ignored by kto-train: cutoff_len, val_size" in result.output
    path.write_text("learning_rat: 1\nnope: 2\n")
    result = CliRunner().invoke(train_cli.main, ["--config", str(path), "--cache", "c", "--model", "m", "--out", str(tmp_path / "o")])
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [
        f"kto-train: error: --config {path}: unknown keys 'learning_rat' (did you mean learning_rate?); 'nope' (no close name)"
    ]


def test_transformers_hub_keys_name_the_repo():
    """transformers' push_to_hub is a switch and hub_model_id the repo; our push_to_hub takes the repo."""
    resolved = resolve({"push_to_hub": True, "hub_model_id": "me/kto-model", "hub_private_repo": True}, TRAIN)
    assert resolved.values == {"push_to_hub": "me/kto-model", "hub_private": True, "epochs": 3.0}
    assert resolved.notes[0] == "push_to_hub: true: ignored (push_to_hub takes the repo id; hub_model_id sets it)"


@pytest.mark.parametrize("raw", [{"finetuning_type": "full", "lora_rank": 8}, {"use_peft": False, "lora_r": 16, "lora_alpha": 32}])
def test_a_file_that_turns_lora_off_trains_every_weight_whatever_rank_it_keeps(raw):
    """LLaMA-Factory and TRL ignore the rank when PEFT is off, and their files keep it; the rank
    used to win here, so such a file trained LoRA adapters under a note saying every weight."""
    resolved = resolve(raw, TRAIN)
    assert resolved.values["lora_r"] == 0
    assert any("ignored (lora_r 0" in note for note in resolved.notes)


def test_what_a_dumped_kto_config_writes_for_not_set_is_taken_as_not_set():
    """TrainingArguments' max_steps -1 and save_total_limit null, and TRL's torch_dtype auto (in a
    file both commands read: kto-precompute takes auto itself); one number spelt two ways is one."""
    resolved = resolve({"max_steps": -1, "save_total_limit": None, "torch_dtype": "auto", "lr": "1e-5", "learning_rate": 1.0e-5}, TRAIN)
    assert resolved.values == {"lr": 1e-5, "epochs": 3.0}  # max_steps -1: transformers' epochs
    assert resolve({"torch_dtype": "auto"}, PRECOMPUTE).values == {"dtype": "auto"}
    with pytest.raises(InputError, match="set the same option"):
        resolve({"lr": "1e-5", "learning_rate": 2e-5}, TRAIN)


def test_a_rank_on_the_command_line_sets_llama_factorys_alpha_from_it(tmp_path, monkeypatch):
    """finetuning_type: lora makes lora_alpha 2 × lora_r unless given: of the rank in force, the
    command line's when it gives one (it stayed 2 × the file's 8)."""
    import kto.train.api

    seen = []
    monkeypatch.setattr(kto.train.api, "run", seen.append)
    monkeypatch.setattr(train_cli, "check_paths", lambda cfg: None)
    path = tmp_path / "lf.yaml"
    path.write_text("finetuning_type: lora\n")
    common = ["--config", str(path), "--cache", "c", "--model", "m", "--out", str(tmp_path / "o")]
    for extra, expected in (([], (8, 16.0)), (["--lora-r", "4"], (4, 8.0)), (["--lora-r", "4", "--lora-alpha", "5"], (4, 5.0))):
        result = CliRunner().invoke(train_cli.main, [*common, *extra])
        assert result.exit_code == 0, result.output
        assert (seen[-1].lora_r, seen[-1].lora_alpha) == expected


def test_the_command_line_names_our_option_for_another_tools_name():
    """`--learning_rate` on kto-train's command line is TRL's name; click alone answers "No such
    option" (its "did you mean" compares spellings). The error names our --lr; a typo still
    gets click's suggestion."""
    from click.testing import CliRunner

    from kto.precompute.cli import main as precompute
    from kto.train.cli import main as train

    out = CliRunner().invoke(train, ["--learning_rate", "1e-5"]).output
    assert "No such option: --learning_rate (TRL/LLaMA-Factory's name for kto-train's --lr; such names work in a --config file)" in out
    assert "kto-train's --batch-size" in CliRunner().invoke(train, ["--per-device-train-batch-size", "4"]).output
    assert "LLaMA-Factory's name for kto-precompute's --max-length" in CliRunner().invoke(precompute, ["--cutoff_len", "512"]).output
    assert "Did you mean" in CliRunner().invoke(train, ["--lrr", "1"]).output
