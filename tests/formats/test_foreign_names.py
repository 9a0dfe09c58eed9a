"""axolotl's keys and OpenRLHF's flags, and TRL's flags on the command line, are named by their
meaning here (formats/config_foreign.py), never by a near spelling of an option that means
something else (`datasets` was "did you mean dataset?", `--train_batch_size` "--batch-size")."""

from __future__ import annotations

import pytest

from kto.formats.config_keys import PRECOMPUTE, TRAIN, option_hint
from kto.formats.config_names import resolve
from kto.formats.errors import InputError


def _refusal(raw: dict, command: str) -> str:
    with pytest.raises(InputError) as e:
        resolve(raw, command)
    return str(e.value)


@pytest.mark.parametrize(
    ("key", "command", "says"),
    [
        ("datasets", PRECOMPUTE, "'datasets' (axolotl's name; here: data (FILE, a list, or hf:ID:SPLIT"),
        ("sequence_len", PRECOMPUTE, "'sequence_len' (axolotl's name; here: max_length"),
        ("sequence_len", TRAIN, "'sequence_len' (axolotl's name; here: kto-precompute's max_length"),
        ("adapter", TRAIN, "'adapter' (axolotl's name; here: lora_r"),
        ("special_tokens", PRECOMPUTE, "'special_tokens' (axolotl's name; here: add tokens to the model's tokenizer"),
        ("evals_per_epoch", TRAIN, "'evals_per_epoch' (axolotl's name; here: eval_each_epoch: true (once per epoch)"),
        ("rl_beta", TRAIN, "'rl_beta' (axolotl's name; here: beta)"),
        ("num_epochs", TRAIN, "'num_epochs' (axolotl's name; here: epochs)"),
        ("lr_scheduler", TRAIN, "'lr_scheduler' (axolotl/OpenRLHF's name; here: lr_schedule)"),
        ("dataset_prepared_path", PRECOMPUTE, "'dataset_prepared_path' (axolotl's name; here: cache"),
        ("wandb_entity", TRAIN, "'wandb_entity' (axolotl's name; here: report_to: wandb"),
        ("xformers_attention", TRAIN, "'xformers_attention' (axolotl's name; here: attn_implementation"),
        ("pad_to_sequence_len", PRECOMPUTE, "'pad_to_sequence_len' (axolotl's name; here: "),
        ("optimizer", TRAIN, "'optimizer' (axolotl's name; here: torch's AdamW is the only optimizer"),
    ],
)
def test_an_axolotl_key_is_named_by_its_meaning(key, command, says):
    assert says in _refusal({key: "x"}, command)


def test_rl_kto_is_said_and_other_rl_refused():
    assert "rl: kto: ignored (that is what this does)" in resolve({"rl": "kto"}, TRAIN).notes
    assert "rl: kto: ignored (that is what this does)" in resolve({"rl": "kto"}, PRECOMPUTE).notes
    assert "rl: dpo: kto-offline trains KTO only (rl: kto)" in _refusal({"rl": "dpo"}, TRAIN)


def test_base_model_without_model_says_it_is_axolotls_model():
    notes = resolve({"base_model": "m", "data": "d.jsonl"}, PRECOMPUTE).default_notes.values()  # printed without --model
    assert any("base_model" in n and "axolotl's base_model is model here" in n for n in notes), notes
    notes = resolve({"base_model": "m", "cache": "c"}, TRAIN).notes
    assert any("axolotl's base_model is model here" in n for n in notes), notes
    assert not any("axolotl" in n for n in resolve({"base_model": "m", "model": "p", "cache": "c"}, TRAIN).notes)


def test_an_unknown_key_is_listed_with_a_bad_switch_value():
    """bf16: auto was refused alone; the 14 unknown keys came one run later."""
    message = _refusal({"bf16": "auto", "rl_beta": 0.2, "sequence_len": 256}, TRAIN)
    assert "bf16: 'auto'" in message and "mixed_precision auto" in message
    assert "'rl_beta' (axolotl's name; here: beta)" in message and "'sequence_len'" in message


def test_bf16_auto_says_what_to_use():
    assert _refusal({"bf16": "auto"}, TRAIN) == (
        "bf16: 'auto' is axolotl's (bf16 where the GPU has it): leave bf16 out, mixed_precision auto (kto-train's default) is bf16 autocast on CUDA"
    )


