"""What kto-train says a user can do next where a run cannot simply go on: after a second Ctrl-C
(what is on disk and the command that resumes it, train/stop.py `Aborted`), on a --resume with
another --model (both models named, or the one whose files changed), with a set-aside
`checkpoint-STEP.superseded` or `.corrupt` given to --resume (what it is, and the rename that
takes it back), and with more --epochs / --max-steps (the new run that trains further).

The loop's clock (train/stop.py reads time.monotonic) is replaced by one the test moves, so no
test waits ECHO_S, and none depends on how fast two signals arrive."""

from __future__ import annotations

import os
import shlex
import shutil
import signal
from types import SimpleNamespace

import pytest
from conftest import make_tiny_llama, run_train, train_error_line

import kto.train.checkpoint as checkpoint
import kto.train.loop as loop
import kto.train.stop as stop
from kto.train.stop import ECHO_S

ARGS = ["--batch-size", "2", "--lr", "1e-3", "--log-every", "1"]


@pytest.fixture
def clock(monkeypatch) -> list[float]:
    """train/stop.py's time.monotonic, reading now[0] (the test moves it)."""
    now = [1000.0]
    monkeypatch.setattr(stop, "time", SimpleNamespace(monotonic=lambda: now[0]))
    return now


def ctrl_c_twice(monkeypatch, clock: list[float], first_after_step: int, second_in_save: bool, cleanup_fails: bool = False) -> None:
    """The first SIGINT at the end of optimizer step `first_after_step` (noted: the run will stop
    after it), the second one ECHO_S + 1 s later on the loop's clock: in the middle of that
    step's checkpoint (`second_in_save`, between its weights and its optimizer state), or at once.
    `cleanup_fails`: the writer interrupted then fails on its half-written file, as torch.save's
    zip writer did (its RuntimeError replaced the KeyboardInterrupt: a traceback, exit 1)."""
    real_step, real_save = loop.train_step, checkpoint.save_torch
    armed = {"first": False}

    def second() -> None:
        clock[0] += ECHO_S + 1
        os.kill(os.getpid(), signal.SIGINT)

    def step(run, prefetch):
        done = real_step(run, prefetch)
        if run.position.global_step == first_after_step:
            armed["first"] = True
            os.kill(os.getpid(), signal.SIGINT)
            if not second_in_save:
                second()
        return done

    def save_torch(obj, path):
        if armed["first"] and second_in_save:
            armed["first"] = False
            try:
                second()
            except KeyboardInterrupt:
                if cleanup_fails:
                    raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 50341376 vs 50341328") from None
                raise
        return real_save(obj, path)

    monkeypatch.setattr(loop, "train_step", step)
    monkeypatch.setattr(checkpoint, "save_torch", save_torch)


@pytest.mark.parametrize("cleanup_fails", [False, True])
def test_a_second_ctrl_c_during_a_checkpoint_says_it_is_not_there_and_how_to_resume(tiny_cache, tiny_model_dir, tmp_path, monkeypatch, clock, cleanup_fails):
    """Seen before: `kto-train: interrupted` alone, after the second Ctrl-C came while
    checkpoint-2 was written: the user could not tell whether it existed or what to run."""
    out = tmp_path / "run"
    ctrl_c_twice(monkeypatch, clock, first_after_step=2, second_in_save=True, cleanup_fails=cleanup_fails)
    result = run_train(tiny_cache, tiny_model_dir, out, *ARGS, "--max-steps", "4", "--save-every", "1")
    assert result.exit_code == 130, result.output
    assert "Traceback" not in result.output and "RuntimeError" not in result.output
    last = result.output.strip().splitlines()[-1]
    assert last.startswith(
        f"kto-train: interrupted before {out / 'checkpoint-2'} was whole (nothing of it is kept); the latest checkpoint is {out / 'checkpoint-1'}; resume with: kto-train "
    )
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-1"]
    command = shlex.split(last.split("resume with: ", 1)[1])
    assert command[-1] == "--resume" and command[command.index("--out") + 1] == str(out)
    monkeypatch.undo()
    resumed = run_train(tiny_cache, tiny_model_dir, out, *ARGS, "--max-steps", "4", "--save-every", "1", "--resume")
    assert resumed.exit_code == 0, resumed.output
    assert f"resumed from {out / 'checkpoint-1'} at step 1" in resumed.output


