"""LLaMA-Factory's eval file: `do_train: false` with `adapter_name_or_path` evaluates the base
(model_name_or_path) with those adapters, as `kto-train --eval-only --model ADAPTERS
--base-model BASE` does (docs/migrating.md); training from existing adapters stays refused."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from conftest import one_line_error, run_train

from kto.formats.config_keys import TRAIN
from kto.formats.config_names import resolve
from kto.formats.errors import InputError


def invoke(*args: str):
    from accelerate.state import AcceleratorState

    from kto.train.cli import main

    AcceleratorState._reset_state(reset_partial_state=True)
    return CliRunner().invoke(main, list(args))


def json_line(result) -> dict:
    assert result.exit_code == 0, result.output + repr(result.exception)
    (line,) = result.stdout.strip().splitlines()
    return json.loads(line)


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory, tiny_cache, tiny_model_dir):
    run = tmp_path_factory.mktemp("lf-adapter") / "run"
    result = run_train(tiny_cache, tiny_model_dir, run, "--lora-r", "4", "--lr", "1e-2", "--batch-size", "4", "--max-steps", "2")
    assert result.exit_code == 0, result.output
    return run


def test_an_eval_file_with_adapters_evaluates_them_on_the_base_as_eval_only_does(lora_run, tiny_model_dir, tiny_cache, tiny_eval_cache, tmp_path):
    adapters = lora_run / "final"
    config = tmp_path / "ev.yaml"
    out = tmp_path / "lf-eval"
    config.write_text(
        f"model_name_or_path: {tiny_model_dir}\nadapter_name_or_path: {adapters}\nstage: kto\ndo_train: false\ndo_eval: true\n"
        f"finetuning_type: lora\ncache: {tiny_cache}\neval_cache: {tiny_eval_cache}\noutput_dir: {out}\nper_device_eval_batch_size: 1\n"
    )
    from_file = invoke("--config", str(config))
    line = json_line(from_file)
    assert f"adapter_name_or_path: {adapters} -> --model {adapters} on --base-model {tiny_model_dir}" in from_file.stderr
    flags = invoke("--eval-only", "--model", str(adapters), "--base-model", str(tiny_model_dir), "--eval-cache", str(tiny_eval_cache), "--eval-batch-size", "1")
    assert json_line(flags) == line
    assert line["model"] == str(adapters)
    assert json.loads((out / "eval_results.json").read_text()) == line


def test_several_adapters_are_refused_in_one_line(tmp_path, tiny_model_dir, tiny_eval_cache):
    config = tmp_path / "ev.yaml"
    config.write_text(
        f"model_name_or_path: {tiny_model_dir}\nadapter_name_or_path: saves/a, saves/b\nstage: kto\ndo_train: false\neval_cache: {tiny_eval_cache}\n"
    )
    line = one_line_error(invoke("--config", str(config)))
    assert line == (
        f"kto-train: error: --config {config}: adapter_name_or_path: 'saves/a, saves/b': 2 adapters; LLaMA-Factory merges all but the "
        "last into the model first, which kto-train does not: merge saves/a into model_name_or_path first (llamafactory-cli export) "
        "and give the last adapter alone"
    )


TRAINING_REFUSED = (
    "adapter_name_or_path: 'saves/a': kto-train starts fresh adapters on model; to train on from these, merge them into the model "
    "first (llamafactory-cli export) and give that as model_name_or_path; to evaluate them, write do_train: false (with an eval set) "
    "or give --eval-only"
)


def in_force(raw: dict, **flags) -> tuple[dict, list[str]]:
    """The values kto-train runs with (the file's under `flags` given on the command line) and
    the notes, as train/cli.py merges them: formats.config_adapters.adapters_in_force."""
    from kto.formats.config_adapters import adapters_in_force

    resolved = resolve(raw, TRAIN)
    values = {"eval_only": False, **resolved.values, **flags}
    adapters_in_force("f.yaml", resolved, values, lambda name: name in flags)
    return values, resolved.notes


def test_training_from_adapters_is_refused_naming_what_works():
    for raw in ({"stage": "kto", "adapter_name_or_path": "saves/a"}, {"stage": "kto", "do_train": True, "adapter_name_or_path": "saves/a"}):
        with pytest.raises(InputError) as caught:
            in_force(raw)
        assert str(caught.value) == f"--config f.yaml: {TRAINING_REFUSED}"


def test_the_adapter_key_under_eval_only_maps_to_model_and_base_model():
    raw = {"stage": "kto", "do_train": False, "model_name_or_path": "base", "adapter_name_or_path": " saves/a "}
    values, notes = in_force(raw)
    assert (values["model"], values["base_model"], values["eval_only"]) == ("saves/a", "base", True)
    resolved = resolve(raw, TRAIN)
    from kto.formats.config_adapters import adapters_in_force

    adapters_in_force("f.yaml", resolved, {**resolved.values}, lambda name: False)
    assert (resolved.key_of("model"), resolved.key_of("base_model")) == ("adapter_name_or_path", "model_name_or_path")
    with pytest.raises(InputError, match="adapter_name_or_path: 'saves/a': LLaMA-Factory reads adapters only with finetuning_type: lora"):
        in_force({"stage": "kto", "do_train": False, "finetuning_type": "full", "model_name_or_path": "b", "adapter_name_or_path": "saves/a"})
    assert "adapter_name_or_path: null: ignored" in " ".join(resolve({"stage": "kto", "adapter_name_or_path": None}, TRAIN).notes)


def test_eval_only_on_the_command_line_reads_the_adapters_as_the_files_do_train_false():
    """README: do_train: false is --eval-only; given on the command line, the file's adapters are
    evaluated on its model_name_or_path alike."""
    raw = {"stage": "kto", "finetuning_type": "lora", "model_name_or_path": "base", "adapter_name_or_path": "saves/a"}
    values, notes = in_force(raw, eval_only=True)
    assert (values["model"], values["base_model"]) == ("saves/a", "base")
    assert "adapter_name_or_path: saves/a -> --model saves/a on --base-model base" in " ".join(notes)


def test_flags_on_the_command_line_win_over_the_adapter_key():
    raw = {"stage": "kto", "do_train": False, "model_name_or_path": "base", "adapter_name_or_path": "saves/a"}
    values, _ = in_force(raw, base_model="other")
    assert (values["model"], values["base_model"]) == ("saves/a", "other")
    values, notes = in_force(raw, model="saves/b")
    assert (values["model"], values.get("base_model")) == ("saves/b", None)
    assert "adapter_name_or_path: saves/a: unused (--model on the command line is the model evaluated)" in " ".join(notes)


def test_the_command_lines_eval_only_evaluates_the_files_adapters(lora_run, tiny_model_dir, tiny_eval_cache, tmp_path):
    adapters = lora_run / "final"
    config = tmp_path / "lf.yaml"
    config.write_text(
        f"model_name_or_path: {tiny_model_dir}\nadapter_name_or_path: {adapters}\nstage: kto\nfinetuning_type: lora\n"
        f"eval_cache: {tiny_eval_cache}\noutput_dir: {tmp_path / 'out'}\n"
    )
    from_file = invoke("--config", str(config), "--eval-only", "--eval-batch-size", "1")
    line = json_line(from_file)
    assert f"adapter_name_or_path: {adapters} -> --model {adapters} on --base-model {tiny_model_dir}" in from_file.stderr
    flags = invoke("--eval-only", "--model", str(adapters), "--base-model", str(tiny_model_dir), "--eval-cache", str(tiny_eval_cache), "--eval-batch-size", "1")
    assert json_line(flags) == line


@pytest.mark.parametrize(
    "written, said",
    [
        ("true", "adapter_name_or_path: true is true/false; expected text (an adapter directory)"),
        ("{a: 1}", "adapter_name_or_path: {'a': 1}: expected text (an adapter directory) or a list of text"),
        ("[saves/a, 3]", "adapter_name_or_path: ['saves/a', 3]: expected text (an adapter directory) or a list of text"),
        ("5", "adapter_name_or_path: 5: expected text (an adapter directory) or a list of text"),
        ("''", "adapter_name_or_path: '': is empty; give an adapter directory, or leave the key out"),
        ("saves/a/final,", "adapter_name_or_path: 'saves/a/final,': an empty entry (a stray comma?); give one adapter directory"),
        ("[saves/a, '']", "adapter_name_or_path: ['saves/a', '']: an empty entry; give one adapter directory"),
    ],
)
def test_an_adapter_value_that_names_no_directory_is_refused_in_one_line(tmp_path, tiny_model_dir, tiny_eval_cache, written, said):
    config = tmp_path / "ev.yaml"
    config.write_text(f"model_name_or_path: {tiny_model_dir}\nadapter_name_or_path: {written}\nstage: kto\ndo_train: false\neval_cache: {tiny_eval_cache}\n")
    assert one_line_error(invoke("--config", str(config))) == f"kto-train: error: --config {config}: {said}"


def test_a_home_folder_adapter_path_is_expanded(lora_run, tiny_model_dir, tiny_eval_cache, tmp_path, monkeypatch):
    """README: a path that starts with `~` is the home folder in every flag and config-file
    value; adapter_name_or_path: ~/x was taken for a whole model ("merge it first")."""
    import shutil

    home = tmp_path / "home"
    shutil.copytree(lora_run / "final", home / "adapters")
    monkeypatch.setenv("HOME", str(home))
    config = tmp_path / "ev.yaml"
    config.write_text(
        f"model_name_or_path: {tiny_model_dir}\nadapter_name_or_path: ~/adapters\nstage: kto\ndo_train: false\neval_cache: {tiny_eval_cache}\n"
        "per_device_eval_batch_size: 1\n"
    )
    line = json_line(invoke("--config", str(config)))
    flags = invoke(
        "--eval-only", "--model", str(home / "adapters"), "--base-model", str(tiny_model_dir), "--eval-cache", str(tiny_eval_cache), "--eval-batch-size", "1"
    )
    assert {**json_line(flags), "model": "~/adapters"} == line
