"""train/optim.py: the LR schedule is transformers' get_scheduler; float --epochs; --resume PATH; --version."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from conftest import metrics, run_train, train_error_line

from kto.train.config import NEEDS_METRIC, SCHEDULES, planned_steps
from kto.train.optim import build_scheduler, warmup_steps

ARGS = ["--batch-size", "2", "--lr", "1e-3", "--log-every", "1"]


def schedule_cfg(**kw) -> SimpleNamespace:
    return SimpleNamespace(**{"lr_schedule": "linear", "lr_schedule_kwargs": {}, "warmup_ratio": 0.0, "warmup_steps": 0, "lr": 1.0, **kw})


def factors(cfg, total: int) -> list[float]:
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = build_scheduler(optimizer, cfg, total)
    out = []
    for _ in range(total):
        out.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return out


def test_every_kind_of_get_scheduler_is_offered_but_those_needing_a_metric():
    from transformers import SchedulerType

    assert set(SCHEDULES) | set(NEEDS_METRIC) == {s.value for s in SchedulerType}


def test_warmup_and_decay_are_transformers_formulas():
    """Linear, 10 steps, warmup 2 (--warmup-steps wins over the ratio): transformers' warmup is
    s/W, so step 0 runs at lr 0 and step 1 at 1/2; then (10 − s)/(10 − 2): 8/8, 7/8, …, 1/8."""
    cfg = schedule_cfg(warmup_steps=2, warmup_ratio=0.5)
    assert warmup_steps(cfg, 10) == 2
    assert factors(cfg, 10) == [0.0, 0.5] + [(10 - s) / 8 for s in range(2, 10)]
    # The ratio is rounded down: ⌊0.1 × 15⌋ = 1 warmup step.
    assert warmup_steps(schedule_cfg(warmup_ratio=0.1), 15) == 1
    # cosine_with_min_lr, 4 steps, no warmup, min_lr_rate 0.5: 0.5 + 0.5 · ½(1 + cos(π s/4)).
    cfg = schedule_cfg(lr_schedule="cosine_with_min_lr", lr_schedule_kwargs={"min_lr_rate": 0.5})
    assert factors(cfg, 4) == pytest.approx([0.5 + 0.25 * (1 + math.cos(math.pi * s / 4)) for s in range(4)], rel=1e-15)
    # `constant` is transformers' (no warmup), `constant_with_warmup` warms up.
    assert factors(schedule_cfg(lr_schedule="constant", warmup_steps=2), 4) == [1.0] * 4
    assert factors(schedule_cfg(lr_schedule="constant_with_warmup", warmup_steps=2), 4) == [0.0, 0.5, 1.0, 1.0]


def test_planned_steps_round_up_the_fraction_of_an_epoch():
    cfg = SimpleNamespace(max_steps=None, epochs=1.5)
    assert planned_steps(cfg, 3) == 5  # ⌈4.5⌉
    assert planned_steps(SimpleNamespace(max_steps=None, epochs=0.1), 30) == 3  # 0.1 × 30 = 3.0000000000000004 in floats
    assert planned_steps(SimpleNamespace(max_steps=7, epochs=0.1), 30) == 7


def test_bad_schedule_kwargs_are_refused_before_the_model_loads(tiny_cache, tiny_model_dir, tmp_path):
    result = run_train(tiny_cache, tiny_model_dir, tmp_path / "run", *ARGS, "--lr-schedule", "cosine_with_min_lr")
    line = train_error_line(result.output)
    assert line.startswith("kto-train: error: --lr-schedule cosine_with_min_lr --lr-schedule-kwargs {}:") and "min_lr" in line
    assert not (tmp_path / "run").exists()


@pytest.fixture(scope="module")
def epoch_and_a_half(tiny_cache, tiny_model_dir, tmp_path_factory):
    """16 rows, 4 rows per step (batch 2, accum 2): 4 steps per epoch, 1.5 epochs = 6 steps."""
    out = tmp_path_factory.mktemp("epochs") / "run"
    result = run_train(tiny_cache, tiny_model_dir, out, *ARGS, "--grad-accum", "2", "--epochs", "1.5", "--save-every", "2", "--lr-schedule", "cosine")
    assert result.exit_code == 0, result.output
    return out


def test_fractional_epochs_run_the_rounded_up_steps_and_resume_exactly(epoch_and_a_half, tiny_cache, tiny_model_dir, tmp_path):
    full = metrics(epoch_and_a_half)
    assert [m["step"] for m in full] == [1, 2, 3, 4, 5, 6]
    # The LR follows transformers' cosine over 6 steps (warmup ⌊0.1 × 6⌋ = 0); a line logs the
    # LR its step trained with: 1e-3 · ½(1 + cos(π s/6)), s = 0..5.
    assert [m["lr"] for m in full] == pytest.approx([1e-3 * 0.5 * (1 + math.cos(math.pi * s / 6)) for s in range(6)], rel=1e-12, abs=1e-18)
    # --resume RUN/checkpoint-2, though checkpoint-4 exists: the second half of the first epoch
    # and the half epoch after it are retrained to the same losses, and checkpoint-4 is set aside.
    import shutil

    run = tmp_path / "run"
    shutil.copytree(epoch_and_a_half, run)
    result = run_train(
        tiny_cache,
        tiny_model_dir,
        run,
        *ARGS,
        "--grad-accum",
        "2",
        "--epochs",
        "1.5",
        "--save-every",
        "2",
        "--lr-schedule",
        "cosine",
        "--resume",
        str(run / "checkpoint-2"),
    )
    assert result.exit_code == 0, result.output
    assert "moved the later checkpoint-4 aside to checkpoint-4.superseded" in result.output
    assert [m["loss"] for m in metrics(run)] == [m["loss"] for m in full]
    assert sorted(p.name for p in run.glob("checkpoint-*")) == [
        "checkpoint-2",
        "checkpoint-4",
        "checkpoint-4.superseded",
        "checkpoint-6",
        "checkpoint-6.superseded",
    ]


def test_resume_from_a_checkpoint_of_another_run_is_refused_in_one_line(epoch_and_a_half, tiny_cache, tiny_model_dir, tmp_path):
    import shutil

    other = tmp_path / "other"
    shutil.copytree(epoch_and_a_half, other)
    same = ("--grad-accum", "2", "--epochs", "1.5", "--save-every", "2", "--lr-schedule", "cosine")
    result = run_train(tiny_cache, tiny_model_dir, other, *ARGS, *same, "--resume", str(epoch_and_a_half / "checkpoint-2"))
    line = train_error_line(result.output)
    checkpoint = epoch_and_a_half / "checkpoint-2"
    assert line == (
        f"kto-train: error: --resume {checkpoint}: a checkpoint of the run in {epoch_and_a_half}, not of --out {other}: "
        f"to continue that run, give --out {epoch_and_a_half} (or leave --out out); "
        f"to start a new run from its weights, give --model {checkpoint} without --resume"
    )


@pytest.mark.parametrize("command", ["kto.precompute.cli", "kto.train.cli", "kto.inspection.cli"])
def test_every_command_has_version(command):
    import importlib
    from importlib.metadata import version

    from click.testing import CliRunner

    result = CliRunner().invoke(importlib.import_module(command).main, ["--version"])
    assert result.exit_code == 0, result.output
    assert result.output.strip().endswith(f", version {version('kto-offline')}")


def test_the_printed_resume_command_carries_the_schedule_kwargs_as_json():
    """SIGINT prints a --resume command rebuilt from the TrainConfig (train/stop.py); a
    --lr-schedule-kwargs mapping must come out as JSON that the CLI reads back."""
    import shlex
    from pathlib import Path

    from kto.train.cli import config_from, main
    from kto.train.config import TrainConfig
    from kto.train.stop import resume_command

    cfg = TrainConfig(cache=Path("c"), model="m", out=Path("o"), lr_schedule="cosine_with_min_lr", lr_schedule_kwargs={"min_lr_rate": 0.1}, epochs=1.5)
    ctx = main.make_context("kto-train", shlex.split(resume_command(cfg))[1:])
    again = config_from(ctx, ctx.params.pop("config_file"), ctx.params)
    assert (again.lr_schedule_kwargs, again.epochs, again.resume) == ({"min_lr_rate": 0.1}, 1.5, True)


def test_the_printed_resume_command_rebuilds_the_run_settings_flags_on_by_default_included():
    """--no-prefix-sharing (the one flag on by default) was dropped from the printed command,
    which the run then refused: prefix_sharing False there, True now."""
    import dataclasses
    import shlex
    from pathlib import Path

    from kto.train.cli import config_from, main
    from kto.train.config import TrainConfig
    from kto.train.stop import resume_command

    cfg = TrainConfig(
        cache=Path("c d"), model="m", out=Path("o"), prefix_sharing=False, keep_dropout=True, auto_weights=True, lora_r=4, lora_target_modules="q_proj,v_proj"
    )
    ctx = main.make_context("kto-train", shlex.split(resume_command(cfg))[1:])
    again = config_from(ctx, ctx.params.pop("config_file"), ctx.params)
    assert dataclasses.replace(again, resume=False) == cfg and again.resume is True


def test_lora_flags_the_command_line_gives_need_a_rank_and_all_linear_is_every_layer():
    """Seen in a review: --lora-alpha or --lora-dropout without --lora-r trained every weight,
    silently (--lora-target-modules is refused so); `--lora-target-modules all-linear`, peft's
    and TRL's spelling, was refused on the command line though a --config file took it."""
    import pytest as _pytest

    from kto.formats.errors import InputError
    from kto.train.cli import config_from, main

    def config(*flags):
        ctx = main.make_context("kto-train", ["--cache", "c", "--model", "m", "--out", "o", *flags])
        return config_from(ctx, ctx.params.pop("config_file"), ctx.params)

    for flag in (["--lora-alpha", "32"], ["--lora-dropout", "0.1"], ["--lora-target-modules", "all-linear"]):
        with _pytest.raises(InputError, match=f"^{flag[0]}: needs --lora-r R > 0"):
            config(*flag)
    # A TRL file's lora_alpha beside use_peft: false comes back as a flag in the printed resume
    # command, which the run record then checks.
    assert config("--lora-alpha", "32", "--resume").lora_alpha == 32.0
    assert config("--lora-r", "2", "--lora-target-modules", "all-linear").lora_target_modules is None
    assert config("--lora-r", "2", "--lora-alpha", "8").lora_alpha == 8.0