def test_an_axolotl_chat_template_name_is_explained(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    notes = resolve({"chat_template": "chatml", "data": "d.jsonl"}, PRECOMPUTE)
    assert "chat_template" not in notes.values
    assert any(n.startswith("chat_template: ignored (chatml is axolotl's template by name, not rendered here") for n in notes.notes)
    (tmp_path / "t.jinja").write_text("x")
    assert resolve({"chat_template": "t.jinja"}, PRECOMPUTE).values["chat_template"] == "t.jinja"


@pytest.mark.parametrize(
    ("command", "flag", "says"),
    [
        (TRAIN, "--train_batch_size", "OpenRLHF's; its global batch: here --batch-size × --grad-accum × processes"),
        (TRAIN, "--micro_train_batch_size", "OpenRLHF's name for kto-train's --batch-size"),
        (TRAIN, "--max_len", "OpenRLHF's name for kto-precompute's --max-length"),
        (TRAIN, "--pretrain", "OpenRLHF's name for kto-train's --model"),
        (TRAIN, "--save_path", "OpenRLHF's name for kto-train's --out"),
        (TRAIN, "--ckpt_path", "OpenRLHF's; checkpoints are OUT/checkpoint-STEP"),
        (TRAIN, "--zero_stage", "OpenRLHF's; DeepSpeed ZeRO is not supported: --fsdp"),
        (PRECOMPUTE, "--input_key", "OpenRLHF's name for kto-precompute's --prompt-column"),
        (PRECOMPUTE, "--output_key", "OpenRLHF's name for kto-precompute's --completion-column"),
        (PRECOMPUTE, "--label_key", "OpenRLHF's name for kto-precompute's --label-column"),
        (TRAIN, "--fp16", "transformers' switch: give --mixed-precision fp16"),
        (TRAIN, "--bf16", "transformers' switch: give --mixed-precision bf16"),
        (TRAIN, "--optim", "kto-train uses AdamW (torch), with no flag for another optimizer"),
        (TRAIN, "--max_length", "kto-precompute's --max-length"),
        (PRECOMPUTE, "--output_dir", "give --out DIR, the cache directory"),
        (PRECOMPUTE, "--dataset_name", "TRL's dataset_name: give --data hf:ID:SPLIT"),
        (TRAIN, "--num_epochs", "axolotl's name for kto-train's --epochs"),
        (TRAIN, "--learning_rate", "TRL/LLaMA-Factory's name for kto-train's --lr"),
    ],
)
def test_a_flag_of_another_tool_is_named_by_its_meaning(command, flag, says):
    hint = option_hint(command, flag)
    assert hint is not None and says in hint, hint
    if flag == "--train_batch_size":
        assert "--batch-size alone" not in hint and "× --grad-accum" in hint


def test_the_command_line_prints_the_hint():
    from click.testing import CliRunner

    from kto.train.cli import main as train

    out = CliRunner().invoke(train, ["--fp16"]).output
    assert "No such option: --fp16 (transformers' switch: give --mixed-precision fp16" in out
    assert "--fsdp" not in out.split("(", 1)[0]


def test_kto_train_names_axolotls_base_model_in_the_missing_model_refusal(tmp_path):
    """kto-train refused "--model is required" before printing the file's notes, so the line
    saying axolotl's base_model is model here never showed."""
    from click.testing import CliRunner

    from kto.train.cli import main

    path = tmp_path / "axolotl.yaml"
    path.write_text("base_model: HuggingFaceTB/SmolLM2-135M\nbeta: 0.1\n")
    result = CliRunner().invoke(main, ["--config", str(path), "--cache", "c", "--out", str(tmp_path / "o")])
    line = result.output.strip().splitlines()[-1]
    assert result.exit_code == 2 and line.startswith("kto-train: error: --model is required")
    assert "axolotl's base_model is model here (model: PATH)" in line
    with_model = CliRunner().invoke(main, ["--config", str(path), "--cache", "c", "--model", "m", "--out", str(tmp_path / "o")])
    # A model in force: base_model is refused (it is kto-train's, for --eval-only), saying what axolotl's is.
    assert with_model.output.strip().splitlines()[-1] == (
        f"kto-train: error: --config {path}: base_model HuggingFaceTB/SmolLM2-135M: only with --eval-only "
        "(training starts from --model; axolotl's base_model is --model here)"
    )
