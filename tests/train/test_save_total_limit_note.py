"""--save-total-limit N keeps the newest N checkpoints; a run that saves none (no --save-every,
no --save-each-epoch) has none to keep, and the flag did nothing without a word."""

from __future__ import annotations

from conftest import run_train

ARGS = ("--batch-size", "2", "--max-steps", "2", "--log-every", "1")
NOTE = "note: --save-total-limit 1 does nothing without --save-every N or --save-each-epoch: this run saves no checkpoint, only final/"


def test_a_limit_without_checkpoints_is_noted(tiny_cache, tiny_model_dir, tmp_path):
    result = run_train(tiny_cache, tiny_model_dir, tmp_path / "r", *ARGS, "--save-total-limit", "1")
    assert result.exit_code == 0, result.output
    assert result.output.count(NOTE) == 1, result.output
    assert not list((tmp_path / "r").glob("checkpoint-*")) and (tmp_path / "r" / "final").is_dir()


def test_a_limit_with_checkpoints_is_not(tiny_cache, tiny_model_dir, tmp_path):
    for extra in (("--save-every", "1"), ("--save-each-epoch",)):
        out = tmp_path / extra[0].strip("-")
        result = run_train(tiny_cache, tiny_model_dir, out, *ARGS, "--save-total-limit", "1", *extra)
        assert result.exit_code == 0 and "--save-total-limit 1 does nothing" not in result.output, result.output
        assert [p.name for p in out.glob("checkpoint-*")] == ["checkpoint-2"]
