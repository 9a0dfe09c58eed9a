"""The axolotl/OpenRLHF hints, mended: axolotl's template names only (a missing file is refused
as before), every flag a hint prints exists on the command it names, the config-file refusal
reasons are not printed as command-line hints, axolotl's common keys are named by their
meaning, base_model's note only where a model is missing, one hint said once for its keys."""

from __future__ import annotations

import re

import pytest

from kto.formats.config_dumped import DUMPED
from kto.formats.config_foreign import FOREIGN
from kto.formats.config_keys import ALIASES, COMPANIONS, FLAG_HINTS, IGNORED, OWN_KEYS, PRECOMPUTE, SWITCH_HINTS, TRAIN, option_hint
from kto.formats.config_names import resolve
from kto.formats.config_unsupported import UNSUPPORTED
from kto.formats.errors import InputError


def _refusal(raw: dict, command: str) -> str:
    with pytest.raises(InputError) as e:
        resolve(raw, command)
    return str(e.value)


@pytest.mark.parametrize("name", ["chatml", "llama3", "tokenizer_default", "tokenizer_default_fallback_chatml", "qwen3", "alpaca"])
def test_axolotls_template_names_are_skipped(tmp_path, monkeypatch, name):
    monkeypatch.chdir(tmp_path)
    resolved = resolve({"chat_template": name}, PRECOMPUTE)
    assert "chat_template" not in resolved.values
    assert any(n.startswith(f"chat_template: ignored ({name} is axolotl's template by name") for n in resolved.notes)


def test_a_missing_template_file_is_not_taken_for_a_name(tmp_path, monkeypatch):
    """`chat_template: mytmpl` was skipped as axolotl's; it is a file the command refuses as missing."""
    monkeypatch.chdir(tmp_path)
    resolved = resolve({"chat_template": "mytmpl"}, PRECOMPUTE)
    assert resolved.values["chat_template"] == "mytmpl" and not any("axolotl" in n for n in resolved.notes)


