"""fp16's loss scaler skips an update whose gradients overflowed fp16 and lowers its scale. Seen
before: the step logged its loss and lr like any other and nothing said the weights had not moved,
so a run whose scale kept falling could train nothing without a word.

CPU has no fp16 autocast here (kto-train refuses it), so the run gets a real CPU GradScaler
(torch.amp.GradScaler("cpu"), as accelerate drives one on a GPU) and one gradient made infinite
at chosen steps, as an overflow leaves it: the scaler finds it, skips that update and halves.
(accelerate unscales gradients before clipping only under its own fp16 mixed precision, so here
the logged grad_norm is the scaled one; nothing below reads it.)"""

import json
import shutil
import warnings

import pytest
import torch
from conftest import run_train
from safetensors.torch import load_file

import kto.train.loop as loop
import kto.train.setup as setup
from kto.train.loop import skipped_updates_line

ARGS = ["--batch-size", "2", "--lr", "1e-2", "--max-steps", "4", "--log-every", "2", "--save-every", "1"]


@pytest.fixture
def overflow_at(monkeypatch):
    """Give the run a CPU loss scaler (scale 1: the numbers are fp32's) and poison one gradient
    at the steps in the returned set, just before the scaler unscales them."""
    steps: set[int] = set()
    make = setup.make_accelerator

    def with_scaler(cfg):
        accelerator = make(cfg)
        accelerator.scaler = torch.amp.GradScaler("cpu", init_scale=1.0, growth_interval=1000)
        return accelerator

    clip, train_step, now = loop.clip_gradients, loop.train_step, {}

    def step_noted(run, prefetch):
        now["step"] = run.position.global_step + 1
        return train_step(run, prefetch)

    def overflowing(model, accelerator, max_grad_norm):
        if now["step"] in steps:
            next(p for p in model.parameters() if p.grad is not None).grad.view(-1)[0] = float("inf")
        return clip(model, accelerator, max_grad_norm)

    monkeypatch.setattr(setup, "make_accelerator", with_scaler)
    monkeypatch.setattr(loop, "train_step", step_noted)
    monkeypatch.setattr(loop, "clip_gradients", overflowing)
    return steps


