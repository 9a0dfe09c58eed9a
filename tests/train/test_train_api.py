"""The Python API (`kto.train.run`): the CLI's run, with its paths and final metrics returned;
bad input raised as InputError, never SystemExit (under torchrun: tests/train/test_two_processes.py)."""

import dataclasses
import re
import subprocess
import sys

import numpy as np
import pytest
from conftest import metrics, run_train

import kto.train
from kto.formats.errors import InputError
from kto.formats.metrics_line import EVAL_ONLY_KEYS, TRAIN_ONLY_KEYS
from kto.train.config import TrainConfig

ARGS = {"batch_size": 2, "lr": 1e-3, "log_every": 1, "max_steps": 2}
CLI_ARGS = ["--batch-size", "2", "--lr", "1e-3", "--log-every", "1", "--max-steps", "2"]
# Wall-clock and memory figures differ from one run to the next; everything else is computed.
MEASURED = {"tokens_per_s", "peak_memory_gb", "rss_anon_gb", "rss_file_gb"}


def computed(record: dict) -> dict:
    return {k: v for k, v in record.items() if k not in MEASURED | {"step", "split"}}


def test_run_returns_the_paths_and_final_metrics_the_cli_writes(tiny_cache, tiny_eval_cache, tiny_model_dir, tmp_path):
    cfg = TrainConfig(cache=tiny_cache, model=str(tiny_model_dir), out=tmp_path / "api", eval_cache=tiny_eval_cache, **ARGS)
    result = kto.train.run(cfg)
    cli = run_train(tiny_cache, tiny_model_dir, tmp_path / "cli", *CLI_ARGS, "--eval-cache", str(tiny_eval_cache))
    assert cli.exit_code == 0, cli.output
    assert isinstance(result, kto.train.TrainResult)
    assert (result.run_dir, result.final, result.steps, result.merged) == (tmp_path / "api", tmp_path / "api" / "final", 2, None)
    assert (result.final / "model.safetensors").is_file()
    lines = metrics(tmp_path / "cli")
    train_line = [m for m in lines if m["split"] == "train"][-1]
    eval_line = [m for m in lines if m["split"] == "eval"][-1]
    # A train line's eval-only key (eval_cache, null there) is no metric of the API's.
    own = {k: v for k, v in train_line.items() if k not in EVAL_ONLY_KEYS}
    assert train_line["step"] == 2 and computed(result.metrics) == computed(own)
    # The file's eval line carries every key, its train-only ones null; the API's has the eval's own.
    assert computed(result.eval_metrics) == computed({k: v for k, v in eval_line.items() if k not in TRAIN_ONLY_KEYS})
    assert "loss" in result.eval_metrics and not set(TRAIN_ONLY_KEYS) & set(result.eval_metrics)
    assert set(result.metrics) == set(own) - {"step", "split"}  # the measured ones too


def test_without_eval_cache_eval_metrics_is_none(tiny_cache, tiny_model_dir, tmp_path):
    result = kto.train.run(TrainConfig(cache=tiny_cache, model=str(tiny_model_dir), out=tmp_path / "run", **{**ARGS, "max_steps": 1}))
    assert result.eval_metrics is None and result.metrics["loss"] == pytest.approx(0.5)  # step 1: πθ = πref


def test_bad_input_raises_input_error_and_writes_nothing(tiny_model_dir, tmp_path):
    cfg = TrainConfig(cache=tmp_path / "no-cache", model=str(tiny_model_dir), out=tmp_path / "run")
    with pytest.raises(InputError, match="no-cache"):
        kto.train.run(cfg)
    assert not (tmp_path / "run").exists()
    with pytest.raises(InputError, match="--beta"):  # the config checks its own values
        TrainConfig(cache=tmp_path, model=str(tiny_model_dir), out=tmp_path / "run", beta=0.0)


