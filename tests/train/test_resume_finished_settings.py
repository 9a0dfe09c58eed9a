"""A finished run resumed with only settings that change no step of it (how often it logs,
evaluates or saves, the eval batches) has nothing to do, as when resumed unchanged.

Seen: `--resume --eval-batch-size 8` of a finished run was refused ("holds no checkpoint to
resume from") when it saved none, and otherwise redid the steps after its last checkpoint and
rewrote final/; without the flag it said "nothing to do"."""

from __future__ import annotations

from conftest import run_train

ARGS = ("--batch-size", "2", "--lr", "1e-3", "--log-every", "1", "--max-steps", "3")
NOTHING = "finished all 3 steps (final/ holds step 3); nothing to do"


def _listing(folder) -> dict:
    return {str(p.relative_to(folder)): (p.read_bytes() if p.is_file() else None) for p in sorted(folder.rglob("*")) if p.name != ".lock"}


def test_a_finished_run_without_checkpoints_has_nothing_to_do(tiny_cache, tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    assert run_train(tiny_cache, tiny_model_dir, out, *ARGS, "--save-every", "0").exit_code == 0
    before = _listing(out)
    again = run_train(tiny_cache, tiny_model_dir, out, *ARGS, "--save-every", "0", "--eval-batch-size", "8", "--log-every", "2", "--resume")
    assert again.exit_code == 0, again.output
    assert NOTHING in again.output and _listing(out) == before
    # Said, not silently dropped: the changes apply to no step.
    assert f"{NOTHING} (the changed --log-every 1 -> 2, --eval-batch-size None -> 8 apply to no step: none is left)" in again.output


def test_a_finished_run_checkpointed_at_its_last_step_keeps_its_final(tiny_cache, tiny_eval_cache, tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    first = ("--save-every", "3", "--eval-cache", str(tiny_eval_cache))
    assert run_train(tiny_cache, tiny_model_dir, out, *ARGS, *first).exit_code == 0
    before = _listing(out)
    changed = ("--eval-batch-size", "8", "--eval-every", "1", "--eval-each-epoch", "--save-every", "1", "--save-total-limit", "1")
    again = run_train(tiny_cache, tiny_model_dir, out, *ARGS, *first, *changed, "--resume")
    assert again.exit_code == 0, again.output
    assert NOTHING in again.output and "resumed from" not in again.output
    assert _listing(out) == before  # final/, metrics.jsonl and the record as they were
