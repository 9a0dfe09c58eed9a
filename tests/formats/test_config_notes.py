"""The lines a LLaMA-Factory file's keys print where the same value means something else here:
cutoff_len (another cut), val_size (other row counts held out), template (another template)."""

from __future__ import annotations

import shutil

from click.testing import CliRunner
from conftest import chat_rows, precompute_args, write_rows

from kto.formats.config_keys import PRECOMPUTE, TRAIN
from kto.formats.config_names import resolve
from kto.precompute.cli import main

CUTOFF_256 = (
    "cutoff_len: 256 -> max_length 256, cut otherwise than LLaMA-Factory: a longer row has its prompt cut to max_prompt_length "
    "(256 // 2 = 128 unless given), keeping the prompt's end, then its completion keeps its first tokens; LLaMA-Factory's "
    "infer_seqlen keeps a completion under half of cutoff_len whole, gives the prompt the rest and keeps the prompt's start "
    "(docs/migrating.md, cutoff_len)"
)
VAL_SIZE_01 = (
    "val_size: 0.1 -> eval_fraction 0.1: kto-precompute holds out about round(0.1 × rows), as many of each label as their share, rows sharing a prompt on one side; "
    "LLaMA-Factory's train_test_split holds out ⌈0.1 × rows⌉ of any label (at 0.1, 25 rows: 2 here, 3 there)"
)


def test_cutoff_len_says_how_the_row_is_cut():
    """cutoff_len: 256 mapped to max_length 256 silently, while the prompt cap is 128 (end kept)
    and LLaMA-Factory's infer_seqlen splits the budget otherwise."""
    resolved = resolve({"stage": "kto", "cutoff_len": 256}, PRECOMPUTE)
    assert resolved.values["max_length"] == 256
    assert resolved.default_notes == {"max_length": CUTOFF_256}
    # A value refused by its key gets no note to contradict the error.
    assert resolve({"cutoff_len": 0}, PRECOMPUTE).default_notes == {}


def test_val_size_says_how_many_rows_are_held_out():
    resolved = resolve({"stage": "kto", "val_size": 0.1}, PRECOMPUTE)
    assert resolved.values["eval_fraction"] == 0.1
    assert resolved.default_notes["eval_fraction"] == VAL_SIZE_01
    assert "eval_fraction" not in resolve({"val_size": 0}, PRECOMPUTE).default_notes


def test_the_notes_are_printed_unless_the_command_line_sets_the_option(tmp_path):
    config = tmp_path / "lf.yaml"
    config.write_text(f"stage: kto\ncutoff_len: 256\nval_size: 0.1\nmodel_name_or_path: {tmp_path / 'no-model'}\ndata: [x.jsonl]\nout: o\n")
    silent = CliRunner().invoke(main, ["--config", str(config)])
    flagged = CliRunner().invoke(main, ["--config", str(config), "--max-length", "64", "--eval-fraction", "0.2"])
    assert silent.exit_code == flagged.exit_code == 2  # stopped at the missing model, after the notes
    assert f"kto-precompute: --config {config}: {CUTOFF_256}" in silent.output.splitlines()
    assert f"kto-precompute: --config {config}: {VAL_SIZE_01}" in silent.output.splitlines()
    assert "cutoff_len: 256 ->" not in flagged.output and "val_size: 0.1 ->" not in flagged.output


def test_template_says_which_template_renders():
    """`template: llama3` printed a fixed line; the template that renders is another one. Only
    kto-precompute renders: kto-train lists the key among those it leaves to kto-precompute."""
    notes = resolve({"template": "llama3"}, PRECOMPUTE).notes
    assert notes == [
        "template: ignored (llama3 is LLaMA-Factory's template by name, not rendered here: rows render with --chat-template if given, "
        "else the model's tokenizer's own chat template (chat_template: FILE.jinja replaces it))"
    ]
    notes = resolve({"template": "qwen", "chat_template": "qwen.jinja"}, PRECOMPUTE).notes
    assert notes == [
        "template: ignored (qwen is LLaMA-Factory's template by name, not rendered here: rows render with --chat-template if given, "
        "else this file's chat_template qwen.jinja)"
    ]
    train = resolve({"template": "llama3"}, TRAIN)
    assert train.notes == ["kto-precompute's key, ignored by kto-train: template"]


def test_no_chat_template_names_the_config_key(tmp_path, tiny_model_dir):
    """A LLaMA-Factory user with `template: llama3` and a base tokenizer is told the config key too."""
    model = tmp_path / "no-template"
    shutil.copytree(tiny_model_dir, model)
    (model / "chat_template.jinja").unlink()
    data = write_rows(tmp_path / "chat.jsonl", chat_rows())
    result = CliRunner().invoke(main, precompute_args(data, model, tmp_path / "out"))
    assert result.exit_code == 2, result.output
    assert result.output.strip().endswith(
        "the tokenizer has no chat template; give text prompts and completions, use a model whose tokenizer has one, or pass "
        "--chat-template FILE.jinja (chat_template: FILE.jinja in a --config file; LLaMA-Factory's template: NAME is not read)"
    )
