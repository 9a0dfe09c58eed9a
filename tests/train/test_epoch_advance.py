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