def test_a_second_ctrl_c_before_any_checkpoint_says_to_run_the_command_again(tiny_cache, tiny_model_dir, tmp_path, monkeypatch, clock):
    out = tmp_path / "run"
    ctrl_c_twice(monkeypatch, clock, first_after_step=1, second_in_save=False)
    result = run_train(tiny_cache, tiny_model_dir, out, *ARGS, "--max-steps", "3", "--save-every", "0")
    assert result.exit_code == 130, result.output
    assert result.output.strip().splitlines()[-1] == (
        f"kto-train: interrupted with no checkpoint saved in {out}; run the same command again (without --resume) to start the run over"
    )
    monkeypatch.undo()
    again = run_train(tiny_cache, tiny_model_dir, out, *ARGS, "--max-steps", "3", "--save-every", "0")
    assert again.exit_code == 0, again.output


def test_the_python_api_raises_aborted_a_keyboard_interrupt_carrying_the_same_facts(tiny_cache, tiny_model_dir, tmp_path, monkeypatch, clock):
    import kto.train
    from kto.train.config import TrainConfig
    from kto.train.stop import Aborted, resume_command

    out = tmp_path / "run"
    ctrl_c_twice(monkeypatch, clock, first_after_step=2, second_in_save=True)
    cfg = TrainConfig(cache=tiny_cache, model=str(tiny_model_dir), out=out, batch_size=2, lr=1e-3, max_steps=4, save_every=1)
    with pytest.raises(KeyboardInterrupt) as caught:
        kto.train.run(cfg)
    exc = caught.value
    assert isinstance(exc, Aborted) and exc.exit_code == 130 and exc.signum == signal.SIGINT
    assert exc.checkpoint == out / "checkpoint-1" and exc.unfinished == out / "checkpoint-2"
    assert exc.command == resume_command(cfg)
    assert str(exc) == (
        f"interrupted before {out / 'checkpoint-2'} was whole (nothing of it is kept); the latest checkpoint is {out / 'checkpoint-1'}; resume with: {exc.command}"
    )


def test_a_resume_with_another_model_names_both(tiny_cache, tiny_model_dir, tokenizer_dir, tmp_path):
    out = tmp_path / "run"
    first = run_train(tiny_cache, tiny_model_dir, out, *ARGS, "--max-steps", "2", "--save-every", "1")
    assert first.exit_code == 0, first.output
    other = make_tiny_llama(tmp_path / "other", tokenizer_dir, seed=1)
    line = train_error_line(run_train(tiny_cache, other, out, *ARGS, "--max-steps", "2", "--save-every", "1", "--resume").output)
    assert f"--model ({tiny_model_dir} there, {other} now; identity " in line, line
    assert "model_identity (" not in line


def test_a_resume_with_the_same_model_path_whose_files_changed_says_so(tiny_cache, tiny_model_dir, tokenizer_dir, tmp_path):
    model, out = tmp_path / "model", tmp_path / "run"
    shutil.copytree(tiny_model_dir, model)
    first = run_train(tiny_cache, model, out, *ARGS, "--max-steps", "2", "--save-every", "1")
    assert first.exit_code == 0, first.output
    other = make_tiny_llama(tmp_path / "other", tokenizer_dir, seed=1)
    shutil.copy(other / "model.safetensors", model / "model.safetensors")
    line = train_error_line(run_train(tiny_cache, model, out, *ARGS, "--max-steps", "2", "--save-every", "1", "--resume").output)
    assert f"--model {model} (the model at {model} changed since the run began: identity " in line, line


def stop_after_first_step(monkeypatch) -> None:
    """One SIGINT at the end of the run's first optimizer step: it stops there, with a checkpoint."""
    real = loop.train_step
    calls = []

    def step(run, prefetch):
        done = real(run, prefetch)
        calls.append(1)
        if len(calls) == 1:
            os.kill(os.getpid(), signal.SIGINT)
        return done

    monkeypatch.setattr(loop, "train_step", step)


def test_a_superseded_checkpoint_says_what_it_is_and_the_rename_that_takes_it_back(tiny_cache, tiny_model_dir, tmp_path, monkeypatch):
    """Three steps saved, then --resume from checkpoint-1 stopped after step 2: checkpoint-2 and
    checkpoint-3.superseded are the abandoned continuation's, checkpoint-2 the new one's."""
    out, flags = tmp_path / "run", [*ARGS, "--max-steps", "3", "--save-every", "1"]
    assert run_train(tiny_cache, tiny_model_dir, out, *flags).exit_code == 0
    stop_after_first_step(monkeypatch)
    assert run_train(tiny_cache, tiny_model_dir, out, *flags, "--resume", str(out / "checkpoint-1")).exit_code == 130
    monkeypatch.undo()
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-1", "checkpoint-2", "checkpoint-2.superseded", "checkpoint-3.superseded"]
    line = train_error_line(run_train(tiny_cache, tiny_model_dir, out, *flags, "--resume", str(out / "checkpoint-3.superseded")).output)
    assert line == (
        f"kto-train: error: --resume {out / 'checkpoint-3.superseded'}: a checkpoint an earlier --resume set aside, of the continuation "
        f"it abandoned (newer than the checkpoint it resumed from); to go back to it, rename it back "
        f"(mv {out / 'checkpoint-3.superseded'} {out / 'checkpoint-3'}) and give --resume {out / 'checkpoint-3'}"
    )
    taken = train_error_line(run_train(tiny_cache, tiny_model_dir, out, *flags, "--resume", str(out / "checkpoint-2.superseded")).output)
    assert f"first rename the {out / 'checkpoint-2'} there now (this continuation's) aside " in taken
    assert f"(mv {out / 'checkpoint-2'} {out / 'checkpoint-2.superseded.1'})" in taken
    (out / "checkpoint-3.superseded").rename(out / "checkpoint-3")
    back = run_train(tiny_cache, tiny_model_dir, out, *flags, "--resume", str(out / "checkpoint-3"))
    assert back.exit_code == 0, back.output
    assert f"resumed from {out / 'checkpoint-3'} at step 3" in back.output