def test_importing_the_package_loads_no_torch():
    """`import kto.train` is cheap; torch loads when the API is first used (its config module needs it)."""
    code = "import sys, kto.train; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_a_second_run_in_one_process_sets_accelerate_up_for_its_own_settings(tiny_cache, tiny_model_dir, tmp_path, capfd):
    """accelerate keeps one AcceleratorState per process and refuses another mixed precision once
    it is set: before, a second `kto.train.run` with bf16 autocast after one without raised
    accelerate's ValueError. Each run now sets it up afresh and gives accelerate's state back as
    it found it (train/processes.py): a `PartialState` the caller holds stays usable."""
    from accelerate.state import AcceleratorState, PartialState

    state = PartialState(cpu=True)  # the caller's own, held across the runs
    one_step = {**ARGS, "max_steps": 1}
    kto.train.run(TrainConfig(cache=tiny_cache, model=str(tiny_model_dir), out=tmp_path / "fp32", mixed_precision="no", **one_step))
    # bf16 autocast against an fp32 cache: the step-0 drift is bf16's, far above fp32's tolerance.
    kto.train.run(TrainConfig(cache=tiny_cache, model=str(tiny_model_dir), out=tmp_path / "bf16", mixed_precision="bf16", drift_tolerance=1.0, **one_step))
    err = capfd.readouterr().err
    assert "cache numerics fp32, this run fp32)" in err and "cache numerics fp32, this run amp-bf16)" in err
    assert state.num_processes == 1 and state.process_index == 0 and not AcceleratorState._shared_state


def test_a_run_gives_the_callers_gradient_accumulation_back(tiny_cache, tiny_model_dir, tmp_path):
    """accelerate's GradientState is a third singleton: a run's `Accelerator(...)` set its
    accumulation steps to 1, so the caller's own `Accelerator(gradient_accumulation_steps=4)`
    synced its gradients on every micro-batch after a kto call (accumulation off, silently)."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, GradientState, PartialState

    singletons = (PartialState._shared_state, AcceleratorState._shared_state, GradientState._shared_state)
    saved = [dict(shared) for shared in singletons]
    for shared in singletons[1:]:
        shared.clear()
    try:
        mine = Accelerator(cpu=True, gradient_accumulation_steps=4)
        kto.train.run(TrainConfig(cache=tiny_cache, model=str(tiny_model_dir), out=tmp_path / "run", **{**ARGS, "max_steps": 1}))
        assert mine.gradient_accumulation_steps == 4 and GradientState().num_steps == 4
    finally:
        for shared, before in zip(singletons, saved, strict=True):
            shared.clear()
            shared.update(before)


def test_an_fsdp_run_leaves_no_fsdp_setting_for_the_next_run(tmp_path, monkeypatch):
    """accelerate's FSDP plugin writes ACCELERATE_USE_FSDP=true into os.environ, which
    train/sharding.py reads as --fsdp: after one FSDP run in a process, every later run was sharded
    (and a plain --dtype fp16 run refused as "not with FSDP"). The run gives the variables back."""
    import os

    from kto.train import sharding
    from kto.train.processes import borrowed_accelerate_state
    from kto.train.setup import make_accelerator

    monkeypatch.delenv("ACCELERATE_USE_FSDP", raising=False)
    common = dict(cache=tmp_path / "c", model="m", out=tmp_path / "out")
    with borrowed_accelerate_state():
        make_accelerator(TrainConfig(fsdp=True, **common))
        assert os.environ.get("ACCELERATE_USE_FSDP") == "true"  # accelerate's own write: the test's premise
    assert "ACCELERATE_USE_FSDP" not in os.environ
    assert not sharding.requested(TrainConfig(fsdp=False, **common))


@pytest.mark.parametrize(
    ("overrides", "expect"),
    [
        ({"batch_size": 2.5}, "--batch-size 2.5: expected a whole number"),  # was a numpy TypeError mid-run, run dir half-written
        ({"batch_size": "8"}, "--batch-size '8': expected a whole number"),  # was TypeError: '<' not supported
        ({"max_steps": 2.0}, "--max-steps 2.0: expected a whole number"),  # was taken and recorded as 2.0
        ({"seed": True}, "--seed True: expected a whole number"),
        ({"beta": True}, "--beta True: expected a number"),  # was taken as β = 1
        ({"lr": "1e-6"}, "--lr '1e-6': expected a number"),
        ({"epochs": "1"}, "--epochs '1': expected a number"),
        ({"drift_tolerance": [0.1]}, "--drift-tolerance [0.1]: expected a number"),
        ({"gradient_checkpointing": "no"}, "--gradient-checkpointing 'no': expected True or False"),  # "no" is truthy: it turned checkpointing on
        ({"fsdp": 1}, "--fsdp 1: expected True or False"),
        ({"loss": 5}, "--loss 5: expected text"),
        ({"lora_target_modules": ["q_proj", 1]}, "--lora-target-modules ['q_proj', 1]: expected text"),
        ({"lr_schedule_kwargs": "{}"}, "--lr-schedule-kwargs '{}': expected a JSON object"),
        ({"eval_cache": 5}, "--eval-cache 5: expected a path"),
        ({"resume": 1}, "--resume 1: expected True, False or a path"),
    ],
)
def test_a_value_of_the_wrong_type_is_refused_in_one_line(tmp_path, overrides, expect):
    """The CLI's types (click converts a flag's text), checked before any range: the run record
    would hold what was given, and a run would fail halfway or do something else than asked."""
    with pytest.raises(InputError) as refused:
        TrainConfig(cache=tmp_path / "cache", model="m", out=tmp_path / "run", **overrides)
    assert str(refused.value) == expect
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("name", [f.name for f in dataclasses.fields(TrainConfig)])
def test_every_field_checks_its_type(tmp_path, name):
    """A field added later is checked too: its type is read from its annotation."""
    values = {"cache": tmp_path / "cache", "model": "m", "out": tmp_path / "run", name: object()}
    with pytest.raises(InputError, match=f"^--{name.replace('_', '-')} <object object at .*>: expected "):
        TrainConfig(**values)


def test_values_of_the_types_the_cli_gives_are_taken_as_they_mean(tmp_path, tiny_model_dir):
    """Text paths become Paths (`out` as text was an AttributeError), a --model path its text,
    numpy numbers and an int for a float setting the CLI's int and float (the run record is JSON)."""
    cfg = TrainConfig(
        cache=str(tmp_path / "cache"),
        model=tiny_model_dir,
        out=str(tmp_path / "run"),
        eval_cache=str(tmp_path / "cache" / "eval"),
        resume=str(tmp_path / "run" / "checkpoint-2"),
        lr=1,
        beta=np.float32(0.5),
        batch_size=np.int64(4),
        gradient_checkpointing=np.bool_(True),  # numpy's bool, from a DataFrame cell: it was refused
    )
    assert (cfg.cache, cfg.out, cfg.eval_cache) == (tmp_path / "cache", tmp_path / "run", tmp_path / "cache" / "eval")
    assert cfg.resume == tmp_path / "run" / "checkpoint-2" and cfg.model == str(tiny_model_dir)
    assert (cfg.lr, cfg.beta, cfg.batch_size) == (1.0, 0.5, 4)
    assert (type(cfg.lr), type(cfg.beta), type(cfg.batch_size)) == (float, float, int)
    assert cfg.gradient_checkpointing is True
    with pytest.raises(InputError, match=rf"--batch-size {re.escape(repr(np.bool_(True)))}: expected a whole number"):  # np.True_ from numpy 2
        TrainConfig(cache="c", model="m", out="o", batch_size=np.bool_(True))
    assert TrainConfig(cache="c", model="m", out="o", resume=True, max_steps=None).resume is True
    # A list of LoRA targets, as peft takes it and a --config file may write it: the comma list.
    assert TrainConfig(cache="c", model="m", out="o", lora_r=8, lora_target_modules=["q_proj", "v_proj"]).lora_target_modules == "q_proj,v_proj"