def test_template_and_an_axolotl_chat_template_name_agree(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    notes = " | ".join(resolve({"template": "llama3", "chat_template": "chatml"}, PRECOMPUTE).notes)
    assert "this file's chat_template chatml" not in notes
    assert "rows render with --chat-template if given, else the model's tokenizer's own chat template" in notes


def _click_flags() -> dict[str, set[str]]:
    from kto.precompute.cli import main as precompute
    from kto.train.cli import main as train

    return {cmd: {o for p in c.params for o in [*p.opts, *p.secondary_opts]} for cmd, c in ((PRECOMPUTE, precompute), (TRAIN, train))}


_NAMES = sorted(
    set(FOREIGN)
    | {n for c in (PRECOMPUTE, TRAIN) for t in (SWITCH_HINTS, FLAG_HINTS, ALIASES, UNSUPPORTED, OWN_KEYS, COMPANIONS, DUMPED) for n in t[c]}
    | set(IGNORED)
)


def test_every_flag_a_hint_prints_exists_on_the_command_it_names():
    flags = _click_flags()
    wrong = []
    for command in (PRECOMPUTE, TRAIN):
        for name in _NAMES:
            hint = option_hint(command, f"--{name}")
            for owner, flag in re.findall(r"(?:(kto-train|kto-precompute)'s )?(--[a-z][\w-]*)", hint or ""):
                if flag not in flags[owner or command]:
                    wrong.append(f"{command} --{name}: {owner or command} {flag}")
    assert not wrong, wrong


@pytest.mark.parametrize(
    ("command", "flag", "says"),
    [
        (PRECOMPUTE, "--use_wandb", "kto-train's --report-to wandb"),
        (PRECOMPUTE, "--zero_stage", "kto-train's --fsdp"),
        (PRECOMPUTE, "--ckpt_path", "kto-train's --save-every N"),
        (TRAIN, "--apply_chat_template", "kto-precompute's --chat-template FILE"),
        (TRAIN, "--store_token_logps", "kto-precompute's --token-logps"),
        (TRAIN, "--lr_scheduler", "axolotl/OpenRLHF's name for kto-train's --lr-schedule"),
    ],
)
def test_a_flag_of_the_other_command_is_said_to_be_its(command, flag, says):
    assert says in option_hint(command, flag)


@pytest.mark.parametrize(
    ("command", "flag", "not_said"),
    [
        (TRAIN, "--use_unsloth", "a true/false switch"),
        (TRAIN, "--adapter_name_or_path", "write do_train: false"),
        (PRECOMPUTE, "--model_revision", "as model_name_or_path"),
        (PRECOMPUTE, "--rope_scaling", "as model_name_or_path"),
    ],
)
def test_a_config_files_refusal_is_not_a_flag_hint(command, flag, not_said):
    hint = option_hint(command, flag)
    assert hint is not None and not_said not in hint and "not supported" in hint, hint


def test_optim_on_the_command_line():
    assert "another optimizer's maths" not in option_hint(TRAIN, "--optim")
    assert option_hint(TRAIN, "--optim") == "kto-train uses AdamW (torch), with no flag for another optimizer: see docs/migrating.md"


def test_output_dir_on_kto_precompute_reads():
    hint = option_hint(PRECOMPUTE, "--output_dir")
    assert hint.startswith("give --out DIR, the cache directory") and "kto-train's --out" in hint


@pytest.mark.parametrize(
    ("key", "says"),
    [
        ("model_type", "axolotl's name; here: the model's own class"),
        ("tokenizer_type", "axolotl's name; here: the model's own class and tokenizer"),
        ("eval_table_size", "axolotl's name; "),
        ("eval_max_new_tokens", "axolotl's name; "),
        ("lora_model_dir", "axolotl's name; "),
        ("chat_template_jinja", "axolotl's name; here: kto-precompute's chat_template FILE.jinja"),
        ("strict", "axolotl's name; "),
        ("lora_fan_in_fan_out", "axolotl's name; "),
        ("early_stopping_patience", "axolotl's name; "),
    ],
)
def test_axolotls_common_keys_are_named_by_meaning(key, says):
    message = _refusal({key: "x"}, TRAIN)
    assert says in message and "did you mean" not in message and "no close name" not in message, message


def test_base_model_note_only_where_it_helps():
    resolved = resolve({"base_model": "m", "data": "d.jsonl"}, PRECOMPUTE)
    assert not any("axolotl" in n for n in resolved.notes)  # printed only without --model on the command line
    assert "axolotl's base_model is model here (model: PATH)" in resolved.default_notes["model"]
    for command in (PRECOMPUTE, TRAIN):
        resolved = resolve({"base_model": None, "cache": "c", "data": "d.jsonl"}, command)
        assert not any("axolotl" in n for n in [*resolved.notes, *resolved.default_notes.values()])


def test_a_shared_hint_is_said_once():
    message = _refusal({"wandb_project": None, "wandb_entity": None, "wandb_name": None, "rl_beta": 0.1}, TRAIN)
    assert message.count("WANDB_PROJECT") == 1
    assert "'wandb_project', 'wandb_entity', 'wandb_name' (axolotl's name; here: report_to: wandb" in message


def test_the_axolotl_example_refusal_is_short(tmp_path, monkeypatch):
    import yaml

    monkeypatch.chdir(tmp_path)
    raw = yaml.safe_load(AXOLOTL_KTO)
    for command in (PRECOMPUTE, TRAIN):
        message = _refusal(raw, command)
        assert len(message) < 2700  # 3456 with wandb's hint said 5 times, (len(message), message)
        assert "did you mean" not in message, message


def test_a_null_rl_is_skipped():
    resolved = resolve({"rl": None}, TRAIN)
    assert not any("None" in n for n in resolved.notes)


AXOLOTL_KTO = """
base_model: m
model_type: AutoModelForCausalLM
tokenizer_type: AutoTokenizer
load_in_8bit: false
load_in_4bit: false
strict: false
rl: kto
rl_beta: 0.1
kto_desirable_weight: 1.0
kto_undesirable_weight: 1.0
remove_unused_columns: false
chat_template: chatml
datasets:
  - path: argilla/ultrafeedback-binarized-preferences-cleaned-kto
    type: chatml.ultra
    split: train
dataset_prepared_path: last_run_prepared
val_set_size: 0.0
output_dir: ./outputs/kto-out
sequence_len: 2048
sample_packing: false
pad_to_sequence_len: false
adapter: lora
lora_model_dir:
lora_r: 32
lora_alpha: 16
lora_dropout: 0.05
lora_target_linear: true
lora_fan_in_fan_out:
wandb_project:
wandb_entity:
wandb_watch:
wandb_name:
wandb_log_model:
gradient_accumulation_steps: 4
micro_batch_size: 2
num_epochs: 1
optimizer: paged_adamw_8bit
lr_scheduler: cosine
learning_rate: 0.0002
train_on_inputs: false
group_by_length: false
bf16: auto
fp16:
tf32: false
gradient_checkpointing: true
gradient_checkpointing_kwargs:
  use_reentrant: true
early_stopping_patience:
resume_from_checkpoint:
local_rank:
logging_steps: 1
xformers_attention:
flash_attention: true
warmup_steps: 10
evals_per_epoch: 4
eval_table_size:
eval_max_new_tokens: 128
saves_per_epoch: 1
debug:
deepspeed:
weight_decay: 0.0
fsdp:
fsdp_config:
special_tokens:
"""


def test_every_own_keys_flag_is_the_commands():
    from kto.formats.config_keys import flag_of

    flags = _click_flags()
    assert [(c, k) for c in (PRECOMPUTE, TRAIN) for k in OWN_KEYS[c] if flag_of(c, k) not in flags[c]] == []
