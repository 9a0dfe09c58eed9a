"""`--resume OTHER/checkpoint-STEP` with `--out NEWDIR`: a checkpoint of another run is refused
on one line that says so, naming the run it belongs to and the two ways on (continue that run
with --out OTHER, or start a new run from its weights with --model), whether --out is empty or
holds a run of its own, and whether the two come from the command line or a TRL config file
(output_dir, resume_from_checkpoint). Following the advice does what it says."""

from __future__ import annotations

import pytest
from click.testing import CliRunner
from conftest import metrics, run_train, train_error_line

ARGS = ["--batch-size", "2", "--lr", "1e-3", "--log-every", "1", "--max-steps", "3", "--save-every", "1"]


@pytest.fixture(scope="module")
def other(tmp_path_factory, tiny_cache, tiny_model_dir):
    """A finished run of three steps, a checkpoint at each (tests resume copies of it)."""
    out = tmp_path_factory.mktemp("resume-other") / "other"
    result = run_train(tiny_cache, tiny_model_dir, out, *ARGS)
    assert result.exit_code == 0, result.output
    return out


def train_losses(run) -> list[float]:
    return [m["loss"] for m in metrics(run) if m["split"] == "train"]


def expected(checkpoint, out) -> str:
    return (
        f"kto-train: error: --resume {checkpoint}: a checkpoint of the run in {checkpoint.parent}, not of --out {out}: "
        f"to continue that run, give --out {checkpoint.parent} (or leave --out out); "
        f"to start a new run from its weights, give --model {checkpoint} without --resume"
    )


def test_a_checkpoint_of_another_run_names_its_run_not_an_empty_out(other, tiny_cache, tiny_model_dir, tmp_path):
    new = tmp_path / "new"
    result = run_train(tiny_cache, tiny_model_dir, new, *ARGS, "--resume", str(other / "checkpoint-2"))
    assert result.exit_code == 2, result.output
    assert train_error_line(result.output) == expected(other / "checkpoint-2", new)
    assert not new.exists()


def test_a_checkpoint_of_another_run_is_named_so_when_out_holds_a_run_too(other, tiny_cache, tiny_model_dir, tmp_path):
    import shutil

    mine = shutil.copytree(other, tmp_path / "mine")
    result = run_train(tiny_cache, tiny_model_dir, mine, *ARGS, "--resume", str(other / "checkpoint-2"))
    assert result.exit_code == 2, result.output
    assert train_error_line(result.output) == expected(other / "checkpoint-2", mine)
    assert sorted(p.name for p in mine.glob("checkpoint-*")) == ["checkpoint-1", "checkpoint-2", "checkpoint-3"]


def test_a_checkpoint_copied_out_of_its_run_offers_only_a_new_run(other, tiny_cache, tiny_model_dir, tmp_path):
    import shutil

    loose = shutil.copytree(other / "checkpoint-2", tmp_path / "saved" / "checkpoint-2")
    new = tmp_path / "new"
    result = run_train(tiny_cache, tiny_model_dir, new, *ARGS, "--resume", str(loose))
    assert result.exit_code == 2, result.output
    assert train_error_line(result.output) == (
        f"kto-train: error: --resume {loose}: not a checkpoint of --out {new}, nor of any kto-train run ({loose.parent} holds no run record): "
        f"to start a new run from its weights, give --model {loose} without --resume"
    )


def test_the_trl_config_file_form_says_the_same_naming_its_keys(other, tiny_cache, tiny_model_dir, tmp_path):
    from accelerate.state import AcceleratorState

    from kto.train.cli import main

    new = tmp_path / "new"
    config = tmp_path / "trl.yaml"
    config.write_text(
        f"model_name_or_path: {tiny_model_dir}\noutput_dir: {new}\nresume_from_checkpoint: {other / 'checkpoint-2'}\n"
        "per_device_train_batch_size: 2\nlearning_rate: 1.0e-3\nlogging_steps: 1\nmax_steps: 3\nsave_steps: 1\n"
    )
    AcceleratorState._reset_state(reset_partial_state=True)
    result = CliRunner().invoke(main, ["--config", str(config), "--cache", str(tiny_cache)])
    assert result.exit_code == 2, result.output
    line = train_error_line(result.output)
    checkpoint = other / "checkpoint-2"
    # Leaving a flag out cannot undo a key of the file: the advice is what works either way.
    assert line.startswith(
        f"kto-train: error: --config {config}: resume_from_checkpoint {checkpoint} (kto-train's --resume): "
        f"a checkpoint of the run in {other}, not of --out {new}: to continue that run, give --out {other}; "
        f"to start a new run from its weights, give --model {checkpoint} with no --resume and no resume key in the --config file"
    ), line
    assert "leave --out out" not in line and "without --resume" not in line and "holds no run to resume" not in line
    assert not new.exists()


