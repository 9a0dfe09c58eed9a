"""--eval-batch-size (transformers' per_device_eval_batch_size): the eval batches are of that
size, and the eval numbers are the same as with --batch-size's batches up to fp32 rounding.

Evaluation sums per-row numbers over the eval set (z from the KL pass first, then the losses):
another batching changes only how rows are padded and in what order their float32 sums are
added. The bound asserted, 1e-5 relative (absolute below 1), is float32's rounding (ε ≈ 1.2e-7)
over sums of ~100-token rows; the counts are exact."""

from __future__ import annotations

import json

import pytest
from conftest import metrics, run_train, train_error_line

ARGS = ("--batch-size", "2", "--lr", "1e-3", "--log-every", "1", "--max-steps", "2")


def _eval_run(tiny_cache, tiny_eval_cache, tiny_model_dir, out, monkeypatch, *extra):
    import kto.train.evaluate as evaluate

    sizes = []
    real = evaluate.collate_micro_batch
    monkeypatch.setattr(evaluate, "collate_micro_batch", lambda cache, slot, pad_id: (sizes.append(len(slot)), real(cache, slot, pad_id))[1])
    result = run_train(tiny_cache, tiny_model_dir, out, *ARGS, "--eval-cache", str(tiny_eval_cache), "--eval-every", "1", *extra)
    assert result.exit_code == 0, result.output
    return [m for m in metrics(out) if m["split"] == "eval"], sizes


def test_eval_batches_are_of_eval_batch_size_and_give_the_same_numbers(tiny_cache, tiny_eval_cache, tiny_model_dir, tmp_path, monkeypatch):
    default, sizes = _eval_run(tiny_cache, tiny_eval_cache, tiny_model_dir, tmp_path / "default", monkeypatch)
    assert set(sizes) == {2} and len(sizes) == 2 * 2 * 8  # 2 evals × (KL pass + loss pass) × 16 rows / 2
    for size, batches in ((3, 6), (16, 1)):
        lines, sizes = _eval_run(tiny_cache, tiny_eval_cache, tiny_model_dir, tmp_path / f"b{size}", monkeypatch, "--eval-batch-size", str(size))
        assert sizes == [size] * (2 * 2 * batches)  # the last batch of 3 holds 1 row and 2 fillers
        assert [m["step"] for m in lines] == [m["step"] for m in default] == [1, 2]
        for ours, theirs in zip(lines, default, strict=True):
            assert ours.keys() == theirs.keys()
            for key, value in theirs.items():
                if key.startswith("count") or not isinstance(value, float):
                    assert ours[key] == value, key
                else:
                    assert ours[key] == pytest.approx(value, rel=1e-5, abs=1e-5), key
        record = json.loads((tmp_path / f"b{size}" / "kto_run.json").read_text())
        assert record["config"]["eval_batch_size"] == size
    # The training lines are not touched by it.
    train = lambda out: [m["loss"] for m in metrics(out) if m["split"] == "train"]
    assert train(tmp_path / "b3") == train(tmp_path / "default")


def test_eval_batch_size_below_one_is_refused(tiny_cache, tiny_model_dir, tmp_path):
    result = run_train(tiny_cache, tiny_model_dir, tmp_path / "r", *ARGS, "--eval-batch-size", "0")
    assert train_error_line(result.output) == "kto-train: error: --eval-batch-size 0: must be at least 1"


def test_per_device_eval_batch_size_is_eval_batch_size():
    from kto.formats.config_keys import TRAIN
    from kto.formats.config_names import resolve

    resolved = resolve({"per_device_eval_batch_size": 4, "per_device_train_batch_size": 2}, TRAIN)
    assert resolved.values["eval_batch_size"] == 4 and resolved.values["batch_size"] == 2
    assert not any("per_device_eval_batch_size" in note for note in resolved.notes)