def test_a_skipped_update_is_said_counted_and_leaves_the_weights_and_the_schedule_alone(overflow_at, tiny_cache, tiny_model_dir, tmp_path):
    plain = run_train(tiny_cache, tiny_model_dir, tmp_path / "plain", *ARGS)
    assert plain.exit_code == 0, plain.output
    overflow_at.update({2, 3})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = run_train(tiny_cache, tiny_model_dir, tmp_path / "r", *ARGS)
    assert result.exit_code == 0, result.output
    # The schedule stood still at the skipped updates, as transformers' Trainer's does: steps 2, 3
    # and 4 all trained with step 2's rate (so torch's "scheduler stepped before its optimizer"
    # warning, which a skipped first update gave, has no cause either).
    rates = [json.loads(line)["lr"] for line in (tmp_path / "plain" / "metrics.jsonl").read_text().splitlines()]
    assert [json.loads(line)["lr"] for line in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()] == [rates[0], rates[0]] != rates
    assert not [w for w in caught if "lr_scheduler.step()" in str(w.message)]
    assert "step 2: fp16 loss scaling skipped this update (a gradient overflowed fp16; the weights did not move); loss scale now 0.5" in result.output
    assert "step 3: fp16 loss scaling skipped this update (a gradient overflowed fp16; the weights did not move); loss scale now 0.25" in result.output
    assert "step 1: fp16" not in result.output and "step 4: fp16" not in result.output
    assert "kto-train: fp16 loss scaling skipped 2 updates of this run (steps 2, 3): the weights did not move at those steps" in result.output
    lines = [json.loads(line) for line in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert [(m["step"], m["updates_skipped"]) for m in lines] == [(2, 1), (4, 1)]
    # Checkpoints 1, 2 and 3 hold the same weights: steps 2 and 3 did not move them; step 4 did.
    weights = [load_file(tmp_path / "r" / f"checkpoint-{n}" / "model.safetensors") for n in (1, 2, 3, 4)]
    assert all(torch.equal(weights[0][k], weights[1][k]) and torch.equal(weights[0][k], weights[2][k]) for k in weights[0])
    assert any(not torch.equal(weights[2][k], weights[3][k]) for k in weights[0])


def test_a_resumed_run_counts_the_updates_skipped_before_its_checkpoint(overflow_at, tiny_cache, tiny_model_dir, tmp_path):
    """Seen by a review: resumed from checkpoint-1 (between two lines of --log-every 2), the
    skip at step 1 was lost from the line at step 2, from kto-inspect's check and from the
    last line. The checkpoint keeps the run's skipped steps."""
    overflow_at.update({1, 4})
    straight = tmp_path / "straight"
    assert run_train(tiny_cache, tiny_model_dir, straight, *ARGS).exit_code == 0
    resumed = tmp_path / "resumed"
    shutil.copytree(straight, resumed)
    result = run_train(tiny_cache, tiny_model_dir, resumed, *ARGS, "--resume", "checkpoint-1")
    assert result.exit_code == 0, result.output
    lines = [(m["step"], m["updates_skipped"]) for m in map(json.loads, (resumed / "metrics.jsonl").read_text().splitlines())]
    assert lines == [(m["step"], m["updates_skipped"]) for m in map(json.loads, (straight / "metrics.jsonl").read_text().splitlines())] == [(2, 1), (4, 1)]
    assert "kto-train: fp16 loss scaling skipped 2 updates of this run (steps 1, 4): the weights did not move at those steps" in result.output


def test_a_run_with_no_skipped_update_says_nothing_and_counts_zero(overflow_at, tiny_cache, tiny_model_dir, tmp_path):
    result = run_train(tiny_cache, tiny_model_dir, tmp_path / "r", *ARGS)
    assert result.exit_code == 0, result.output
    assert "fp16 loss scaling" not in result.output
    lines = [json.loads(line) for line in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert [m["updates_skipped"] for m in lines] == [0, 0]


def test_without_a_loss_scaler_the_count_is_null(tiny_cache, tiny_model_dir, tmp_path):
    """fp32 and bf16 skip no update: null (does not apply), as every line carries every key."""
    result = run_train(tiny_cache, tiny_model_dir, tmp_path / "r", *ARGS)
    assert result.exit_code == 0, result.output
    assert [json.loads(line)["updates_skipped"] for line in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()] == [None, None]


def test_the_last_line_names_one_update_or_the_first_ten():
    assert skipped_updates_line([7]) == "kto-train: fp16 loss scaling skipped one update of this run (step 7): the weights did not move at that step"
    many = skipped_updates_line(list(range(1, 13)))
    assert many.startswith("kto-train: fp16 loss scaling skipped 12 updates of this run (steps 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, ...)")


def inspect_checks(out) -> list[str]:
    from click.testing import CliRunner

    from kto.inspection.cli import main as inspect

    result = CliRunner().invoke(inspect, ["run", str(out), "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)["checks"]


def test_kto_inspect_run_says_how_many_updates_were_skipped(overflow_at, tiny_cache, tiny_model_dir, tmp_path):
    overflow_at.update({2, 3})
    assert run_train(tiny_cache, tiny_model_dir, tmp_path / "r", *ARGS).exit_code == 0
    checks = inspect_checks(tmp_path / "r")
    assert (
        "UPDATES SKIPPED by fp16 loss scaling (a gradient overflowed): 2, in the windows ending at steps 2, 4; those 2 updates did not move the weights"
        in checks
    )
    assert not any("NON-FINITE" in c for c in checks), checks


def test_kto_inspect_run_takes_a_null_count_for_a_run_without_a_loss_scaler(tiny_cache, tiny_model_dir, tmp_path):
    assert run_train(tiny_cache, tiny_model_dir, tmp_path / "r", *ARGS).exit_code == 0
    checks = inspect_checks(tmp_path / "r")
    assert not any("SKIPPED" in c or "NON-FINITE" in c for c in checks), checks


@pytest.mark.parametrize(
    "position",
    [
        {"global_step": 1, "epoch": 0, "step_in_epoch": 1, "skipped_updates": "1"},
        {"global_step": 1, "epoch": 0, "step_in_epoch": 1, "skipped_updates": [1.5]},
        {"global_step": 1, "epoch": 0, "step_in_epoch": 1, "unlogged": ["a"]},
        {"global_step": "1", "epoch": 0, "step_in_epoch": 1},
    ],
)
def test_a_checkpoint_whose_position_holds_other_types_is_unreadable(position, tmp_path):
    """A review: checkpoint_problem only built Position(**...), so a skipped_updates or unlogged of
    another type passed and failed mid-resume, in Window.resumed."""
    from kto.train.checkpoint import STATE_NAME, Position, checkpoint_problem, record_checksums

    Position(**{"global_step": 1, "epoch": 0, "step_in_epoch": 1, "skipped_updates": [1], "unlogged": [0.5, 2]})  # the right types
    with pytest.raises(ValueError, match="^position: "):
        Position(**position)
    folder = tmp_path / "checkpoint-1"
    folder.mkdir()
    (folder / STATE_NAME).write_text(json.dumps({"position": position, "plan": {}}))
    record_checksums(folder)  # whole as kto-train saves it: only its position is wrong
    assert checkpoint_problem(folder) == f"{STATE_NAME} unreadable (ValueError)"