def test_the_record_says_fsdp_when_accelerate_launch_turned_it_on(tmp_path, monkeypatch):
    """`accelerate launch --use_fsdp` without --fsdp shards the run (ACCELERATE_USE_FSDP), and its
    kto_run.json said "fsdp": false, so the record did not hold the setting as the run took it."""
    from kto.train.resume_record import config_record

    common = dict(cache=tmp_path / "c", model="m", out=tmp_path / "out")
    monkeypatch.delenv("ACCELERATE_USE_FSDP", raising=False)
    assert config_record(TrainConfig(fsdp=False, **common))["fsdp"] is False
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    assert config_record(TrainConfig(fsdp=False, **common))["fsdp"] is True


def test_an_eval_cache_without_eval_only_is_told_to_add_it(tmp_path):
    """evaluate_model(TrainConfig(model=M, eval_cache=C)) without eval_only=True was refused as
    `--cache is required`, sending the user after a training cache; `kto-train --model M
    --eval-cache C` the same. The line now names --eval-only."""
    with pytest.raises(InputError) as caught:
        TrainConfig(model="m", eval_cache=tmp_path / "eval", out=tmp_path / "o")
    assert (
        str(caught.value) == "--cache is required (on the command line or in --config); to evaluate --model on --eval-cache without training, add --eval-only"
    )
    with pytest.raises(InputError, match=r"^--cache is required \(on the command line or in --config\)$"):
        TrainConfig(model="m", out=tmp_path / "o")
    with pytest.raises(InputError, match=r"^--out is required \(on the command line or in --config\)$"):  # --cache given: a run to train
        TrainConfig(model="m", cache=tmp_path / "c", eval_cache=tmp_path / "eval")
