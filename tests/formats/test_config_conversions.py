"""Conversions of other tools' config values that a mutation hunt found untested: each value
here, spelt wrongly, would train with settings other than the file's without a word."""

from __future__ import annotations

import pytest

from kto.formats.config_keys import PRECOMPUTE, TRAIN, precompute_disagreements
from kto.formats.config_names import resolve
from kto.formats.config_switches import is_llama_factory
from kto.formats.errors import InputError


@pytest.mark.parametrize(
    "spelling, ours",
    [("float16", "fp16"), ("half", "fp16"), ("bfloat16", "bf16"), ("float32", "fp32"), ("float", "fp32"), ("bf16", "bf16")],
)
def test_torchs_dtype_spellings_are_ours(spelling, ours):
    assert resolve({"torch_dtype": spelling}, TRAIN).values["dtype"] == ours


def test_use_peft_takes_trls_lora_defaults_exactly():
    defaults = resolve({"use_peft": True}, TRAIN).defaults
    assert {k: defaults[k] for k in ("lora_r", "lora_alpha", "lora_dropout")} == {"lora_r": 16, "lora_alpha": 32.0, "lora_dropout": 0.05}


@pytest.mark.parametrize("given, ours", [(["wandb", "tensorboard"], "wandb,tensorboard"), (["wandb"], "wandb"), ([], "none"), ("mlflow", "mlflow")])
def test_report_to_keeps_every_tracker_listed(given, ours):
    assert resolve({"report_to": given}, TRAIN).values["report_to"] == ours


@pytest.mark.parametrize("rows", [1, 1.0, 200])
def test_val_size_of_a_row_count_is_refused_naming_val_size(rows):
    """LLaMA-Factory reads val_size ≥ 1 as a number of rows: named as such, not as a flag the file never wrote."""
    with pytest.raises(InputError, match=rf"val_size {rows}: a row count"):
        resolve({"stage": "kto", "val_size": rows}, PRECOMPUTE)


@pytest.mark.parametrize("key", ["quantization_bit", "finetuning_type", "stage", "cutoff_len", "pref_beta"])
def test_one_llama_factory_only_key_makes_a_llama_factory_file(key):
    assert is_llama_factory({"model_name_or_path": "m", key: 4})
    assert not is_llama_factory({"model_name_or_path": "m", "learning_rate": 1e-5})


@pytest.mark.parametrize(
    "key, value, content_key, recorded",
    [
        ("val_size", 0.2, "eval_fraction", 0.1),
        ("eval_fraction", 0.2, "eval_fraction", 0.1),
        ("cutoff_len", 512, "max_length", 1024),
        ("max_length", 512, "max_length", 1024),
    ],
)
def test_a_precompute_key_edited_after_the_cache_disagrees_with_it(key, value, content_key, recorded):
    """kto-train compares the file's kto-precompute keys with the cache's manifest: an edited
    val_size or cutoff_len would otherwise train on the old split or lengths under 'ignored'."""
    assert precompute_disagreements({key: value}, {content_key: recorded}) == [f"{key}: {value} (the cache's {content_key}: {recorded})"]
    assert precompute_disagreements({key: recorded}, {content_key: recorded}) == []


# Written out, not read from the table: a switch moved into the table's inert values would
# leave a list read from it without the switch, and the test without its case.
SWITCHES_REFUSED_WHEN_ON = [
    *((PRECOMPUTE, key) for key in ("sync_ref_model", "packing", "neat_packing", "train_on_prompt", "mask_history")),
    *((TRAIN, key) for key in ("sync_ref_model", "deepspeed", "load_best_model_at_end", "ignore_data_skip", "dataloader_drop_last")),
    *((TRAIN, key) for key in ("group_by_length", "use_dora", "use_rslora", "pissa_init")),
]


@pytest.mark.parametrize("command, key", SWITCHES_REFUSED_WHEN_ON)
def test_an_unsupported_switch_turned_on_is_refused_not_noted(command, key):
    """use_rslora, use_dora, …: false asks for nothing (a note), true for what this tool does not
    do: refused in one line naming the key, never trained without it."""
    with pytest.raises(InputError, match=key):
        resolve({key: True}, command)
    resolve({key: False}, command)  # inert: a note, no refusal
