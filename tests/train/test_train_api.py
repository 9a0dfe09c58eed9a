"""The Python API (`kto.train.run`): the CLI's run, with its paths and final metrics returned;
bad input raised as InputError, never SystemExit (under torchrun: tests/train/test_two_processes.py)."""

import subprocess
import sys

import pytest
from conftest import metrics, run_train

import kto.train
from kto.formats.errors import InputError
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
    assert train_line["step"] == 2 and computed(result.metrics) == computed(train_line)
    assert computed(result.eval_metrics) == computed(eval_line) and "loss" in result.eval_metrics
    assert set(result.metrics) == set(train_line) - {"step", "split"}  # the measured ones too


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
