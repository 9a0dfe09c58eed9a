"""The random generators a checkpoint carries (train/checkpoint.py rng_states)."""

import torch

from kto.train.checkpoint import restore_rng_states, rng_states, save_torch


def test_rng_states_resume_the_same_draws_and_read_older_checkpoints(tmp_path):
    """rng.pt holds the CPU generator and, where CUDA runs, the device's (dropout on a GPU draws
    from it); a checkpoint written before the CUDA state was saved still restores the CPU's."""
    save_torch(rng_states(), tmp_path / "rng.pt")
    save_torch({"torch": torch.get_rng_state()}, tmp_path / "older-rng.pt")
    expected = torch.rand(5)
    for name in ("rng.pt", "older-rng.pt"):
        torch.rand(7)  # move the generator on
        restore_rng_states(tmp_path / name)
        assert torch.equal(torch.rand(5), expected)


def test_the_cuda_generator_is_saved_and_set_where_cuda_runs(tmp_path, monkeypatch):
    """On a machine without a GPU, a stand-in for torch.cuda's generator: what rng_states saves
    from it is what restore_rng_states gives back to it."""
    device_state = {"now": torch.arange(16, dtype=torch.uint8)}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda: device_state["now"].clone())
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda s: device_state.update(now=s.clone()))
    save_torch(rng_states(), tmp_path / "rng.pt")
    device_state["now"] = torch.zeros(16, dtype=torch.uint8)  # the generator moved on
    restore_rng_states(tmp_path / "rng.pt")
    assert torch.equal(device_state["now"], torch.arange(16, dtype=torch.uint8))