def test_the_printed_resume_command_names_a_hub_cache_as_typed(tmp_path):
    """Seen in a review: `--cache hf:me/fb-cache` came out as this machine's HF-cache snapshot
    folder, which is gone once the HF cache is cleared, and never on another machine."""
    import shlex
    from pathlib import Path

    from kto.formats import hub
    from kto.train.config import TrainConfig
    from kto.train.stop import resume_command

    snapshot = tmp_path / "hub" / "datasets--me--fb-cache" / "snapshots" / "c419c25"
    cfg = TrainConfig(cache=snapshot, eval_cache=snapshot / "eval", model="m", out=Path("o"))
    words = shlex.split(resume_command(cfg))  # a local folder given as such stays as given
    assert words[words.index("--cache") + 1] == str(snapshot)
    hub._FETCHED.update({snapshot: "hf:me/fb-cache", snapshot / "eval": "hf:me/fb-cache/eval"})  # as fetch_cache records them
    try:
        words = shlex.split(resume_command(cfg))
    finally:
        hub._FETCHED.clear()
    assert words[words.index("--cache") + 1] == "hf:me/fb-cache" and words[words.index("--eval-cache") + 1] == "hf:me/fb-cache/eval"


def adamw_by_hand(p: float, grads: list[float], lr: float, b1: float, b2: float, eps: float) -> float:
    """torch.optim.AdamW's update in float64 (no weight decay), bias-corrected as torch does."""
    m = v = 0.0
    for t, g in enumerate(grads, start=1):
        m, v = b1 * m + (1 - b1) * g, b2 * v + (1 - b2) * g * g
        p -= lr * (m / (1 - b1**t)) / (math.sqrt(v / (1 - b2**t)) + eps)
    return p


