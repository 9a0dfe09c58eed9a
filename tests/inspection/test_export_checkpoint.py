"""`kto-inspect export CHECKPOINT OUT`: an FSDP run's checkpoint-STEP (DCP shards) written as the
folder a run without --fsdp saves. Seen by a hunter: the best eval checkpoint of an FSDP run could
become no usable model (`accelerate merge-weights` fails on kto-train's nested state dict).

The exports of real FSDP checkpoints are checked in tests/export_checks.py, inside the tests that
launch FSDP runs already (test_score_sharded_checkpoint.py, test_fsdp_final_ties.py): the weights
equal what `kto-train --eval-only` loads from the checkpoint, the files are final/'s, and a full
fine-tune's export gives the checkpoint's eval line. The refusals here need no run; the edges
(OUT's folder, a killed export's temp folder, peft's card) are in test_export_checkpoint_edges.py."""

import json

from conftest import one_line_error
from export_checks import export


def test_export_refuses_on_one_line_before_loading(tiny_cache, tmp_path):
    fake = tmp_path / "checkpoint-2"
    (fake / "sharded").mkdir(parents=True)
    (tmp_path / "taken").mkdir()
    assert one_line_error(export(fake, tmp_path / "taken")) == (
        f"kto-inspect: error: OUT {tmp_path / 'taken'}: already exists; export writes a new folder, give a path that does not exist"
    )
    assert "inside the kto-precompute cache" in one_line_error(export(fake, tiny_cache / "m"))
    assert one_line_error(export("--merge", fake, tmp_path / "x")) == (
        f"kto-inspect: error: --merge: {fake} holds no LoRA adapters (adapter_config.json); there is nothing to merge"
    )
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "config.json").write_text("{}")
    assert "not an FSDP checkpoint; export reads a kto-train FSDP checkpoint's sharded/*.distcp" in one_line_error(export(plain, tmp_path / "y"))
    assert "no such directory" in one_line_error(export(tmp_path / "none", tmp_path / "z"))
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists() and not (tmp_path / "z").exists()


def test_kto_inspect_run_names_the_export_of_an_fsdp_best_checkpoint(tmp_path):
    """The hunter's path: `kto-inspect run` said "checkpoint-3/ holds that step", and that
    checkpoint of an FSDP run was no model; the line now names the command that makes one."""
    from kto.inspection.runlog import checks, read_run

    run = tmp_path / "run"
    run.mkdir()
    lines = [{"step": 3, "split": "train", "loss": 0.5}, {"step": 3, "split": "eval", "loss": 0.4}, {"step": 6, "split": "eval", "loss": 0.6}]
    (run / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in lines))
    (run / "kto_run.json").write_text(json.dumps({"kind": "kto-train run", "version": 1, "config": {"save_every": 3}, "derived": {}}))
    (run / "checkpoint-3" / "sharded").mkdir(parents=True)
    best = [c for c in checks(read_run(run)) if c.startswith("best eval loss")]
    assert best == [
        f"best eval loss: 0.4 at step 3 (of 2 evals); checkpoint-3/ holds that step, as FSDP shards: "
        f"`kto-inspect export {run / 'checkpoint-3'} DIR` writes it as the folder final/ is"
    ]