def test_a_corrupt_checkpoint_given_to_resume_says_it_was_set_aside_as_unusable(tmp_path):
    from kto.formats.errors import InputError
    from kto.train.config import TrainConfig

    path = tmp_path / "run" / "checkpoint-4.corrupt"
    with pytest.raises(InputError) as caught:
        TrainConfig(cache=tmp_path / "c", model="m", out=tmp_path / "run", resume=path)
    assert str(caught.value) == (
        f"--resume {path}: a checkpoint --resume set aside as corrupt (it failed its checks); it does not resume: "
        "give --resume alone for the newest usable checkpoint, or --resume OUT/checkpoint-STEP"
    )


def test_more_steps_on_resume_says_how_to_train_further(tiny_cache, tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    assert run_train(tiny_cache, tiny_model_dir, out, *ARGS, "--max-steps", "2", "--save-every", "1").exit_code == 0
    line = train_error_line(run_train(tiny_cache, tiny_model_dir, out, *ARGS, "--max-steps", "3", "--save-every", "1", "--resume").output)
    assert "total_steps (2 there, 3 now)" in line
    assert line.endswith(
        f"; to train further, start a new run from {out / 'final'}: --model {out / 'final'}, another --out, no --resume "
        "(its optimizer state and LR schedule start afresh)"
    ), line
    further = run_train(tiny_cache, out / "final", tmp_path / "further", *ARGS, "--max-steps", "1")
    assert further.exit_code == 0, further.output


def test_more_steps_on_an_unfinished_or_lora_run_says_what_to_finish_first(tmp_path):
    from kto.train.resume_hints import train_further_hint

    run = tmp_path / "run"
    run.mkdir()
    fresh = "another --out, no --resume (its optimizer state and LR schedule start afresh)"
    assert train_further_hint(run, {"lora_r": 0}) == (
        f"; to train further, let this run finish first (--resume with its own settings), then start a new run from {run / 'final'}: "
        f"--model {run / 'final'}, {fresh}"
    )
    assert train_further_hint(run, {"lora_r": 8}) == (
        "; to train further, let this run finish first (--resume with its own settings, --merge-adapters added), "
        f"then start a new run from {run / 'final-merged'}: --model {run / 'final-merged'}, {fresh}"
    )
    (run / "final").mkdir()
    assert train_further_hint(run, {"lora_r": 8}) == (
        f"; to train further, write {run / 'final-merged'} (--resume with --merge-adapters added), "
        f"then start a new run from it: --model {run / 'final-merged'}, {fresh}"
    )
    (run / "final-merged").mkdir()
    assert train_further_hint(run, {"lora_r": 8}) == f"; to train further, start a new run from {run / 'final-merged'}: --model {run / 'final-merged'}, {fresh}"


def test_a_set_aside_checkpoint_is_refused_before_torch_is_imported(tmp_path):
    """The refusal comes from TrainConfig's own checks: no torch, no transformers (their import
    costs seconds; tests/test_early_refusals.py blocks them the same way)."""
    import subprocess
    import sys

    blocked = "import sys; sys.modules.update(torch=None, transformers=None); sys.argv[0] = 'kto'; from kto.train.cli import main; main()"
    path = tmp_path / "run" / "checkpoint-3.superseded"
    args = ["--cache", tmp_path / "cache", "--model", tmp_path / "model", "--resume", path]
    proc = subprocess.run([sys.executable, "-c", blocked, *map(str, args)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.strip() == (
        f"kto-train: error: --resume {path}: a checkpoint an earlier --resume set aside, of the continuation it abandoned "
        f"(newer than the checkpoint it resumed from); to go back to it, rename it back (mv {path} {path.with_name('checkpoint-3')}) "
        f"and give --resume {path.with_name('checkpoint-3')}"
    )