def test_adam_betas_and_epsilon_reach_the_optimizer():
    """transformers' adam_beta1/adam_beta2/adam_epsilon (0.95 for β2 is common in LLM recipes)
    were refused for any value but the default. Three steps of one float64 parameter against
    the update worked by hand: the second step onwards depends on both betas, and ε = 0.5 is
    far from negligible next to these gradients."""
    from kto.train.optim import build_optimizer

    grads = [0.3, -1.2, 0.7]
    for b1, b2, eps in ((0.9, 0.999, 1e-8), (0.8, 0.95, 0.5)):
        layer = torch.nn.Linear(2, 2, bias=False, dtype=torch.float64)
        weight = layer.weight
        torch.nn.init.ones_(weight)
        optimizer = build_optimizer(layer, SimpleNamespace(lr=0.1, weight_decay=0.0, adam_beta1=b1, adam_beta2=b2, adam_epsilon=eps))
        for g in grads:
            weight.grad = torch.full_like(weight, g)
            optimizer.step()
        assert weight[0, 0].item() == pytest.approx(adamw_by_hand(1.0, grads, 0.1, b1, b2, eps), rel=1e-12, abs=1e-14)


@pytest.mark.parametrize(
    "flag, value, problem",
    [("--adam-beta1", "1", "must be in [0, 1)"), ("--adam-beta2", "-0.1", "must be in [0, 1)"), ("--adam-epsilon", "0", "must be positive")],
)
def test_adam_flags_out_of_range_are_refused_in_one_line(tiny_cache, tiny_model_dir, tmp_path, flag, value, problem):
    result = run_train(tiny_cache, tiny_model_dir, tmp_path / "run", *ARGS, "--max-steps", "1", flag, value)
    assert train_error_line(result.output).endswith(f"{flag} {float(value)}: {problem}") and not (tmp_path / "run").exists()


