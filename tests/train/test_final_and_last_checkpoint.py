"""What a rewrite of final/ (final-merged/, a checkpoint) may replace, and the checkpoint at the
last step: a finished run resumed to write more (--merge-adapters) neither loses a file a user
put in final/ nor trains its steps again."""

import json
import os
import shutil

import pytest
from conftest import metrics, run_train, train_error_line

from kto.formats.errors import InputError

ARGS = ["--batch-size", "2", "--lr", "1e-2", "--log-every", "1", "--warmup-ratio", "0.2", "--lora-r", "4", "--lora-alpha", "8"]
RUN = ("--max-steps", "3", "--save-every", "2")


def _listing(folder) -> dict:
    return {str(p.relative_to(folder)): (p.read_bytes() if p.is_file() else None) for p in sorted(folder.rglob("*"))}


@pytest.fixture(scope="module")
def lora_run(tiny_cache, tiny_model_dir, tmp_path_factory):
    """3 LoRA steps saved every 2: checkpoint-2, checkpoint-3 (the last step), final/."""
    out = tmp_path_factory.mktemp("lora") / "run"
    result = run_train(tiny_cache, tiny_model_dir, out, *ARGS, *RUN)
    assert result.exit_code == 0, result.output
    return out


def test_the_last_step_is_checkpointed_whenever_the_run_saves(lora_run, tiny_cache, tiny_model_dir, tmp_path):
    """Seen in a review: --save-every 2 over 3 steps saved checkpoint-2 only, --save-every 1
    --max-steps 1 and a one-epoch --save-each-epoch none, so no checkpoint held the last epoch.
    transformers' Trainer saves at the last step too; without saving (--save-every 0) none."""
    assert sorted(p.name for p in lora_run.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-3"]
    state = json.loads((lora_run / "checkpoint-3" / "trainer_state.json").read_text())
    assert state["position"] == {"global_step": 3, "epoch": 0, "step_in_epoch": 3}
    one = run_train(tiny_cache, tiny_model_dir, tmp_path / "one", *ARGS, "--max-steps", "1", "--save-every", "1")
    assert one.exit_code == 0, one.output
    assert sorted(p.name for p in (tmp_path / "one").glob("checkpoint-*")) == ["checkpoint-1"]
    # 16 rows in micro-batches of 2: 8 steps an epoch.
    epoch = run_train(tiny_cache, tiny_model_dir, tmp_path / "epoch", *ARGS, "--epochs", "1", "--save-each-epoch")
    assert epoch.exit_code == 0, epoch.output
    assert sorted(p.name for p in (tmp_path / "epoch").glob("checkpoint-*")) == ["checkpoint-8"]
    none = run_train(tiny_cache, tiny_model_dir, tmp_path / "none", *ARGS, "--max-steps", "1", "--save-every", "0")
    assert none.exit_code == 0 and not list((tmp_path / "none").glob("checkpoint-*")), none.output


def test_a_finished_run_resumed_to_merge_trains_no_step_again(lora_run, tiny_cache, tiny_model_dir, tmp_path):
    """It resumes from the last step's checkpoint: final-merged/ is written, no step is trained,
    metrics.jsonl keeps its lines, and final/ is the same model (rewritten, card and record)."""
    out = shutil.copytree(lora_run, tmp_path / "r")
    lines = metrics(out)
    weights = (out / "final" / "adapter_model.safetensors").read_bytes()
    result = run_train(tiny_cache, tiny_model_dir, out, *ARGS, *RUN, "--resume", "--merge-adapters")
    assert result.exit_code == 0, result.output
    assert "resumed from" in result.output and "checkpoint-3 at step 3" in result.output
    assert "first step" not in result.output and "step 3/3" not in result.output
    assert metrics(out) == lines
    assert (out / "final" / "adapter_model.safetensors").read_bytes() == weights
    assert (out / "final-merged" / "model.safetensors").is_file()


@pytest.mark.parametrize(
    ("folder", "extra"),
    [("final", []), ("final-merged", ["--merge-adapters"])],
)
def test_a_resume_that_rewrites_final_refuses_a_users_file_there_before_training(lora_run, tiny_cache, tiny_model_dir, tmp_path, folder, extra):
    """Seen in a review: `echo x > RUN/final/my_eval.json`, then a --resume with a changed
    --log-every (or --merge-adapters) re-ran the run's tail and replaced final/ whole: the file
    was gone. Now one line names it, before the model is loaded, and nothing changes. (Another
    --log-every alone now leaves a finished run finished: `--resume checkpoint-3` rewrites final/.)"""
    out = shutil.copytree(lora_run, tmp_path / "r")
    if folder == "final-merged":  # a finished run that merged: final-merged/ is written again
        assert run_train(tiny_cache, tiny_model_dir, out, *ARGS, *RUN, "--resume", "--merge-adapters").exit_code == 0
    (out / folder / "my_eval.json").write_text("x\n")
    before = _listing(out)
    result = run_train(tiny_cache, tiny_model_dir, out, *ARGS, *RUN, "--resume", "checkpoint-3", *extra)
    line = train_error_line(result.output)
    assert result.exit_code == 2, result.output
    assert line == (
        f"kto-train: error: --resume: {out / folder}/my_eval.json: not recorded in its checksums.json, so not saved by kto-train; "
        f"writing {folder}/ again replaces the whole folder, which would delete it: move it out of {folder}/ first"
    )
    assert "resumed from" not in result.output and _listing(out) == before
    (out / folder / "my_eval.json").unlink()
    again = run_train(tiny_cache, tiny_model_dir, out, *ARGS, *RUN, "--resume", "checkpoint-3", *extra)
    assert again.exit_code == 0, again.output


def test_an_edited_model_card_is_refused_as_changed(lora_run, tiny_cache, tiny_model_dir, tmp_path):
    """Editing final/README.md before a push is usual: a rewrite of final/ would lose the edit."""
    out = shutil.copytree(lora_run, tmp_path / "r")
    (out / "final" / "README.md").write_text("# My model\n")
    result = run_train(tiny_cache, tiny_model_dir, out, *ARGS, *RUN, "--resume", "checkpoint-3")
    assert result.exit_code == 2 and "final/README.md: changed since kto-train saved it;" in train_error_line(result.output)
    assert (out / "final" / "README.md").read_text() == "# My model\n"


def test_saved_dir_never_deletes_a_file_it_did_not_save(tmp_path):
    """The last guard, for a file put in final/ while the run trained: the save is refused and
    the folder left as it was. A final/ saved before it had checksums.json is replaced when it
    holds only files kto-train saves (weights, config, tokenizer, card), and refused otherwise."""
    from kto.train.checkpoint import foreign_file, saved_dir

    final = tmp_path / "final"
    with saved_dir(final, {"README.md": "card\n"}) as tmp:
        (tmp / "config.json").write_text("{}")
    record = json.loads((final / "checksums.json").read_text())
    assert record["kind"] == "kto-train final" and sorted(record["files"]) == ["README.md", "config.json"]
    # Weights saved over ours (same size, as another tool's tuning of the same model gives) are
    # found by their hash, read because their mtime moved; the same bytes again are ours.
    with saved_dir(final, {"README.md": "card\n"}) as tmp:
        (tmp / "model.safetensors").write_bytes(b"w1")
    saved = (final / "model.safetensors").stat()
    assert foreign_file(final) is None
    (final / "model.safetensors").write_bytes(b"w2")
    os.utime(final / "model.safetensors", ns=(saved.st_atime_ns, saved.st_mtime_ns + 1))
    assert foreign_file(final) == "model.safetensors: changed since kto-train saved it"
    (final / "model.safetensors").write_bytes(b"w1")
    assert foreign_file(final) is None
    with saved_dir(final, {"README.md": "card\n"}) as tmp:
        (tmp / "config.json").write_text("{}")
    record = json.loads((final / "checksums.json").read_text())
    (final / "sub").mkdir()
    (final / "sub" / "notes.txt").write_text("mine\n")
    before = _listing(final)
    with pytest.raises(InputError, match=r"^kto-train: .*final/sub/notes.txt: not recorded in its checksums.json"):
        with saved_dir(final, {"README.md": "card 2\n"}) as tmp:
            (tmp / "config.json").write_text("{}")
    assert _listing(final) == before and [p.name for p in tmp_path.iterdir()] == ["final"]
    shutil.rmtree(final / "sub")
    (final / "checksums.json").unlink()  # as saved before final/ had a record
    (final / "model.safetensors").write_bytes(b"w")
    # What save_pretrained also writes: other vocabularies, a --trust-remote-code model's code.
    for name in ("tokenizer.model.v3", "sentencepiece.bpe.model", "qwen.tiktoken", "modeling_custom.py", "tokenization_custom.py"):
        (final / name).write_text("x\n")
    assert foreign_file(final) is None
    (final / "eval.py").write_text("x\n")
    assert foreign_file(final) == "eval.py: not a file kto-train saves"
    (final / "eval.py").unlink()
    (final / "backup").mkdir()  # saved names count at the top only
    (final / "backup" / "old.safetensors").write_text("x\n")
    assert foreign_file(final) == "backup/old.safetensors: not a file kto-train saves"
    shutil.rmtree(final / "backup")
    (final / "my_eval.json").write_text("x\n")
    assert foreign_file(final) == "my_eval.json: not a file kto-train saves"
