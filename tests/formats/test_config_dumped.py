"""A dumped config (transformers' `TrainingArguments.to_dict()`, TRL's `KTOConfig` and
`ModelConfig`) runs as it is: the keys it carries at their defaults are skipped in one grouped
line, the others that cannot change the training with a line each, and a value that would change
it is refused saying what kto does instead (formats/config_dumped.py, docs/migrating.md)."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from kto.formats.config_dumped import DUMPED, dumped_key
from kto.formats.config_keys import ALIASES, COMPANIONS, IGNORED, OWN_KEYS, PRECOMPUTE, TRAIN
from kto.formats.config_names import MAPPED, resolve
from kto.formats.config_unsupported import UNSUPPORTED
from kto.formats.errors import InputError

# Keys of a dumped TrainingArguments / KTOConfig that config_keys.py's tables handle (IGNORED,
# UNSUPPORTED): never repeated in DUMPED, whose lookup comes after those tables.
ELSEWHERE = {"deepspeed", "local_rank", "use_cache", "sync_ref_model", "fsdp_config", "optim"}

# What TRL's KTOConfig (trl/experimental/kto/kto_config.py and its base config, 2026) and
# ModelConfig (trl/trainer/model_config.py) write beyond TrainingArguments, at their defaults.
TRL_KTO_CONFIG = {
    "learning_rate": 1e-6,
    "logging_steps": 10,
    "gradient_checkpointing": True,
    "activation_checkpointing": True,  # transformers 5 mirrors the two names in a real dump
    "bf16": True,
    "train_sampling_strategy": "sequential",
    "model_init_kwargs": None,
    "trust_remote_code": False,
    "disable_dropout": True,
    "dataset_num_proc": None,
    "max_length": 1024,
    "pad_to_multiple_of": None,
    "precompute_ref_log_probs": False,
    "precompute_ref_batch_size": None,
    "loss_type": "kto",
    "beta": 0.1,
    "desirable_weight": 1.0,
    "undesirable_weight": 1.0,
    "activation_offloading": False,
    "ref_model_mixup_alpha": 0.6,
    "ref_model_sync_steps": 512,
    "use_liger_kernel": False,
    "torch_empty_cache_steps": None,
    # older KTOConfigs
    "max_prompt_length": 512,
    "max_completion_length": None,
    "label_pad_token_id": -100,
    "padding_value": None,
    "truncation_mode": "keep_end",
    "generate_during_eval": False,
    "is_encoder_decoder": None,
    "ref_model_init_kwargs": None,
    "use_liger_loss": False,
    "base_model_attribute_name": "model",
}
TRL_MODEL_CONFIG = {
    "model_name_or_path": "m",
    "model_revision": "main",
    "dtype": "bfloat16",
    "attn_implementation": None,
    "use_peft": False,
    "lora_r": 16,
    "lora_alpha": 32,
    "lora_dropout": 0.05,
    "lora_target_modules": None,
    "lora_modules_to_save": None,
    "lora_task_type": "CAUSAL_LM",
    "use_rslora": False,
    "use_dora": False,
    "load_in_8bit": False,
    "load_in_4bit": False,
    "bnb_4bit_quant_type": "nf4",
    "use_bnb_nested_quant": False,
}


def training_arguments() -> dict:
    from transformers import TrainingArguments

    return TrainingArguments(output_dir="x").to_dict()


def dumped_file() -> dict:
    return {**training_arguments(), **TRL_KTO_CONFIG, **TRL_MODEL_CONFIG}


def test_each_training_arguments_default_is_the_installed_transformers_one():
    """A transformers upgrade that changes a default (or drops a key) fails here."""
    dumped = training_arguments()
    mine = {k: e for k, e in DUMPED[TRAIN].items() if k in dumped}
    assert len(mine) >= 55
    assert {k: e.defaults[0] for k, e in mine.items()} == {k: dumped[k] for k in mine}


def test_the_table_repeats_no_key_of_config_keys_tables_nor_of_the_other_change():
    for command, table in DUMPED.items():
        explicit = set(OWN_KEYS[command]) | set(ALIASES[command]) | set(MAPPED[command]) | set(UNSUPPORTED[command]) | set(COMPANIONS[command])
        for other in (TRAIN, PRECOMPUTE):
            explicit |= set(OWN_KEYS[other]) | set(ALIASES[other]) | set(UNSUPPORTED[other])
        assert not (table.keys() & (explicit | set(IGNORED) | ELSEWHERE))
    assert not DUMPED[TRAIN].keys() & DUMPED[PRECOMPUTE].keys()


def test_every_key_of_a_dumped_config_is_known():
    """Nothing of a full dump is left to "unknown key" (and its "did you mean")."""
    for command in (TRAIN, PRECOMPUTE):
        known = set(IGNORED) | {"dataset_name", "stage"}
        for c in (TRAIN, PRECOMPUTE):
            known |= set(OWN_KEYS[c]) | set(ALIASES[c]) | set(MAPPED[c]) | set(UNSUPPORTED[c]) | set(COMPANIONS[c]) | set(DUMPED[c])
        assert set(dumped_file()) - known == set(), command


def test_a_whole_dumped_config_trains_with_one_grouped_line():
    resolved = resolve(dumped_file(), TRAIN)
    grouped = [n for n in resolved.notes if n.startswith("dumped defaults, ignored: ")]
    assert len(grouped) == 1
    named = grouped[0].removeprefix("dumped defaults, ignored: ").split(", ")
    assert set(named) == set(DUMPED[TRAIN]) & set(dumped_file())
    assert not any(n.startswith(tuple(f"{k}:" for k in DUMPED[TRAIN])) for n in resolved.notes)  # no line of their own
    others = [n for n in resolved.notes if n.startswith("kto-precompute's keys, ignored by kto-train: ")]
    assert len(others) == 1 and "precompute_ref_batch_size" in others[0].split(": ", 1)[1].split(", ")
    assert resolved.values["lr"] == 1e-6 and resolved.values["beta"] == 0.1


def test_kto_precompute_names_them_as_kto_trains_keys():
    resolved = resolve(dumped_file(), PRECOMPUTE)
    others = [n for n in resolved.notes if n.startswith("kto-train's keys, ignored by kto-precompute: ")]
    assert len(others) == 1
    assert set(DUMPED[TRAIN]) & set(dumped_file()) <= set(others[0].split(": ", 1)[1].split(", "))
    grouped = [n for n in resolved.notes if n.startswith("dumped defaults, ignored: ")]
    assert grouped == ["dumped defaults, ignored: precompute_ref_batch_size"]
    assert "attn_implementation" not in resolved.values and any(n.startswith("attn_implementation: null -> sdpa") for n in resolved.notes)
    # a value kto-train refuses is kto-train's to refuse
    assert "kto-train's key, ignored by kto-precompute: torch_compile" in resolve({"torch_compile": True}, PRECOMPUTE).notes


REFUSED = [
    ("torch_compile", True, "kto-train does not compile the model"),
    ("torch_compile_mode", "max-autotune", "kto-train does not compile the model"),
    ("neftune_noise_alpha", 5.0, "NEFTune noise on the embeddings is not supported"),
    ("auto_find_batch_size", True, "kto-train trains at batch_size and never halves it"),
    ("data_seed", 7, "give the data_seed as seed"),
    ("use_cpu", True, "CUDA_VISIBLE_DEVICES="),
    ("accelerator_config", {"split_batches": True}, "kto-train plans every process's rows itself"),
    ("train_sampling_strategy", "group_by_length", "it does not group rows by length"),
    ("hub_revision", "dev", "kto-train uploads to the repo's main branch"),
    ("is_encoder_decoder", True, "decoder-only"),
    ("bnb_4bit_quant_type", "fp4", "NF4 only"),
]


@pytest.mark.parametrize("key, value, reason", REFUSED)
def test_a_value_that_would_change_the_training_is_refused_saying_what_kto_does(key, value, reason):
    with pytest.raises(InputError) as err:
        resolve({**dumped_file(), key: value}, TRAIN)
    message = str(err.value)
    assert message.startswith(f"{key}: {value!r}: ") and reason in message and "unknown" not in message


@pytest.mark.parametrize(
    "key, value",
    [("hub_strategy", "end"), ("disable_tqdm", True), ("full_determinism", True), ("dataloader_pin_memory", False), ("project", "mine")],
)
def test_a_key_no_value_of_which_changes_the_training_is_skipped_with_its_own_line(key, value):
    resolved = resolve({key: value}, TRAIN)
    assert resolved.notes == [f"{key}: {str(value).lower()}: ignored ({DUMPED[TRAIN][key].why})"]


@pytest.mark.parametrize(
    "key, value",
    [
        ("debug", ""),
        ("include_for_metrics", None),
        ("accelerator_config", None),
        ("accelerator_config", {"even_batches": True}),
        ("ref_model_mixup_alpha", "0.6"),
    ],
)
def test_values_with_the_defaults_effect_are_defaults(key, value):
    assert dumped_key(TRAIN, key, value) == (True, DUMPED[TRAIN][key].why, True)
    assert resolve({key: value}, TRAIN).notes == [f"dumped defaults, ignored: {key}"]


def test_keys_outside_the_table_are_not_its_business():
    assert dumped_key(TRAIN, "learning_rate", 1.0) is None
    assert dumped_key(PRECOMPUTE, "torch_compile", True) is None
    with pytest.raises(InputError, match="unknown key 'torch_compiled'"):
        resolve({"torch_compiled": True}, TRAIN)


def test_kto_train_runs_a_whole_dump_written_as_yaml(tmp_path, monkeypatch):
    """Through the loader too, where an own option's `null` is refused unless the resolver says
    what it means (`attn_implementation: null`, ModelConfig's default)."""
    import yaml

    import kto.train.api
    from kto.train import cli as train_cli

    seen = []
    monkeypatch.setattr(kto.train.api, "run", seen.append)
    monkeypatch.setattr(train_cli, "check_paths", lambda cfg: None)  # "c" and "m" are placeholders
    dumped = {**dumped_file(), "output_dir": str(tmp_path / "o"), "cache": "c"}
    path = tmp_path / "dumped.yaml"
    path.write_text(yaml.safe_dump(dumped))
    result = CliRunner().invoke(train_cli.main, ["--config", str(path)])
    assert result.exit_code == 0, result.output
    assert sum("dumped defaults, ignored: " in line for line in result.output.splitlines()) == 1
    assert "attn_implementation: null -> sdpa" in result.output
    assert "fsdp: null -> not set" in result.output  # transformers 5 writes null; it was refused as empty
    assert seen[0].lr == 1e-6 and seen[0].attn_implementation == "sdpa"
