"""formats/config_keys.py and config_names.py: TRL's and LLaMA-Factory's names in `--config` files (docs/migrating.md)."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from kto.formats.config_keys import PRECOMPUTE, PRECOMPUTE_KEYS, TRAIN, TRAIN_KEYS
from kto.formats.config_names import resolve
from kto.formats.errors import InputError
from kto.precompute import cli as precompute_cli
from kto.train import cli as train_cli

# transformers' TrainingArguments defaults that differ from ours, which a file in TRL's names gets
# where it is silent (TRL's KTOConfig keeps them); LLaMA-Factory's files also get its logging
# cadence and learning rate (KTOConfig sets ours: 10 and 1e-6).
TRL_DEFAULTS = {"warmup_ratio": 0.0, "seed": 42, "save_every": 500, "gradient_checkpointing": True}
LF_DEFAULTS = {**TRL_DEFAULTS, "log_every": 500, "lr": 5e-5}


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
        "warmup_ratio": 0.0,  # transformers' (warmup_steps wins anyway)
        "log_every": 5,
        "save_every": 10,
        "beta": 0.2,
        "desirable_weight": 1.33,
        "undesirable_weight": 1.0,
        "out": "run",
        "report_to": "none",
        "lora_target_modules": None,
        "dtype": "bf16",
        "seed": 42,  # transformers' default: the file gives the rest of TRL_DEFAULTS
        "gradient_checkpointing": True,  # KTOConfig's default
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
        "mixed_precision": "bf16",
        **LF_DEFAULTS,
    }
    notes = resolved.notes
    for key in ("stage", "do_train", "finetuning_type", "plot_loss", "bf16"):
        assert sum(note.startswith(f"{key}:") for note in notes) == 1, (key, notes)
    # The other command's keys are named with the command that takes them, in one line
    # (`template` too: only kto-precompute renders rows).
    assert "kto-precompute's keys, ignored by kto-train: template, cutoff_len" in notes
    fp32 = {"mixed_precision": "no"}  # neither bf16 nor fp16 given: LLaMA-Factory trains in fp32
    assert resolve({"finetuning_type": "lora", "lora_rank": 4, "max_steps": 5}, TRAIN).values == {
        "lora_r": 4,
        "lora_alpha": 8.0,
        "max_steps": 5,
        **LF_DEFAULTS,
        **fp32,
    }
    assert resolve({"finetuning_type": "full", "epochs": 1}, TRAIN).values == {"lora_r": 0, "epochs": 1, **LF_DEFAULTS, **fp32}


def test_a_file_in_their_dialect_gets_their_defaults_where_it_is_silent():
    """A LLaMA-Factory `stage: kto` file without finetuning_type ran LoRA there (its default) and
    trained every weight here; a TRL or LLaMA-Factory file without num_train_epochs ran 3 epochs
    there (transformers' default) and 1 here. Our own names keep our defaults."""
    lf = resolve({"stage": "kto", "lora_rank": 16, "learning_rate": 5e-6}, TRAIN)
    assert lf.values == {"lora_r": 16, "lora_alpha": 32.0, "epochs": 3.0, **LF_DEFAULTS, "lr": 5e-6, "mixed_precision": "no"}
    assert "finetuning_type not given: lora, LLaMA-Factory's default" in lf.notes
    assert resolve({"learning_rate": 1e-6, "num_train_epochs": 2}, TRAIN).values == {"lr": 1e-6, "epochs": 2, **TRL_DEFAULTS}
    assert resolve({"learning_rate": 1e-6, "max_steps": 40}, TRAIN).values == {"lr": 1e-6, "max_steps": 40, **TRL_DEFAULTS}
    assert resolve({"lr": 1e-6, "beta": 0.2}, TRAIN).values == {"lr": 1e-6, "beta": 0.2}


def test_precompute_takes_its_keys_from_a_file_both_commands_read():
    raw = {"model_name_or_path": "m", "cutoff_len": 512, "val_size": 0.1, "max_samples": 100, "cache": "c", "out": "run", "learning_rate": 1e-6}
    resolved = resolve(raw, PRECOMPUTE)
    assert resolved.values == {"model": "m", "max_length": 512, "eval_fraction": 0.1, "max_samples": 100, "out": "c"}
    assert resolved.notes == [
        "max_samples: 100: a seeded sample of that many rows of each input, not the first rows as LLaMA-Factory takes",
        "kto-train's keys, ignored by kto-precompute: out, learning_rate",
    ]
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
    assert resolved.values == {"push_to_hub": "me/kto-model", "hub_private": True, "epochs": 3.0, **TRL_DEFAULTS}
    assert resolved.notes[0] == "push_to_hub: true, hub_model_id: me/kto-model -> push_to_hub me/kto-model (final/ is uploaded there at the end)"


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
    assert resolved.values == {"lr": 1e-5, "epochs": 3.0, **TRL_DEFAULTS}  # max_steps -1: transformers' epochs
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


@pytest.mark.parametrize(
    "option, hint",
    [
        (
            "--use_peft",
            "TRL's switch for LoRA: give --lora-r R (use_peft: true in a --config file takes TRL's r 16, alpha 32, dropout 0.05, off while dropout is)",
        ),
        ("--use-peft", "TRL's switch for LoRA"),
        ("--disable_dropout", "TRL's switch: dropout is off here by default; --keep-dropout keeps it"),
        ("--finetuning_type", "LLaMA-Factory's choice of LoRA or full training: give --lora-r R for LoRA, nothing for full"),
        ("--quantization_bit", "LLaMA-Factory's: give --load-in-4bit or --load-in-8bit"),
    ],
)
def test_the_command_line_names_our_flags_for_another_tools_switches(option, hint):
    """`--use_peft` got click's "Did you mean '--seed'?"; the switches a --config file maps
    (config_names MAPPED) are named on the command line too."""
    from click.testing import CliRunner

    from kto.formats.config_keys import SWITCH_HINTS
    from kto.formats.config_names import MAPPED
    from kto.train.cli import main as train

    assert f"No such option: {option} ({hint}" in CliRunner().invoke(train, [option]).output
    assert set(SWITCH_HINTS[TRAIN]) == set(MAPPED[TRAIN]) - {"stage"}  # every switch a file maps has its hint


def test_a_file_silent_on_transformers_defaults_gets_them_and_says_so_in_one_line():
    """transformers' TrainingArguments warms up for 0 steps, seeds 42 and saves every 500 steps
    (LLaMA-Factory also logs every 500 at 5e-5); a file in their names that leaves them out got
    our 10 % warmup, seed 0 and final-model-only saving. What the file gives stays."""
    trl = resolve({"learning_rate": 1e-6, "max_steps": 40}, TRAIN)
    assert (trl.values["warmup_ratio"], trl.values["seed"], trl.values["save_every"]) == (0.0, 42, 500)
    assert "log_every" not in trl.values and trl.values["lr"] == 1e-6  # KTOConfig's 10 and 1e-6 are ours
    assert trl.notes == [
        "not given, transformers' defaults (TRL's KTOConfig keeps them): warmup_steps 0 (kto-train's own: warmup_ratio 0.1), "
        "seed 42 (kto-train's own: 0), save_steps 500 (kto-train's own: 0: the final model only), "
        "gradient_checkpointing true (TRL's KTOConfig default; kto-train's own: false)"
    ]
    lf = resolve({"stage": "kto", "finetuning_type": "lora", "num_train_epochs": 1}, TRAIN)
    assert {k: lf.values[k] for k in LF_DEFAULTS} == LF_DEFAULTS
    assert any(note.startswith("not given, transformers' defaults (LLaMA-Factory keeps them): ") and "learning_rate 5e-05" in note for note in lf.notes)
    given = resolve({"learning_rate": 1e-6, "warmup_steps": 5, "seed": 3, "save_steps": 20, "epochs": 1, "gradient_checkpointing": False}, TRAIN)
    assert given.values == {"lr": 1e-6, "warmup_steps": 5, "seed": 3, "save_every": 20, "epochs": 1, "gradient_checkpointing": False, "warmup_ratio": 0.0}
    assert given.notes == []
    # A dump's warmup_steps: 0 warms up for none, as transformers (whose warmup_ratio is 0): it
    # kept our warmup_ratio 0.1.
    dumped = resolve({"learning_rate": 1e-6, "warmup_steps": 0, "seed": 3, "save_steps": 20, "epochs": 1, "gradient_checkpointing": False}, TRAIN)
    assert dumped.values["warmup_ratio"] == 0.0 and "warmup_ratio 0 (kto-train's own: 0.1)" in dumped.notes[-1]
    assert resolve({"warmup_ratio": 0.05, "learning_rate": 1e-6, "epochs": 1}, TRAIN).values["warmup_ratio"] == 0.05
    assert resolve({"lr": 1e-6}, TRAIN).values == {"lr": 1e-6}  # our own names keep our defaults


def test_warmup_steps_below_one_is_transformers_5s_warmup_ratio():
    """transformers 5 dropped warmup_ratio: `warmup_steps: 0.1` is a tenth of the total steps."""
    resolved = resolve({"warmup_steps": 0.1, "learning_rate": 1e-6}, TRAIN)
    assert resolved.values["warmup_ratio"] == 0.1 and "warmup_steps" not in resolved.values
    assert "warmup_steps: 0.1 -> warmup_ratio 0.1 (below 1: a share of the total steps, as transformers 5; rounded down here, up there)" in resolved.notes
    assert resolve({"warmup_steps": 0.1, "warmup_ratio": 0.1}, TRAIN).values["warmup_ratio"] == 0.1
    with pytest.raises(InputError) as err:
        resolve({"warmup_ratio": 0.2, "warmup_steps": 0.1}, TRAIN)
    assert str(err.value) == "warmup_ratio: 0.2 and warmup_steps: 0.1 set the same option (warmup_ratio); give one"
    assert resolve({"warmup_steps": 3}, TRAIN).values == {"warmup_steps": 3}


def test_step_keys_below_one_are_kept_as_shares_for_kto_train_to_resolve():
    resolved = resolve({"logging_steps": 0.25, "save_steps": 0.5, "max_steps": 8}, TRAIN)
    assert resolved.ratios == {"log_every": ("logging_steps", 0.25), "save_every": ("save_steps", 0.5)}
    assert "log_every" not in resolved.values and "save_every" not in resolved.values  # no default 500 over a share


@pytest.mark.parametrize(
    "raw, message",
    [
        (
            {"model_revision": "v1.0"},
            "model_revision: 'v1.0': a hub revision is not supported; fetch it to a local directory "
            "(hf download NAME --revision REV --local-dir DIR) and give that directory as model_name_or_path",
        ),
        (
            {"ref_model": "org/ref"},
            "ref_model: 'org/ref': the reference is the model kto-precompute scores the cache with: give it to kto-precompute as "
            "model_name_or_path (or --model); kto-train's model is where the policy starts",
        ),
        ({"use_dora": True}, "use_dora: True: DoRA is not supported; kto-train trains plain LoRA (lora_r, lora_alpha, lora_dropout)"),
    ],
)
def test_their_keys_we_do_not_support_say_what_to_do_not_a_did_you_mean(raw, message):
    """disable_dropout was answered "did you mean lora_dropout?", model_revision "did you mean
    mixed_precision?", ref_model "did you mean model?"."""
    with pytest.raises(InputError) as err:
        resolve(raw, TRAIN)
    assert str(err.value) == message


def test_known_keys_are_refused_before_the_unknown_in_one_line_and_inert_values_pass():
    with pytest.raises(InputError) as err:
        resolve({"zzz": 1, "ref_model": "r"}, TRAIN)
    assert str(err.value).startswith("ref_model: 'r': the reference is") and str(err.value).endswith("; unknown key 'zzz' (no close name)")
    # What a dumped ModelConfig writes when they ask for nothing.
    resolved = resolve({"model_revision": "main", "use_dora": False, "use_rslora": False, "lora_modules_to_save": None, "epochs": 1}, TRAIN)
    assert resolved.values == {"epochs": 1}
    assert "model_revision: main: ignored (asks for nothing here)" in resolved.notes
    # kto-precompute refuses what concerns its model, and leaves kto-train's keys to it.
    with pytest.raises(InputError, match="^ref_model: 'r': the reference is"):
        resolve({"ref_model": "r"}, PRECOMPUTE)
    assert resolve({"use_dora": True}, PRECOMPUTE).notes == ["kto-train's key, ignored by kto-precompute: use_dora"]


def test_disable_dropout_is_keep_dropout_inverted():
    """TRL's disable_dropout (default true) is kto-train's default; false keeps the dropout."""
    on = resolve({"disable_dropout": True, "epochs": 1}, TRAIN)
    assert on.values["keep_dropout"] is False
    assert "disable_dropout: true -> dropout off, kto-train's default (keep_dropout false)" in on.notes
    assert resolve({"disable_dropout": False}, TRAIN).values["keep_dropout"] is True
    with pytest.raises(InputError, match="set the same option"):
        resolve({"disable_dropout": True, "keep_dropout": True}, TRAIN)
    with pytest.raises(InputError, match=r"^disable_dropout: 'yes' is not true or false$"):
        resolve({"disable_dropout": "yes"}, TRAIN)


def test_use_peft_leaves_the_targets_to_peft_s_default_for_the_model():
    """TRL's lora_target_modules defaults to None (peft's per-model default), not all-linear."""
    resolved = resolve({"use_peft": True}, TRAIN)
    assert resolved.peft_default_targets and "lora_target_modules" not in resolved.values
    assert any("lora_target_modules peft's default for the model type unless given, as TRL" in note for note in resolved.notes)
    assert resolve({"use_peft": True, "lora_target_modules": "all-linear"}, TRAIN).values["lora_target_modules"] is None


def test_precompute_keys_are_compared_with_what_the_manifest_records():
    from kto.formats.config_keys import precompute_disagreements

    content = {"max_length": 1024, "max_prompt_length": 512, "eval_fraction": 0.1, "store_token_logps": True, "seed": 0}
    same = {"max_length": "1024", "cutoff_len": 1024, "max_prompt_length": 512, "val_size": 0.1, "dataset": "x", "seed": 5}
    assert precompute_disagreements(same, content) == []
    differ = {"cutoff_len": 2048, "max_prompt_length": 256, "store_token_logps": False}
    assert precompute_disagreements(differ, content) == [
        "cutoff_len: 2048 (the cache's max_length: 1024)",
        "max_prompt_length: 256 (the cache's max_prompt_length: 512)",
        "store_token_logps: False (the cache's store_token_logps: True)",
    ]


def test_pref_ftx_is_copied_as_it_is_with_a_line_saying_what_it_computes():
    """LLaMA-Factory's SFT term is about 2× ours at a balanced batch; the value was copied to
    sft_weight without a word. It is still copied (a rescale would be right for one batch only)."""
    resolved = resolve({"stage": "kto", "pref_ftx": 0.5}, TRAIN)
    assert resolved.values["sft_weight"] == 0.5
    assert (
        "pref_ftx: 0.5 -> sft_weight 0.5, not rescaled: kto-train adds γ · the mean NLL per token over the step's desirable completion "
        "tokens; LLaMA-Factory adds γ · (rows ÷ desirable rows) · the mean over desirable rows of each row's mean NLL per token, about 2× "
        "ours at a balanced batch: double the value to match"
    ) in resolved.notes
    assert not any(note.startswith("pref_ftx") for note in resolve({"stage": "kto", "pref_ftx": 0.0}, TRAIN).notes)  # LF's default


# What a dumped KTOConfig / TrainingArguments / ModelConfig or LLaMA-Factory's example writes, by
# command: each was "unknown key (no close name)" or a wrong "did you mean" (lora_task_type ->
# loss_type, disable_gradient_checkpointing -> gradient_checkpointing, its opposite).
DEFAULTS_IGNORED = [
    (TRAIN, "padding_value", None, "padded positions are masked, so the pad id cannot change the result"),
    (TRAIN, "generate_during_eval", False, "kto-train does not generate; sample from OUT/final afterwards"),
    (TRAIN, "use_liger_kernel", True, "a faster kernel for the same maths; kto-train computes the LM head in chunks (chunk_size)"),
    (TRAIN, "metric_for_best_model", "eval_loss", "checkpoints are kept by step (save_total_limit keeps the newest), not by a metric"),
    (TRAIN, "eval_on_start", True, "evaluation runs every eval_steps (eval_every), not before the first step; it never changes the training"),
    (
        PRECOMPUTE,
        "ref_model_init_kwargs",
        {"dtype": "bfloat16"},
        "TRL reads it only for a ref_model given by name, refused here; the reference is kto-precompute's model",
    ),
]
INERT = [
    (TRAIN, "label_pad_token_id", -100, "-100: ignored (prompt and padding are masked by position, as TRL's -100 masks them)"),
    (PRECOMPUTE, "label_pad_token_id", -100, "-100: ignored (prompt and padding are masked by position, as TRL's -100 masks them)"),
    (TRAIN, "model_init_kwargs", None, "null: ignored (asks for nothing here)"),
    (TRAIN, "load_best_model_at_end", False, "false: ignored (asks for nothing here)"),
    (TRAIN, "ignore_data_skip", False, "false: ignored (asks for nothing here)"),
    (TRAIN, "dataloader_drop_last", False, "false: ignored (asks for nothing here)"),
    (TRAIN, "group_by_length", False, "false: ignored (asks for nothing here)"),
    (TRAIN, "lora_task_type", "CAUSAL_LM", "causal_lm: ignored (asks for nothing here)"),
    (PRECOMPUTE, "truncation_mode", "keep_end", "keep_end: ignored (a cut prompt keeps its end here too)"),
    (PRECOMPUTE, "packing", False, "false: ignored (LLaMA-Factory's KTO stage does not pack either)"),
    (PRECOMPUTE, "neat_packing", False, "false: ignored (rows are never packed)"),
    (PRECOMPUTE, "train_on_prompt", False, "false: ignored (the loss reads completion tokens only)"),
    (PRECOMPUTE, "mask_history", False, "false: ignored (earlier turns are prompt)"),
    (PRECOMPUTE, "enable_thinking", True, "true: ignored (the chat template renders with its own defaults)"),
]
REFUSED = [
    (TRAIN, "model_init_kwargs", {"dtype": "bfloat16"}, "from_pretrained's keywords are options here: give dtype (torch_dtype), attn_implementation"),
    (TRAIN, "label_pad_token_id", 0, "prompt and padding are masked by position here, not by a label id"),
    (TRAIN, "load_best_model_at_end", True, "final/ is the last step's model, never the best checkpoint's"),
    (TRAIN, "ignore_data_skip", True, "a resumed run continues the data where it stopped"),
    (TRAIN, "dataloader_drop_last", True, "kto-train drops no row: an epoch's last step may be short"),
    (TRAIN, "group_by_length", True, "kto-train does not group rows by length"),
    (TRAIN, "lora_task_type", "SEQ_CLS", "kto-train trains causal language models (CAUSAL_LM) only"),
    (PRECOMPUTE, "truncation_mode", "keep_start", "kto-precompute keeps the end of a prompt it cuts (keep_end); there is no keep_start"),
    (PRECOMPUTE, "packing", True, "packing: true makes it cut at cutoff_len - 1"),
    (PRECOMPUTE, "neat_packing", True, "LLaMA-Factory refuses it outside SFT too; kto never packs rows"),
    (PRECOMPUTE, "train_on_prompt", True, "LLaMA-Factory refuses it outside SFT too; the KTO loss reads completion tokens only"),
    (PRECOMPUTE, "mask_history", True, "LLaMA-Factory refuses it outside SFT too"),
    (PRECOMPUTE, "enable_thinking", False, "write chat_template_kwargs: {enable_thinking: false} for a template that reads it"),
]


@pytest.mark.parametrize("command, key, value, why", DEFAULTS_IGNORED)
def test_standard_keys_that_cannot_change_the_result_are_ignored_saying_why(command, key, value, why):
    resolved = resolve({key: value}, command)
    assert f"{key}: ignored ({why})" in resolved.notes
    assert key not in resolved.values


@pytest.mark.parametrize("command, key, value, note", INERT)
def test_their_default_values_are_ignored_saying_why_and_the_other_command_leaves_them_to_this_one(command, key, value, note):
    resolved = resolve({key: value}, command)
    assert f"{key}: {note}" in resolved.notes
    other = PRECOMPUTE if command == TRAIN else TRAIN
    if key not in ("label_pad_token_id", "model_init_kwargs"):  # both commands mask and load a model; each says so
        assert f"{command}'s key, ignored by {other}: {key}" in resolve({key: value}, other).notes


@pytest.mark.parametrize("command, key, value, reason", REFUSED)
def test_values_that_would_change_the_maths_or_the_data_are_refused_saying_what_kto_does(command, key, value, reason):
    with pytest.raises(InputError) as err:
        resolve({key: value}, command)
    message = str(err.value)
    assert message.startswith(f"{key}: {value!r}: ") and reason in message and "\n" not in message


def test_disable_gradient_checkpointing_is_gradient_checkpointing_inverted():
    """LLaMA-Factory's key was answered "did you mean gradient_checkpointing?", its opposite."""
    on = resolve({"disable_gradient_checkpointing": False, "epochs": 1}, TRAIN)
    assert on.values["gradient_checkpointing"] is True
    assert "disable_gradient_checkpointing: false -> gradient_checkpointing true (memory only)" in on.notes
    assert resolve({"disable_gradient_checkpointing": True}, TRAIN).values["gradient_checkpointing"] is False
    with pytest.raises(InputError, match="set the same option"):
        resolve({"disable_gradient_checkpointing": True, "gradient_checkpointing": True}, TRAIN)
    assert "kto-train's key, ignored by kto-precompute: disable_gradient_checkpointing" in resolve({"disable_gradient_checkpointing": False}, PRECOMPUTE).notes


def test_a_llama_factory_file_without_cutoff_len_cuts_at_its_2048():
    """LLaMA-Factory's DataArguments.cutoff_len defaults to 2048; such a file got 1024 here, unsaid."""
    resolved = resolve({"stage": "kto", "dataset": "kto_en_demo", "template": "llama3"}, PRECOMPUTE)
    assert resolved.values["max_length"] == 2048
    assert resolved.default_notes == {"max_length": "not given, LLaMA-Factory's default: cutoff_len 2048 (kto-precompute's own max_length: 1024)"}
    assert resolve({"stage": "kto", "cutoff_len": 512}, PRECOMPUTE).values["max_length"] == 512
    # TRL's KTOConfig max_length default is 1024, as ours; our own names keep ours.
    assert "max_length" not in resolve({"model_name_or_path": "m"}, PRECOMPUTE).values
    assert "max_length" not in resolve({"dataset": "x", "model": "m"}, PRECOMPUTE).values


def test_max_prompt_length_null_and_trl_s_512_are_said():
    """`max_prompt_length: null` silently became max_length // 2; TRL has read null otherwise."""
    resolved = resolve({"max_length": 256, "max_prompt_length": None}, PRECOMPUTE)
    assert "max_prompt_length" not in resolved.values
    assert resolved.notes == [
        "max_prompt_length: null -> max_length // 2 (kto-precompute's default: a prompt over it is cut, keeping its end, where "
        "prompt + completion exceed max_length; TRL's current KTOTrainer cuts no prompt, older ones cut to 128)"
    ]
    trl = resolve({"model_name_or_path": "m", "max_length": 2048}, PRECOMPUTE)
    assert any(note.startswith("max_prompt_length not given: max_length // 2") and "KTOConfig writes 512" in note for note in trl.notes)
    assert resolve({"model_name_or_path": "m", "max_length": 1024}, PRECOMPUTE).notes == []


def test_dataset_test_split_is_the_eval_cache_only_with_an_eval_strategy():
    """TRL's script evaluates on dataset[dataset_test_split] when eval_strategy is not `no`."""
    trl = {"model_name_or_path": "m", "dataset_name": "org/ds", "dataset_config": "c", "dataset_test_split": "validation"}
    silent = resolve(trl, PRECOMPUTE)
    assert "eval_data" not in silent.values
    assert "dataset_test_split: ignored (eval_strategy is no: TRL evaluates on it only with another eval_strategy)" in silent.notes
    steps = resolve({**trl, "eval_strategy": "steps"}, PRECOMPUTE)
    assert steps.values["data"] == ["hf:org/ds:c:train"] and steps.values["eval_data"] == ["hf:org/ds:c:validation"]
    assert resolve({"dataset_name": "org/ds", "evaluation_strategy": "epoch"}, PRECOMPUTE).values["eval_data"] == ["hf:org/ds:test"]
    assert resolve({"dataset_name": "org/ds", "eval_strategy": "steps"}, TRAIN).eval_in_cache
    assert not resolve({"dataset_name": "org/ds", "eval_strategy": "no"}, TRAIN).eval_in_cache


def test_an_unquoted_eval_strategy_no_is_no():
    """YAML 1.1 reads `eval_strategy: no` as false, and null is transformers' "not set": both
    turned evaluation on (the test split was scored, or refused when the dataset had none)."""
    for value in (False, None, "no", "NO"):
        resolved = resolve({"dataset_name": "org/ds", "eval_strategy": value}, PRECOMPUTE)
        assert "eval_data" not in resolved.values, value


# transformers' eval_strategy as kto-train's schedule (TrainingArguments.__post_init__: `steps`
# without eval_steps takes logging_steps, 500 by default, 10 in TRL's KTOConfig; `no` and
# `epoch` ignore eval_steps). kto-train evaluates every eval_every steps and after the last one,
# whenever it has an eval cache: `eval_every` None here is its default 0, "after the last step only".
EVAL_SCHEDULES = [
    # (the file, eval_every, its share of max_steps, eval_in_cache, the line that says it)
    ({"eval_strategy": "steps", "logging_steps": 2, "max_steps": 6}, 2, None, False, "eval_every from logging_steps 2"),
    ({"eval_strategy": "steps", "eval_steps": 3, "logging_steps": 2}, 3, None, False, None),
    ({"eval_strategy": "steps", "eval_steps": 0, "logging_steps": 4}, 4, None, False, "eval_every from logging_steps 4"),
    ({"eval_strategy": "steps", "eval_steps": None, "logging_steps": 4}, 4, None, False, "eval_every from logging_steps 4"),
    ({"evaluation_strategy": "steps"}, 10, None, False, "eval_every from logging_steps' default 10"),  # KTOConfig's 10
    ({"eval_strategy": "steps", "stage": "kto", "val_size": 0.1}, 500, None, True, "eval_every from logging_steps' default 500"),  # transformers'
    ({"eval_strategy": "steps", "logging_steps": 0.25}, None, ("logging_steps", 0.25), False, "eval_every from logging_steps 0.25"),
    ({"eval_strategy": "steps", "eval_every": 0, "logging_steps": 2}, 0, None, False, None),  # our own key wins
    ({"eval_strategy": "epoch", "num_train_epochs": 2}, None, None, False, "eval_strategy: epoch -> eval_each_epoch: evaluated after each epoch"),
    ({"eval_strategy": "epoch", "eval_steps": 5, "val_size": 0.1}, None, None, True, "eval_steps: ignored"),
    ({"eval_strategy": "no", "eval_steps": 2}, None, None, False, "eval_strategy: no -> no evaluation from the file"),
    ({"eval_strategy": False, "eval_steps": 0.5, "val_size": 0.1}, None, None, False, "eval_steps: ignored"),  # unquoted YAML `no`
    ({"eval_strategy": None, "eval_steps": 2, "dataset_name": "org/ds"}, None, None, False, "eval_strategy: no -> no evaluation from the file"),
    ({"eval_strategy": "no", "val_size": 0.1, "do_eval": True}, None, None, True, "do_eval: true: evaluated once after the last step"),
    ({"eval_steps": 4, "val_size": 0.1}, 4, None, True, None),  # left out: eval_steps is eval_every, as before
    ({"val_size": 0.1}, None, None, True, None),
]


@pytest.mark.parametrize("raw, every, share, in_cache, said", EVAL_SCHEDULES)
def test_eval_strategy_gives_transformers_eval_schedule(raw, every, share, in_cache, said):
    """Each row was ignored ("eval_steps decides when to evaluate"): `steps` without eval_steps
    evaluated after the last step only, `no` with eval_steps every eval_steps."""
    resolved = resolve(raw, TRAIN)
    assert resolved.values.get("eval_every") == every, resolved.notes
    assert resolved.ratios.get("eval_every") == share
    assert resolved.eval_in_cache == in_cache
    assert resolved.values.get("eval_each_epoch", False) == (eval_strategy_of(raw) == "epoch")
    if said:
        assert any(said in note for note in resolved.notes), resolved.notes
    assert not any(note.startswith(("eval_strategy: ignored", "evaluation_strategy: ignored")) for note in resolved.notes)


def eval_strategy_of(raw):
    return str(raw.get("eval_strategy", raw.get("evaluation_strategy"))).lower()


# transformers' save_strategy: steps (or left out) saves every save_steps (500 by default);
# epoch after each epoch and no never, both ignoring save_steps. final/ is written whatever it is.
SAVE_SCHEDULES = [
    # (the file, save_every, its share, save_each_epoch, the line that says it)
    ({"save_strategy": "steps", "save_steps": 4}, 4, None, False, None),
    (
        {"save_strategy": "epoch", "save_steps": 4},
        None,
        None,
        True,
        "save_strategy: epoch -> save_each_epoch: a checkpoint after each epoch; save_steps: ignored",
    ),
    ({"save_strategy": "EPOCH", "learning_rate": 1e-6}, None, None, True, "save_strategy: epoch -> save_each_epoch"),  # no 500 default
    ({"save_strategy": "no", "save_steps": 0.5, "max_steps": 8}, None, None, False, "save_strategy: no -> no checkpoints, final/ only; save_steps: ignored"),
    ({"save_strategy": False, "learning_rate": 1e-6}, None, None, False, "save_strategy: no -> no checkpoints"),  # unquoted YAML `no`
    ({"learning_rate": 1e-6}, 500, None, False, "save_steps 500"),  # transformers' default
    ({"save_strategy": "steps", "save_steps": 0.25}, None, ("save_steps", 0.25), False, None),
]


@pytest.mark.parametrize("raw, every, share, each_epoch, said", SAVE_SCHEDULES)
def test_save_strategy_gives_transformers_save_schedule(raw, every, share, each_epoch, said):
    """Each row was "ignored" (save_steps decided): `epoch` saved final/ only, and `no` with
    save_steps saved every save_steps."""
    resolved = resolve(raw, TRAIN)
    assert resolved.values.get("save_every") == every, resolved.notes
    assert resolved.ratios.get("save_every") == share
    assert resolved.values.get("save_each_epoch", False) == each_epoch
    if said:
        assert any(said in note for note in resolved.notes), resolved.notes
    assert not any(note.startswith("save_strategy: ignored") for note in resolved.notes)


def test_save_strategy_best_and_unknown_ones_are_refused():
    with pytest.raises(InputError, match="save_strategy: best: kto-train keeps checkpoints by step, not by an eval metric"):
        resolve({"save_strategy": "best"}, TRAIN)
    with pytest.raises(InputError, match="save_strategy: 'often': transformers takes no, steps, epoch or best"):
        resolve({"save_strategy": "often"}, TRAIN)


def test_eval_strategy_steps_without_any_cadence_and_unknown_strategies_are_refused():
    """transformers refuses `steps` with neither eval_steps nor logging_steps, and any strategy but no, steps, epoch."""
    with pytest.raises(InputError, match="eval_strategy: steps: give eval_steps, or a logging_steps above 0"):
        resolve({"eval_strategy": "steps", "logging_steps": 0}, TRAIN)
    with pytest.raises(InputError, match="eval_strategy: 'best': transformers takes no, steps or epoch"):
        resolve({"eval_strategy": "best"}, TRAIN)


def test_kto_precompute_takes_eval_strategy_only_with_dataset_name():
    """It picks dataset_test_split there (a line says so); without dataset_name it is kto-train's, silently here."""
    assert resolve({"model_name_or_path": "m", "eval_strategy": "steps"}, PRECOMPUTE).notes == []
    assert resolve({"dataset_name": "org/ds", "eval_strategy": "steps"}, PRECOMPUTE).notes == [
        "eval_strategy steps: dataset_test_split test -> eval_data hf:org/ds:test (CACHE/eval)"
    ]


@pytest.mark.parametrize(
    "text, evaluated",
    [
        ("eval_strategy: steps\nlogging_steps: 2\nmax_steps: 6\n", [2, 4, 6]),  # transformers: 2, 4, 6
        ("eval_strategy: epoch\nnum_train_epochs: 2\n", [2, 4]),  # transformers: 2 and 4
        ("eval_strategy: no\neval_steps: 2\nmax_steps: 6\n", [6]),  # transformers: none; --eval-cache is evaluated at the end
    ],
)
def test_a_run_evaluates_on_transformers_steps(tmp_path, tiny_cache, tiny_eval_cache, tiny_model_dir, text, evaluated):
    """The real run with --eval-cache: 16 rows, batch 8, so 2 steps per epoch."""
    from conftest import metrics, run_train

    path, out = tmp_path / "trl.yaml", tmp_path / "run"
    path.write_text(text + "per_device_train_batch_size: 8\n")
    result = run_train(tiny_cache, tiny_model_dir, out, "--config", str(path), "--eval-cache", str(tiny_eval_cache))
    assert result.exit_code == 0, result.output
    assert [m["step"] for m in metrics(out) if m.get("split") == "eval"] == evaluated, result.output


def test_hub_model_id_uploads_only_with_push_to_hub_true():
    """transformers pushes only with push_to_hub: true; `hub_model_id: me/x` with `push_to_hub:
    false` said "push_to_hub: false: ignored" and kto-train uploaded to me/x at the end."""
    off = resolve({"push_to_hub": False, "hub_model_id": "me/x", "hub_private_repo": True, "epochs": 1}, TRAIN)
    assert "push_to_hub" not in off.values and "hub_private" not in off.values
    assert [n for n in off.notes if "hub" in n] == [
        "hub_model_id: me/x, hub_private_repo: true: unused, push_to_hub is false (transformers uploads only with push_to_hub: true); nothing is uploaded unless --push-to-hub names a repo"
    ]
    absent = resolve({"hub_model_id": "me/x", "epochs": 1}, TRAIN)
    assert "push_to_hub" not in absent.values
    assert any(n.startswith("hub_model_id: me/x: unused, push_to_hub is not given") for n in absent.notes)
    on = resolve({"push_to_hub": True, "hub_model_id": "me/x", "hub_private_repo": True, "epochs": 1}, TRAIN)
    assert (on.values["push_to_hub"], on.values["hub_private"]) == ("me/x", True)
    assert "push_to_hub: true, hub_model_id: me/x -> push_to_hub me/x (final/ is uploaded there at the end)" in on.notes
    for raw in ({"push_to_hub": True}, {"push_to_hub": True, "hub_model_id": None}):
        assert resolve(raw, TRAIN).push_needs_repo  # refused unless --push-to-hub names the repo (train/cli.py)
    assert off.private_if_pushed and not on.private_if_pushed
    assert resolve({"push_to_hub": "me/y"}, TRAIN).values == {"push_to_hub": "me/y"}  # ours: the repo id
    # kto-precompute's push_to_hub is the cache's repo: transformers' switch and repo are kto-train's.
    pre = resolve({"push_to_hub": True, "hub_model_id": "me/x"}, PRECOMPUTE)
    assert pre.values == {} and "kto-train's key, ignored by kto-precompute: hub_model_id" in pre.notes


def test_a_file_in_their_names_checkpoints_gradients_as_trl_and_llama_factory_do():
    """KTOConfig's gradient_checkpointing and LLaMA-Factory's disable_gradient_checkpointing both
    default to checkpointing; such a file trained without it here, under a docstring saying that
    matched TRL."""
    trl = resolve({"learning_rate": 1e-6, "num_train_epochs": 1}, TRAIN)
    assert trl.values["gradient_checkpointing"] is True and "gradient_checkpointing" in trl.defaulted
    assert "gradient_checkpointing true (TRL's KTOConfig default; kto-train's own: false)" in trl.notes[-1]
    lf = resolve({"stage": "kto", "num_train_epochs": 1}, TRAIN)
    assert lf.values["gradient_checkpointing"] is True
    assert any("gradient_checkpointing true (LLaMA-Factory's default, disable_gradient_checkpointing false; kto-train's own: false)" in n for n in lf.notes)
    assert resolve({"learning_rate": 1e-6, "gradient_checkpointing": False}, TRAIN).values["gradient_checkpointing"] is False
    assert resolve({"stage": "kto", "disable_gradient_checkpointing": True}, TRAIN).values["gradient_checkpointing"] is False
    assert "gradient_checkpointing" not in resolve({"lr": 1e-6}, TRAIN).values  # our own names keep ours


@pytest.mark.parametrize(
    "value, note",
    [
        ("adamw_torch", "adamw_torch: ignored (torch's AdamW, as kto-train's, fused on CUDA)"),
        ("adamw_torch_fused", "adamw_torch_fused: ignored (torch's AdamW, as kto-train's, fused on CUDA)"),
        (None, "null: ignored (torch's AdamW, as kto-train's, fused on CUDA)"),
        ("paged_adamw_32bit", "paged_adamw_32bit: ignored (same maths as kto-train's AdamW, no paging)"),
    ],
)
def test_optim_is_taken_only_where_it_is_adamw(value, note):
    """`optim` was ignored whatever it named: adamw_8bit or adafactor trained with AdamW, unsaid."""
    resolved = resolve({"optim": value, "epochs": 1}, TRAIN)
    assert f"optim: {note}" in resolved.notes and "optim" not in resolved.values
    assert "kto-train's key, ignored by kto-precompute: optim" in resolve({"optim": value}, PRECOMPUTE).notes


@pytest.mark.parametrize("value", ["adamw_8bit", "adafactor", "sgd", "lion_32bit"])
def test_another_optimizer_is_refused(value):
    with pytest.raises(InputError) as err:
        resolve({"optim": value}, TRAIN)
    assert str(err.value) == (
        f"optim: {value!r}: another optimizer's maths; kto-train trains with torch's AdamW (adamw_torch, adamw_torch_fused; "
        "paged_adamw_32bit is the same maths): leave optim out"
    )


@pytest.mark.parametrize(
    "raw, mixed, said",
    [
        ({"bf16": True}, "bf16", "bf16: true -> mixed_precision bf16"),
        ({"bf16": True, "fp16": False}, "bf16", "bf16: true -> mixed_precision bf16"),
        ({"fp16": True}, "fp16", "fp16: true -> mixed_precision fp16"),
        ({"fp16": True, "bf16": False}, "fp16", "fp16: true -> mixed_precision fp16"),
        ({"bf16": False, "fp16": False}, "no", "bf16: false, fp16: false -> mixed_precision no"),
        ({"bf16": False}, "no", "bf16: false -> mixed_precision no"),
        ({"fp16": False}, "bf16", "fp16: false, bf16 not given -> mixed_precision bf16"),  # TRL's KTOConfig: bf16 = not fp16
        ({"fp16": False, "bf16": None}, "bf16", "fp16: false, bf16 not given -> mixed_precision bf16"),
        ({"fp16": False, "stage": "kto"}, "no", "fp16: false -> mixed_precision no"),  # LLaMA-Factory: transformers' bf16 false
        ({"bf16": True, "mixed_precision": "bf16"}, "bf16", "bf16: true -> mixed_precision bf16"),
    ],
)
def test_bf16_and_fp16_choose_the_mixed_precision(raw, mixed, said):
    """`fp16: true` and `bf16: false` were ignored: kto-train autocast bf16 on CUDA whatever they said."""
    resolved = resolve({**raw, "epochs": 1}, TRAIN)
    assert resolved.values["mixed_precision"] == mixed
    assert [n for n in resolved.notes if n.startswith(("bf16", "fp16"))] == [n for n in resolved.notes if n.startswith(said)], resolved.notes
    assert sum(n.startswith(said) for n in resolved.notes) == 1
    assert "mixed_precision" not in resolve({"bf16": None, "fp16": None, "epochs": 1}, TRAIN).values  # not set: ours (auto)
    assert "kto-train's keys, ignored by kto-precompute: bf16" in resolve({"bf16": True, "fp16": False}, PRECOMPUTE).notes[-1]


def test_a_llama_factory_file_without_bf16_or_fp16_trains_in_fp32_as_there():
    """transformers' bf16 and fp16 are off unless given, and LLaMA-Factory keeps them off: fp32.
    TRL's KTOConfig turns bf16 on unless fp16 is: our auto (bf16 autocast on CUDA)."""
    resolved = resolve({"stage": "kto", "pref_beta": 0.1}, TRAIN)
    assert resolved.values["mixed_precision"] == "no" and "mixed_precision" in resolved.defaulted
    assert "bf16 false and fp16 false: mixed_precision no, fp32" in resolved.notes[-1]
    assert resolve({"stage": "kto", "bf16": True}, TRAIN).values["mixed_precision"] == "bf16"
    assert resolve({"stage": "kto", "mixed_precision": "auto"}, TRAIN).values["mixed_precision"] == "auto"
    assert "mixed_precision" not in resolve({"learning_rate": 1e-6, "beta": 0.1}, TRAIN).values  # TRL's names: auto


@pytest.mark.parametrize(
    "raw, message",
    [
        ({"bf16": True, "fp16": True}, "bf16: true and fp16: true: choose one (transformers refuses both too)"),
        ({"bf16": True, "mixed_precision": "no"}, "mixed_precision: 'no' and bf16: true set the same option (mixed_precision); give one"),
        ({"bf16": "yes"}, "bf16: 'yes' is not true or false"),
    ],
)
def test_contradictory_precisions_are_refused(raw, message):
    with pytest.raises(InputError) as err:
        resolve(raw, TRAIN)
    assert str(err.value) == message


@pytest.mark.parametrize(
    "value, on, said",
    [
        ("full_shard auto_wrap", True, "fsdp: 'full_shard auto_wrap' -> fsdp true"),
        (["full_shard", "auto_wrap"], True, "fsdp: 'full_shard auto_wrap' -> fsdp true"),
        ("full_shard", True, "fsdp: 'full_shard' -> fsdp true"),
        ("", False, "fsdp: '' -> fsdp false"),
        ([], False, "fsdp: '' -> fsdp false"),
        (True, True, None),
        (False, False, None),
    ],
)
def test_transformers_fsdp_string_is_our_switch(value, on, said):
    """`fsdp: "full_shard auto_wrap"` (transformers' form) was refused as "not a valid boolean"."""
    resolved = resolve({"fsdp": value}, TRAIN)
    assert resolved.values["fsdp"] is on
    if said:
        assert any(n.startswith(said) for n in resolved.notes), resolved.notes


@pytest.mark.parametrize("value", ["shard_grad_op auto_wrap", "hybrid_shard", "full_shard offload auto_wrap", "no_shard"])
def test_other_fsdp_strategies_are_refused_naming_ours(value):
    with pytest.raises(InputError) as err:
        resolve({"fsdp": value}, TRAIN)
    assert str(err.value).startswith(f"fsdp: {value!r}: kto-train's fsdp is FSDP2 full sharding") and "\n" not in str(err.value)


def test_fsdp_config_is_taken_only_empty():
    assert "fsdp_config: null: ignored" in " ".join(resolve({"fsdp_config": None}, TRAIN).notes)
    with pytest.raises(InputError, match="^fsdp_config: .*kto-train's fsdp takes no settings"):
        resolve({"fsdp_config": {"min_num_params": 0}}, TRAIN)


@pytest.mark.parametrize(
    "command, raw, message",
    [
        (PRECOMPUTE, {"eval_dataset": "kto_eval"}, "eval_dataset: 'kto_eval': give its file as eval_data (kto-precompute --eval-data FILE, repeatable"),
        (PRECOMPUTE, {"default_system": "You are helpful."}, "the tokenizer's chat template renders its own default system prompt"),
        (PRECOMPUTE, {"mix_strategy": "interleave_under"}, "kto-precompute concatenates its inputs (concat, LLaMA-Factory's default)"),
        (TRAIN, {"deepspeed": "ds_z3.json"}, "DeepSpeed is not supported; kto-train shards with FSDP2: fsdp: true"),
        (TRAIN, {"sync_ref_model": True}, "the reference is fixed: kto-precompute scored it once into the cache"),
        (PRECOMPUTE, {"sync_ref_model": True}, "the reference is fixed: kto-precompute scored it once into the cache"),
    ],
)
def test_their_keys_get_a_reason_not_a_misleading_did_you_mean(command, raw, message):
    """eval_dataset was "did you mean eval_data?", deepspeed "seed?", sync_ref_model "ref_model?"."""
    with pytest.raises(InputError) as err:
        resolve(raw, command)
    assert message in str(err.value) and "did you mean" not in str(err.value)


@pytest.mark.parametrize(
    "command, key, value, note",
    [
        (PRECOMPUTE, "eval_dataset", None, "eval_dataset: null: ignored"),
        (PRECOMPUTE, "default_system", None, "default_system: null: ignored"),
        (PRECOMPUTE, "default_system", "", "default_system: '': ignored"),
        (PRECOMPUTE, "mix_strategy", "concat", "mix_strategy: concat: ignored (the inputs are concatenated, as concat)"),
        (TRAIN, "deepspeed", None, "deepspeed: null: ignored"),
        (TRAIN, "sync_ref_model", False, "sync_ref_model: false: ignored"),
        (TRAIN, "local_rank", 0, "local_rank: ignored (set by the launcher (accelerate launch, torchrun))"),
        (PRECOMPUTE, "local_rank", -1, "local_rank: ignored (set by the launcher (accelerate launch, torchrun))"),
        (TRAIN, "use_cache", True, "use_cache: ignored (training runs without a KV cache)"),
    ],
)
def test_their_keys_at_values_that_ask_for_nothing_are_said(command, key, value, note):
    resolved = resolve({key: value}, command)
    assert any(n.startswith(note) for n in resolved.notes), resolved.notes


def test_transformers_5_forms_of_their_keys():
    """Seen by a reviewer of the dumped-config change: transformers 5's activation_checkpointing
    (gradient_checkpointing's new name, which wins where set) was ignored; an FSDP dump's filled
    fsdp_config, deepspeed: false and neftune_noise_alpha: 0 were refused; an unquoted
    `mixed_precision: no` (YAML's false) was refused."""
    assert resolve({"activation_checkpointing": True, "epochs": 1}, TRAIN).values["gradient_checkpointing"] is True
    both = resolve({"activation_checkpointing": False, "gradient_checkpointing": True, "epochs": 1}, TRAIN)
    assert both.values["gradient_checkpointing"] is False and "activation_checkpointing: false wins over gradient_checkpointing: true" in both.notes[0]
    # A TRL file with activation_checkpointing: false is not turned on by KTOConfig's default.
    assert resolve({"learning_rate": 1e-6, "activation_checkpointing": False}, TRAIN).values["gradient_checkpointing"] is False
    filled = {"reshard_after_forward": True, "min_num_params": 0, "xla": False, "xla_fsdp_v2": False, "xla_fsdp_grad_ckpt": False}
    assert resolve({"fsdp": True, "fsdp_config": filled, "deepspeed": False, "neftune_noise_alpha": 0, "epochs": 1}, TRAIN).values["fsdp"] is True
    assert resolve({"mixed_precision": False, "epochs": 1}, TRAIN).values["mixed_precision"] == "no"
    assert resolve({"mixed_precision": False, "bf16": False, "epochs": 1}, TRAIN).values["mixed_precision"] == "no"


@pytest.mark.parametrize(
    "typo, meant",
    [
        ("hub_stratgy", "hub_strategy (ignored here: kto-train uploads final/ once"),
        ("torch_compil", "torch_compile (refused here unless false: the model is not compiled here either)?"),
        ("per_device_batch_size", "per_device_train_batch_size?"),
    ],
)
def test_a_misspelt_key_is_matched_against_the_keys_skipped_too(typo, meant):
    """`hub_stratgy` was "did you mean save_strategy?": names skipped with a line (ignored, dumped
    defaults) are suggested where clearly nearer than a name that sets something, saying that
    they are skipped (config_unsupported.what_it_is)."""
    with pytest.raises(InputError) as err:
        resolve({typo: 1, "epochs": 1}, TRAIN)
    assert f"did you mean {meant}" in str(err.value)


def test_fp16_false_beside_our_own_mixed_precision_agrees_with_it():
    """TRL's `bf16 = not fp16` applies where the file gives no mixed_precision of ours: beside
    `mixed_precision: no`, `fp16: false` agrees with it (it was refused naming a bf16 the file lacks)."""
    assert resolve({"mixed_precision": "no", "fp16": False, "learning_rate": 1e-6}, TRAIN).values["mixed_precision"] == "no"


def test_activation_checkpointing_says_what_it_does_and_names_the_files_value():
    alone = resolve({"activation_checkpointing": False, "epochs": 1}, TRAIN)
    assert "activation_checkpointing: false -> gradient_checkpointing false (transformers 5's name; memory only)" in alone.notes
    lf = resolve({"disable_gradient_checkpointing": True, "activation_checkpointing": True, "stage": "kto"}, TRAIN)
    assert any("wins over disable_gradient_checkpointing: true" in n for n in lf.notes), lf.notes
    assert lf.values["gradient_checkpointing"] is True


@pytest.mark.parametrize(
    "typo, meant",
    [("logging_step", "logging_steps (a kto-train key)"), ("lora_rnak", "lora_rank (a kto-train key)"), ("save_step", "save_steps (a kto-train key)")],
)
def test_kto_precompute_suggests_kto_trains_names_over_skipped_ones(typo, meant):
    """A skipped name (logging_first_step, local_rank, save_safetensors) won over the other command's
    nearer one."""
    with pytest.raises(InputError) as err:
        resolve({typo: 1}, PRECOMPUTE)
    assert f"did you mean {meant}?" in str(err.value)