def test_a_config_files_output_dir_with_resume_on_the_command_line(other, tiny_cache, tiny_model_dir, tmp_path):
    """output_dir from the file, --resume typed: the run continues with --out typed (it wins
    over the file), a new one starts with no resume at all."""
    from accelerate.state import AcceleratorState

    from kto.train.cli import main

    new = tmp_path / "new"
    config = tmp_path / "trl.yaml"
    config.write_text(f"model_name_or_path: {tiny_model_dir}\noutput_dir: {new}\nper_device_train_batch_size: 2\nmax_steps: 3\n")
    AcceleratorState._reset_state(reset_partial_state=True)
    checkpoint = other / "checkpoint-2"
    result = CliRunner().invoke(main, ["--config", str(config), "--cache", str(tiny_cache), "--resume", str(checkpoint)])
    assert result.exit_code == 2, result.output
    assert train_error_line(result.output).startswith(
        f"kto-train: error: --resume {checkpoint}: a checkpoint of the run in {other}, not of --out {new}: "
        f"to continue that run, give --out {other}; "
        f"to start a new run from its weights, give --model {checkpoint} with no --resume and no resume key in the --config file; "
        f"--out comes from --config {config}'s output_dir: {new}"
    )


def test_the_advice_works_both_ways(other, tiny_cache, tiny_model_dir, tmp_path):
    """--out OTHER resumes the other run from its checkpoint; --model CHECKPOINT without --resume
    starts a new run from its weights."""
    import shutil

    run = shutil.copytree(other, tmp_path / "other")
    resumed = run_train(tiny_cache, tiny_model_dir, run, *ARGS, "--resume", str(run / "checkpoint-2"))
    assert resumed.exit_code == 0, resumed.output
    assert train_losses(run) == train_losses(other)  # steps 1-2 kept, step 3 trained again: exact on CPU
    new = tmp_path / "new"
    fresh = run_train(tiny_cache, other / "checkpoint-2", new, *ARGS)
    assert fresh.exit_code == 0, fresh.output
    assert (new / "final").is_dir() and len(train_losses(new)) == 3


def test_resume_alone_into_an_empty_out_keeps_its_message(tiny_cache, tiny_model_dir, tmp_path):
    result = run_train(tiny_cache, tiny_model_dir, tmp_path / "new", *ARGS, "--resume")
    assert train_error_line(result.output) == f"kto-train: error: --resume: {tmp_path / 'new'} holds no run to resume; start it without --resume"


def test_an_adapter_or_sharded_checkpoint_is_not_offered_as_a_model(tmp_path):
    """A LoRA checkpoint (adapter_config.json) or an FSDP one (sharded/) has no config.json:
    --model refuses it, so the line offers only to continue its run."""
    from kto.formats.errors import InputError
    from kto.formats.runrecord import write_run_config
    from kto.train.rundir import refuse_elsewhere

    run = tmp_path / "lora"
    (run / "checkpoint-2").mkdir(parents=True)
    (run / "checkpoint-2" / "adapter_config.json").write_text("{}")
    write_run_config(run, {"model": "m"}, {})
    with pytest.raises(InputError) as caught:
        refuse_elsewhere(tmp_path / "new", run / "checkpoint-2")
    assert str(caught.value) == (
        f"--resume {run / 'checkpoint-2'}: a checkpoint of the run in {run}, not of --out {tmp_path / 'new'}: "
        f"to continue that run, give --out {run} (or leave --out out)"
    )
    refuse_elsewhere(run, run / "checkpoint-2")  # one of --out's own: chosen_checkpoint's to judge
    refuse_elsewhere(run, run / "checkpoint-2" / ".." / "checkpoint-2")
    with pytest.raises(InputError) as caught:
        refuse_elsewhere(tmp_path / "new", run / "checkpoint-9")
    assert str(caught.value) == f"--resume {run / 'checkpoint-9'}: no such checkpoint directory (and not in --out {tmp_path / 'new'})"


def test_a_typed_out_beside_a_files_output_dir_is_not_told_to_leave_it_out(other, tiny_cache, tiny_model_dir, tmp_path):
    """The file sets output_dir and resume_from_checkpoint, --out is typed too: "leave --out out"
    would bring the file's output_dir back and be refused again, so only a typed --out (it wins
    over the file) is advised; and following it resumes the other run."""
    import shutil

    from accelerate.state import AcceleratorState

    from kto.train.cli import main

    run = shutil.copytree(other, tmp_path / "other")
    checkpoint = run / "checkpoint-2"
    config = tmp_path / "trl.yaml"
    config.write_text(
        f"model_name_or_path: {tiny_model_dir}\noutput_dir: {tmp_path / 'fileout'}\nresume_from_checkpoint: {checkpoint}\n"
        "per_device_train_batch_size: 2\nlearning_rate: 1.0e-3\nlogging_steps: 1\nmax_steps: 3\nsave_steps: 1\n"
    )
    AcceleratorState._reset_state(reset_partial_state=True)
    result = CliRunner().invoke(main, ["--config", str(config), "--cache", str(tiny_cache), "--out", str(tmp_path / "typed")])
    line = train_error_line(result.output)
    assert f"not of --out {tmp_path / 'typed'}: to continue that run, give --out {run}; " in line, line
    assert "leave --out out" not in line and "remove output_dir" not in line
    AcceleratorState._reset_state(reset_partial_state=True)
    result = CliRunner().invoke(main, ["--config", str(config), "--cache", str(tiny_cache), "--out", str(run)])
    assert result.exit_code == 0, result.output
    assert f"resumed from {checkpoint} at step 2" in result.output
