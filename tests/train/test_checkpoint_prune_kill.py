"""--save-total-limit deletes the oldest checkpoints; a kill in the middle of a delete must never
leave a half-deleted checkpoint-STEP that looks real (train/checkpoint.py prune_checkpoints renames
it to a hidden name first), and the next start removes what is left of it."""

from __future__ import annotations

import shutil

import pytest
from conftest import metrics, run_train

from kto.train.checkpoint import checkpoint_problem, checkpoints

ARGS = ["--batch-size", "2", "--lr", "1e-3", "--log-every", "1", "--max-steps", "3", "--save-every", "1", "--save-total-limit", "1"]


class Killed(BaseException):
    """Stands for a kill of kto-train: nothing after it runs (no cleanup catches it)."""


def test_a_kill_while_a_checkpoint_is_deleted_leaves_no_half_checkpoint_under_its_name(tiny_cache, tiny_model_dir, tmp_path, monkeypatch):
    out = tmp_path / "run"
    real, deleting = shutil.rmtree, []

    def killed_midway(path, *args, **kwargs):
        """The first delete of a checkpoint: its weights go, then the process is killed."""
        if "checkpoint-" in str(path) and not deleting:
            deleting.append(path)
            (path / "model.safetensors").unlink()
            raise Killed
        return real(path, *args, **kwargs)

    with monkeypatch.context() as m, pytest.raises(Killed):
        m.setattr(shutil, "rmtree", killed_midway)
        run_train(tiny_cache, tiny_model_dir, out, *ARGS)
    assert "checkpoint-1" in deleting[0].name and deleting[0].name != "checkpoint-1"  # a hidden name, not the real one
    assert [p.name for _, p in checkpoints(out)] == ["checkpoint-2"]
    assert all(checkpoint_problem(p) is None for _, p in checkpoints(out))  # what --resume sees is whole
    # The next start removes the leftover and goes on from checkpoint-2.
    resumed = run_train(tiny_cache, tiny_model_dir, out, *ARGS, "--resume")
    assert resumed.exit_code == 0, resumed.output
    assert f"{out}: removed {deleting[0].name} (left by a killed run)" in resumed.output
    assert f"resumed from {out / 'checkpoint-2'} at step 2" in resumed.output
    assert not deleting[0].exists() and [m["step"] for m in metrics(out)] == [1, 2, 3]
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".") and p.name != ".lock") == []
