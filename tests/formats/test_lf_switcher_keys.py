"""LLaMA-Factory keys that a switcher's file commonly holds are told by what they do here (ignored
with the reason, or refused with what to do), never with a "did you mean" that compares spellings
only (rope_scaling is not prefix_sharing); and the suggester says so when its pick is itself
refused or skipped (formats/config_unsupported.py)."""

from __future__ import annotations

import pytest

from kto.formats.config_keys import PRECOMPUTE, TRAIN
from kto.formats.config_names import resolve
from kto.formats.errors import InputError

LF = {"stage": "kto", "model_name_or_path": "m", "finetuning_type": "lora"}


def refusal(key: str, value, command: str) -> str:
    with pytest.raises(InputError) as caught:
        resolve({**LF, key: value}, command)
    return str(caught.value)


def notes(key: str, value, command: str) -> list[str]:
    return [n for n in resolve({**LF, key: value}, command).notes if n.startswith(f"{key}:")]


@pytest.mark.parametrize(
    ("key", "value", "command", "says"),
    [
        ("rope_scaling", "linear", TRAIN, "rope_scaling: 'linear': RoPE scaling is not supported"),
        ("rope_scaling", "linear", PRECOMPUTE, "rope_scaling: 'linear': RoPE scaling is not supported"),
        ("use_galore", True, TRAIN, "use_galore: True: GaLore"),
        ("use_badam", True, TRAIN, "use_badam: True: BAdam"),
        ("use_adam_mini", True, TRAIN, "use_adam_mini: True: Adam-mini"),
        ("dpo_label_smoothing", 0.1, TRAIN, "dpo_label_smoothing: 0.1: cDPO's label smoothing"),
        ("disable_shuffling", True, TRAIN, "disable_shuffling: True: kto-train batches rows in the cache's seeded order"),
        ("ignore_pad_token_for_loss", False, PRECOMPUTE, "ignore_pad_token_for_loss: False: padding is never trained here"),
        ("model_max_length", 512, PRECOMPUTE, "model_max_length: 512: LLaMA-Factory derives it from cutoff_len"),
        ("streaming", True, PRECOMPUTE, "streaming: True: kto-precompute reads every row"),
        ("tokenized_path", "/tmp/x", PRECOMPUTE, "tokenized_path: '/tmp/x': LLaMA-Factory's saved tokenized dataset"),
        ("interleave_probs", "0.5,0.5", PRECOMPUTE, "interleave_probs: '0.5,0.5': interleaving"),
        ("split_special_tokens", True, PRECOMPUTE, "split_special_tokens: True: kto-precompute tokenizes with the model's own"),
    ],
)
def test_refused_with_what_it_is(key, value, command, says):
    message = refusal(key, value, command)
    assert says in message
    assert "did you mean" not in message and "unknown key" not in message


@pytest.mark.parametrize(
    ("key", "value", "command", "says"),
    [
        ("low_cpu_mem_usage", False, TRAIN, "low_cpu_mem_usage: false: ignored (how transformers loads the weights"),
        ("low_cpu_mem_usage", True, PRECOMPUTE, "low_cpu_mem_usage: true: ignored (how transformers loads the weights"),
        ("upcast_layernorm", True, TRAIN, "upcast_layernorm: true: ignored (kto-train keeps every weight in fp32"),
        ("upcast_lmhead_output", True, TRAIN, "upcast_lmhead_output: true: ignored (log-probs are computed in fp32 here"),
        ("use_reentrant_gc", False, TRAIN, "use_reentrant_gc: false: ignored (which checkpointing implementation"),
        ("enable_liger_kernel", True, TRAIN, "enable_liger_kernel: true: ignored (a faster kernel for the same maths"),
        ("use_unsloth", True, TRAIN, "use_unsloth: true: ignored (unsloth's faster kernels"),
        ("ignore_pad_token_for_loss", True, PRECOMPUTE, "ignore_pad_token_for_loss: true: ignored (padded positions are masked"),
        ("dpo_label_smoothing", 0.0, TRAIN, "dpo_label_smoothing: 0.0: ignored"),
        ("use_galore", False, TRAIN, "use_galore: false: ignored"),
        ("streaming", False, PRECOMPUTE, "streaming: false: ignored"),
    ],
)
def test_ignored_with_the_reason(key, value, command, says):
    (note,) = notes(key, value, command)
    assert note.startswith(says), note


def test_each_command_skips_the_others_data_keys():
    """A LLaMA-Factory file holds both commands' keys: kto-train names a data key as kto-precompute's."""
    resolved = resolve({**LF, "streaming": True, "model_max_length": 512}, TRAIN)
    assert any("ignored by kto-train: streaming, model_max_length" in n for n in resolved.notes)


@pytest.mark.parametrize(
    ("typo", "command", "said"),
    [
        ("use_rslor", TRAIN, "did you mean use_rslora (refused here unless false: rsLoRA is not supported"),
        ("use_liger_kernal", TRAIN, "did you mean use_liger_kernel (ignored here: a faster kernel"),
        ("data_sed", TRAIN, "did you mean data_seed (refused here unless null: the data order follows seed)?"),
    ],
)
def test_a_suggestion_that_is_refused_or_skipped_says_so(typo, command, said):
    assert said in refusal(typo, True, command)


@pytest.mark.parametrize(
    ("typo", "command", "said"),
    [
        # A ';' inside parentheses does not end the clause: the parentheses close.
        (
            "upcast_layernom",
            TRAIN,
            "'upcast_layernom' (did you mean upcast_layernorm (ignored here: kto-train keeps every weight in fp32 (its default dtype; "
            "mixed_precision casts only the matmuls), layernorms included)?)",
        ),
        # 0 and 0.0 are one value: said once.
        ("dpo_label_smothing", TRAIN, "(did you mean dpo_label_smoothing (refused here unless 0: cDPO's label smoothing, a DPO setting)?)"),
        ("packng", PRECOMPUTE, "(did you mean packing (refused here unless false: LLaMA-Factory's KTO stage does not pack either)?)"),
    ],
)
def test_the_suggestions_note_reads_whole(typo, command, said):
    assert said in refusal(typo, True, command)
