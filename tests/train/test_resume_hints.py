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
from pathlib import Path
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
    path.mkdir(parents=True)
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
    path.mkdir(parents=True)
    args = ["--cache", tmp_path / "cache", "--model", tmp_path / "model", "--resume", path]
    proc = subprocess.run([sys.executable, "-c", blocked, *map(str, args)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.strip() == (
        f"kto-train: error: --resume {path}: a checkpoint an earlier --resume set aside, of the continuation it abandoned "
        f"(newer than the checkpoint it resumed from); to go back to it, rename it back (mv {path} {path.with_name('checkpoint-3')}) "
        f"and give --resume {path.with_name('checkpoint-3')}"
    )


# --- Review mends: an interrupt counts only where it came first in the run; paths said where they are.


def raised_while(handling: BaseException, exc: BaseException) -> BaseException:
    """`exc`, raised while `handling` was (its __context__, as Python sets it)."""
    try:
        raise handling
    except BaseException:
        try:
            raise exc
        except BaseException as caught:
            return caught


def in_place_of(cfg, exc: BaseException, entry: BaseException | None = None) -> BaseException:
    """What kto.train.run raises where train() raised `exc`, `entry` being the exception its
    caller was handling when it called run (None: none)."""
    try:
        raise exc
    except BaseException as caught:
        try:
            stop.raise_in_place(cfg, caught, entry)
            raise
        except BaseException as out:
            return out


@pytest.fixture
def plain_cfg(tmp_path):
    from kto.train.config import TrainConfig

    return TrainConfig(cache=tmp_path / "cache", model="m", out=tmp_path / "run")


def test_an_error_the_run_raises_while_its_caller_handles_a_ctrl_c_is_that_error(tmp_path, monkeypatch):
    """Seen before: `Aborted: interrupted with no checkpoint saved in rH; …` in place of the
    missing cache: the caller's own KeyboardInterrupt (its __context__) was taken for the run's."""
    import kto.train
    from kto.formats.errors import InputError
    from kto.train.config import TrainConfig

    monkeypatch.chdir(tmp_path)
    try:
        raise KeyboardInterrupt
    except KeyboardInterrupt:
        with pytest.raises(BaseException) as caught:
            kto.train.run(TrainConfig(cache=tmp_path / "nonexistent_cache", model="tiny", out=tmp_path / "rH", batch_size=4, max_steps=2))
    assert type(caught.value) is InputError, caught.value
    assert str(caught.value) == f"{tmp_path / 'nonexistent_cache'}: no such cache directory"
    assert not (tmp_path / "rH").exists()


def test_an_interrupt_first_in_the_run_is_aborted_and_an_error_its_cleanup_raised_stays_attached(plain_cfg):
    from kto.train.stop import Aborted

    bare = in_place_of(plain_cfg, KeyboardInterrupt())
    assert isinstance(bare, Aborted) and bare.checkpoint is None and bare.unfinished is None
    cleanup = RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos")
    after = in_place_of(plain_cfg, raised_while(KeyboardInterrupt(), cleanup))
    assert isinstance(after, Aborted) and after.__cause__ is cleanup  # the library's error is not hidden
    # The caller was handling a Ctrl-C of its own when it called run: the run's own second Ctrl-C is still one.
    try:
        raise KeyboardInterrupt("the caller's")
    except KeyboardInterrupt as entry:
        inside = in_place_of(plain_cfg, raised_while(entry, KeyboardInterrupt()), entry)
        outside = in_place_of(plain_cfg, raised_while(entry, OSError("the run's own error")), entry)
    assert isinstance(inside, Aborted)
    assert type(outside) is OSError and str(outside) == "the run's own error" and not getattr(outside, "__notes__", None)


@pytest.mark.parametrize("kind", ["input", "library"])
def test_a_ctrl_c_while_the_run_stops_on_an_error_leaves_that_error_seen_with_the_interrupt_noted(plain_cfg, kind):
    """An error first (a NaN, a full disk), then a Ctrl-C during the clean-up after it: the error
    is what the user reads, not 'interrupted … resume with'."""
    from kto.formats.atomic import DiskFullError

    real = DiskFullError("run/checkpoint-3/model.safetensors", "continue with --resume") if kind == "input" else ValueError("loss is nan")
    cause = real.__cause__
    exc = raised_while(real, KeyboardInterrupt())
    out = in_place_of(plain_cfg, exc)
    assert out is real and out.__cause__ is cause
    note = "a Ctrl-C came while kto-train was stopping on this error"
    if kind == "input":  # the CLI prints an InputError's message alone: the note is in it
        assert str(out) == f"run/checkpoint-3/model.safetensors: no space left on device; free some space and continue with --resume; {note}"
    else:
        assert str(out) == "loss is nan" and out.__notes__ == [note]
    # A cleanup error after that interrupt changes nothing: the first error is still the one.
    again = ValueError("loss is nan")
    assert in_place_of(plain_cfg, raised_while(raised_while(again, KeyboardInterrupt()), RuntimeError("cleanup"))) is again


def test_the_cli_says_the_error_a_ctrl_c_during_its_cleanup_came_upon(tiny_cache, tiny_model_dir, tmp_path, monkeypatch):
    """The run fails on step 2 (as a NaN stops it); a Ctrl-C then comes while the loop closes its
    records (SIGINT is the host's again by then): exit 2 with the error's line, not 130."""
    from kto.formats.errors import InputError

    real_step = loop.train_step

    def step(run, prefetch):
        done = real_step(run, prefetch)
        if run.position.global_step == 2:
            raise InputError("loss is NaN at step 2")
        return done

    def close_after_failure(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(loop, "train_step", step)
    monkeypatch.setattr(loop, "close_after_failure", close_after_failure)
    out = tmp_path / "run"
    result = run_train(tiny_cache, tiny_model_dir, out, *ARGS, "--max-steps", "4", "--save-every", "1")
    assert result.exit_code == 2, result.output
    assert train_error_line(result.output) == "kto-train: error: loss is NaN at step 2; a Ctrl-C came while kto-train was stopping on this error"
    assert "resume with" not in result.output


def model_record(model: str, out: str, identity: str) -> dict:
    return {"config": {"model": model, "out": out}, "derived": {"model_identity": {"weights": identity}}}


def test_a_relative_model_path_is_said_changed_only_where_the_run_began_here(tmp_path, monkeypatch):
    """kto_run.json keeps --model and --out as typed, and no working directory: a relative
    --model names the recorded place only when resumed from where the run began (its recorded
    --out names this --out from here). Seen before: resumed from sub/ with sub/m1, another model,
    said `the model at m1 changed since the run began`."""
    from kto.train.resume_record import record_differences

    (tmp_path / "sub").mkdir()
    saved = model_record("m1", "run", "a")
    monkeypatch.chdir(tmp_path / "sub")
    (elsewhere,) = record_differences(saved, model_record("m1", "../run", "b"))
    assert elsewhere.startswith("--model (m1 there, m1 now; identity "), elsewhere
    monkeypatch.chdir(tmp_path)
    (here,) = record_differences(saved, model_record("m1", "run", "b"))
    assert here.startswith("--model m1 (the model at m1 changed since the run began: identity "), here
    (absolute,) = record_differences(saved, model_record(str(tmp_path / "m1"), str(tmp_path / "run"), "b"))
    assert absolute.startswith(f"--model {tmp_path / 'm1'} (the model at {tmp_path / 'm1'} changed since the run began: "), absolute
    # Recorded relative beside an absolute --out: where it was typed is not known.
    (unknown,) = record_differences(model_record("m1", str(tmp_path / "run"), "a"), model_record("m1", str(tmp_path / "run"), "b"))
    assert unknown.startswith("--model (m1 there, m1 now; identity "), unknown
    monkeypatch.chdir(tmp_path / "sub")  # recorded absolute: the same place from anywhere
    (moved,) = record_differences(model_record(str(tmp_path / "m1"), "run", "a"), model_record("../m1", "../run", "b"))
    assert moved.startswith("--model ../m1 (the model at ../m1 changed since the run began: "), moved


def test_fewer_steps_on_resume_gives_no_hint_to_train_further(tiny_cache, tiny_model_dir, tmp_path):
    out = tmp_path / "sp ace"
    assert run_train(tiny_cache, tiny_model_dir, out, *ARGS, "--max-steps", "3", "--save-every", "1").exit_code == 0
    line = train_error_line(run_train(tiny_cache, tiny_model_dir, out, *ARGS, "--max-steps", "2", "--save-every", "1", "--resume").output)
    assert "total_steps (3 there, 2 now)" in line and "train further" not in line, line


def test_the_hint_to_train_further_asks_for_more_steps_and_quotes_its_paths(tmp_path):
    from kto.train.resume_hints import asks_more_steps, train_further_hint

    run = tmp_path / "sp ace"
    (run / "final").mkdir(parents=True)
    model = shlex.quote(str(run / "final"))
    assert train_further_hint(run, {"lora_r": 0}) == (
        f"; to train further, start a new run from {model}: --model {model}, another --out, no --resume (its optimizer state and LR schedule start afresh)"
    )
    saved = {"derived": {"total_steps": 20}}
    assert asks_more_steps(["max_steps (10 there, 20 now)", "total_steps (20 there, 40 now)"], saved, {"derived": {"total_steps": 40}})
    assert not asks_more_steps(["max_steps (20 there, 11 now)", "total_steps (20 there, 11 now)"], saved, {"derived": {"total_steps": 11}})
    # More steps from a smaller batch is no request for more training: the batch size is the difference.
    assert not asks_more_steps(["batch_size (4 there, 2 now)", "total_steps (20 there, 40 now)"], saved, {"derived": {"total_steps": 40}})
    # More epochs past a --max-steps that caps them: the same number of steps.
    assert not asks_more_steps(["epochs (2 there, 3 now)"], saved, {"derived": {"total_steps": 20}})


def resume_refusal(out, resume) -> str:
    from kto.formats.errors import InputError
    from kto.train.config import TrainConfig

    with pytest.raises(InputError) as caught:
        TrainConfig(cache=out.parent / "c", model="m", out=out, resume=resume)
    return str(caught.value)


def test_a_bare_superseded_name_is_the_one_in_out(tmp_path, monkeypatch):
    """`--out RUN --resume checkpoint-15.superseded`: RUN's, as a bare checkpoint-STEP is; its
    way back renames RUN/checkpoint-15 aside first. Seen before: an mv relative to the working
    directory, without that step."""
    out = tmp_path / "sp ace"
    (out / "checkpoint-15.superseded").mkdir(parents=True)
    (out / "checkpoint-15").mkdir()
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    line = resume_refusal(out, Path("checkpoint-15.superseded"))
    aside, back, spare = out / "checkpoint-15.superseded", out / "checkpoint-15", out / "checkpoint-15.superseded.1"
    assert line == (
        f"--resume {aside}: a checkpoint an earlier --resume set aside, of the continuation it abandoned (newer than the checkpoint it "
        f"resumed from); to go back to it, first rename the {back} there now (this continuation's) aside ({shlex.join(['mv', str(back), str(spare)])}), "
        f"then rename it back ({shlex.join(['mv', str(aside), str(back)])}) and give --resume {shlex.quote(str(back))}"
    )


def test_a_set_aside_name_that_is_not_there_is_no_such_checkpoint(tmp_path):
    out = tmp_path / "sp ace"
    for name in ("checkpoint-2", "checkpoint-10", "checkpoint-3.superseded", "checkpoint-4.corrupt"):
        (out / name).mkdir(parents=True)
    (out / "checkpoint-5").write_text("")  # not a directory: no checkpoint
    for missing in ("checkpoint-77.superseded", "checkpoint-9.corrupt"):
        assert resume_refusal(out, out / missing) == (
            f"--resume {out / missing}: no such checkpoint directory (the checkpoints in {out}: checkpoint-2, checkpoint-10; "
            "set aside: checkpoint-3.superseded, checkpoint-4.corrupt)"
        )
    empty = tmp_path / "empty"
    assert resume_refusal(empty, empty / "checkpoint-1.superseded") == (
        f"--resume {empty / 'checkpoint-1.superseded'}: no such checkpoint directory (the checkpoints in {empty}: none)"
    )


def test_settings_an_earlier_kto_did_not_record_are_no_change_at_their_default():
    """An upgrade hunter's resume of a run an earlier kto began printed `changed --save-each-epoch
    None -> False, --eval-each-epoch None -> False`: settings that kto never recorded, and that the
    user never gave. A recorded value still counts; an unrecorded one only off the default."""
    from kto.train.resume_record import resumable_changes

    saved = {"config": {"log_every": 10, "eval_every": 0}, "derived": {}}
    now = {"config": {"log_every": 10, "eval_every": 0, "save_each_epoch": False, "eval_each_epoch": False}, "derived": {}}
    assert resumable_changes(saved, now) == []
    now["config"].update(log_every=5, save_each_epoch=True)
    assert resumable_changes(saved, now) == ["--log-every 10 -> 5", "--save-each-epoch (not recorded by an earlier kto) -> True"]