def test_a_record_made_before_the_adam_settings_resumes_and_keeps_its_digest():
    """Runs recorded before adam_beta1/adam_beta2/adam_epsilon were settings trained with
    (0.9, 0.999, 1e-8): such a record and a checkpoint's settings digest must still match a
    resume at the defaults, and a resume with another β2 must be refused naming both values."""
    from kto.train.resume_record import record_differences, settings_digest

    now = {"config": {"beta": 0.1, "adam_beta1": 0.9, "adam_beta2": 0.999, "adam_epsilon": 1e-8}, "derived": {"total_steps": 3, "steps_share_prefixes": True}}
    before = {"config": {"beta": 0.1}, "derived": {"total_steps": 3}}
    assert record_differences(before, now) == [] and settings_digest(before) == settings_digest(now)
    other = {**now, "config": {**now["config"], "adam_beta2": 0.95}}
    assert record_differences(before, other) == ["adam_beta2 (0.999 there, 0.95 now)"]
    assert settings_digest(other) != settings_digest(now)


@pytest.mark.parametrize("kind", ["reduce_lr_on_plateau", "greedy"])
def test_a_schedule_that_needs_a_metric_is_refused_saying_why(tiny_cache, tiny_model_dir, tmp_path, kind):
    """click's choice list refused them first, without the reason README gives."""
    result = run_train(tiny_cache, tiny_model_dir, tmp_path / "run", *ARGS, "--lr-schedule", kind)
    line = train_error_line(result.output)
    assert line.startswith(f"kto-train: error: --lr-schedule {kind}: steps on an eval metric, which kto-train does not feed its scheduler")


def test_fp16_autocast_on_cpu_is_refused_not_run_as_fp32(tiny_cache, tiny_model_dir, tmp_path):
    """accelerate runs no fp16 autocast on CPU (native_amp False): the run trained in fp32, the
    same losses as --mixed-precision no, while its step-0 line said "this run amp-fp16"."""
    if torch.cuda.is_available():
        pytest.skip("CUDA runs fp16 autocast")
    result = run_train(tiny_cache, tiny_model_dir, tmp_path / "run", *ARGS, "--max-steps", "1", "--mixed-precision", "fp16")
    line = train_error_line(result.output)
    assert (
        line == "kto-train: error: --mixed-precision fp16: accelerate runs no fp16 autocast on CPU (the run would be fp32); give --mixed-precision bf16 or no"
    )
    assert not (tmp_path / "run").exists()
