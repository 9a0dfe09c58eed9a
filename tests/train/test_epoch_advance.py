"""loop.advance: the position after one optimizer step, across epoch boundaries."""


def test_the_last_step_of_an_epoch_moves_to_step_0_of_the_next_epoch():
    from kto.train.checkpoint import Position
    from kto.train.loop import advance

    # 3 steps an epoch: step_in_epoch 0 → 1 → 2 → (next epoch) 0.
    assert advance(Position(0, 0, 0), per_epoch=3) == Position(1, 0, 1)
    assert advance(Position(1, 0, 1), per_epoch=3) == Position(2, 0, 2)
    assert advance(Position(2, 0, 2), per_epoch=3) == Position(3, 1, 0)
    assert advance(Position(5, 1, 2), per_epoch=3) == Position(6, 2, 0)
    # One step an epoch: every step starts a new epoch.
    assert advance(Position(4, 4, 0), per_epoch=1) == Position(5, 5, 0)


def test_walking_three_epochs_visits_each_epochs_steps_once():
    from kto.train.checkpoint import Position
    from kto.train.loop import advance

    p, seen = Position(0, 0, 0), []
    for _ in range(9):
        seen.append((p.epoch, p.step_in_epoch))
        p = advance(p, per_epoch=3)
    assert seen == [(e, s) for e in range(3) for s in range(3)]
    assert (p.global_step, p.epoch, p.step_in_epoch) == (9, 3, 0)


def test_each_epoch_of_a_run_reads_every_row_once_in_that_epochs_own_order(tiny_cache, tiny_model_dir, tmp_path, monkeypatch):
    """The rows each step of a 2-epoch run collates (16 rows, 2 a step): each epoch reads every
    row once, and the second in its own shuffle; each metrics line's epoch is step / 8. A mutation hunt found the loop building every
    epoch's plan as epoch 0's (the same order each epoch) passed every test: epoch_plan differs
    by epoch, but nothing checked the loop passes the epoch in."""
    import numpy as np
    from conftest import run_train

    import kto.train.loop as loop

    read = []
    collate = loop.collate_micro_batch
    monkeypatch.setattr(loop, "collate_micro_batch", lambda cache, slots, *a, **k: read.append(np.asarray(slots).tolist()) or collate(cache, slots, *a, **k))
    result = run_train(tiny_cache, tiny_model_dir, tmp_path / "r", "--batch-size", "2", "--epochs", "2", "--lr", "1e-3")
    assert result.exit_code == 0, result.output
    assert len(read) == 16
    epochs = [[row for slot in read[e * 8 : (e + 1) * 8] for row in slot] for e in (0, 1)]
    assert sorted(epochs[0]) == sorted(epochs[1]) == list(range(16))
    assert epochs[0] != epochs[1]
    # metrics.jsonl's epoch: the epochs done after the step, 8 steps an epoch (never read before).
    from conftest import metrics

    lines = metrics(tmp_path / "r")
    assert lines and [m["epoch"] for m in lines] == [m["step"] / 8 for m in lines] and lines[-1]["epoch"] == 2.0
