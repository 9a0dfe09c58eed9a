"""Policy.resume's plan check: a checkpoint whose saved plan lacks a key is refused (only the
settings digest, which older checkpoints lack, may be absent); record_differences and --seed."""

from types import SimpleNamespace

import pytest

from kto.formats.errors import InputError

PLAN = {"cache_fingerprint": "f" * 64, "batch_size": 2, "grad_accum": 1, "world_size": 1, "seed": 0, "total_steps": 6, "settings": "d" * 64}


def resume_with(saved_plan, tmp_path):
    from kto.train.checkpoint import Position
    from kto.train.policy import Policy

    position = Position(3, 0, 3)
    policy = SimpleNamespace(
        plan=dict(PLAN),
        layout=SimpleNamespace(load_state=lambda _policy, _path: (position, saved_plan)),
        cfg=SimpleNamespace(out=tmp_path),
        accelerator=SimpleNamespace(is_main_process=True),
    )
    return Policy.resume(policy, tmp_path / "checkpoint-3")


def test_the_same_plan_resumes_and_one_without_its_settings_digest_too(tmp_path):
    assert resume_with(dict(PLAN), tmp_path).global_step == 3
    older = {k: v for k, v in PLAN.items() if k != "settings"}  # a checkpoint from before the digest
    assert resume_with(older, tmp_path).global_step == 3


@pytest.mark.parametrize("key", ["cache_fingerprint", "seed", "total_steps"])
def test_a_saved_plan_lacking_a_key_is_refused(key, tmp_path):
    saved = {k: v for k, v in PLAN.items() if k != key}
    with pytest.raises(InputError) as info:
        resume_with(saved, tmp_path)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"--resume: {tmp_path / 'checkpoint-3'} was made with other {key} (None there, {PLAN[key]} now)")


def test_a_saved_plan_with_another_seed_is_refused(tmp_path):
    with pytest.raises(InputError, match=r"other seed \(1 there, 0 now\)"):
        resume_with({**PLAN, "seed": 1}, tmp_path)


def test_a_resume_may_not_change_the_seed():
    from kto.train.resume_record import record_differences

    assert record_differences({"config": {"seed": 0}, "derived": {}}, {"config": {"seed": 1}, "derived": {}}) == ["seed (0 there, 1 now)"]
    assert record_differences({"config": {"seed": 0, "log_every": 1}, "derived": {}}, {"config": {"seed": 0, "log_every": 5}, "derived": {}}) == []
