"""No finite-value guard used to exist: a diverging run, or a NaN that reached a batch, exited 0
with a final/ of NaN tensors. Now the step, the quantity and the last good checkpoint are named
on one line (exit 2), and non-finite weights are never saved."""

import dataclasses

import pytest
import torch
from conftest import metrics, plant_lr, train_error_line
from test_loop import train_cli

import kto.train.loop
from kto.formats import schema as S


def test_a_diverging_run_stops_at_the_first_nan_loss_naming_the_last_good_checkpoint(tiny_cache, tiny_model_dir, tmp_path, monkeypatch):
    # A rate of 1e30: step 1 moves every weight by about 1e30 (still finite), so step 2's loss is
    # NaN. Planted in the optimizer: --lr 1e30 is refused before any work now (above 1 is).
    plant_lr(monkeypatch, 1e30)
    out = tmp_path / "r"
    result = train_cli(tiny_cache, tiny_model_dir, out, "--max-steps", "3", "--save-every", "1")
    assert result.exit_code == 2, result.output
    line = train_error_line(result.output)
    assert "step 2: the loss is nan" in line and f"last good checkpoint: {out / 'checkpoint-1'}" in line
    assert not (out / "final").exists() and not (out / "checkpoint-2").exists()
    assert [m["step"] for m in metrics(out)] == [1]


def test_a_nan_reference_logp_in_a_batch_stops_at_step_1(tiny_cache, tiny_model_dir, tmp_path, monkeypatch):
    """A NaN that got past the cache's checks (monkeypatched in: the reader refuses NaN rows)."""
    real = kto.train.loop.collate_micro_batch

    def poisoned(*args, **kwargs):
        batch = real(*args, **kwargs)
        columns = {**batch.columns, S.REF_LOGP: torch.full_like(batch.ref_logp, float("nan"))}
        return dataclasses.replace(batch, columns=columns)

    monkeypatch.setattr(kto.train.loop, "collate_micro_batch", poisoned)
    out = tmp_path / "r"
    result = train_cli(tiny_cache, tiny_model_dir, out, "--max-steps", "2", "--drift-tolerance", "1e9")
    assert result.exit_code == 2, result.output
    line = train_error_line(result.output)
    assert "step 1: the loss is nan" in line and "last good checkpoint: none" in line
    assert not (out / "final").exists()


def test_non_finite_weights_are_never_saved(tiny_cache, tiny_model_dir, tmp_path, monkeypatch):
    """An update that overflows a weight to inf (the loss and gradient were finite): final/ is refused."""
    real_step = torch.optim.AdamW.step

    def overflowing_step(self, *args, **kwargs):
        out = real_step(self, *args, **kwargs)
        with torch.no_grad():
            self.param_groups[0]["params"][0].view(-1)[0] = float("inf")
        return out

    monkeypatch.setattr(torch.optim.AdamW, "step", overflowing_step)
    out = tmp_path / "r"
    result = train_cli(tiny_cache, tiny_model_dir, out, "--max-steps", "1")
    assert result.exit_code == 2, result.output
    line = train_error_line(result.output)
    assert "step 1: the weights hold non-finite values" in line and "final/ not saved" in line
    assert not (out / "final").exists()


def test_the_skipped_step0_check_is_said(tiny_cache, tokenizer_dir, tmp_path):
    from conftest import make_tiny_llama

    from kto.formats.manifest import read_manifest

    other = make_tiny_llama(tmp_path / "other", tokenizer_dir, seed=5)
    result = train_cli(tiny_cache, other, tmp_path / "r", "--max-steps", "1")
    assert result.exit_code == 0, result.output
    # The reference named as the manifest records it (kto-precompute's --model), and what it means.
    assert (
        f"step-0 check skipped: --model {other} is not {read_manifest(tiny_cache).info['model_path']}, the model --cache {tiny_cache} was scored with"
        in result.output
    )
    assert "the rewards r = log πθ − log πref are measured against that reference" in result.output


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_the_one_reduction_finite_check_agrees_with_isfinite_all(dtype):
    """guard.finite (max |t|, which NaN and inf propagate into) says what isfinite(t).all() says:
    random tensors, one NaN/+inf/-inf planted anywhere, the largest finite values, empty ones."""
    from kto.train.guard import finite

    g = torch.Generator().manual_seed(0)
    cases = [torch.zeros(0, dtype=dtype), torch.full((3,), torch.finfo(dtype).max, dtype=dtype), -torch.full((2, 2), torch.finfo(dtype).max, dtype=dtype)]
    for bad in (float("nan"), float("inf"), float("-inf")):
        for _ in range(20):
            t = torch.randn(int(torch.randint(1, 50, (1,), generator=g)), 7, generator=g).to(dtype)
            cases.append(t.clone())
            t.view(-1)[int(torch.randint(0, t.numel(), (1,), generator=g))] = bad
            cases.append(t)
    assert [bool(finite(t)) for t in cases] == [bool(torch.isfinite(t).all()) for t in cases]
    assert sum(not bool(finite(t)) for t in cases) == 60


def test_weights_loaded_from_a_checkpoint_are_checked_finite(tmp_path):
    """Issue 19 item 7, the FSDP path: a sharded checkpoint's weights are checked after DCP loads
    them (each rank its shard, then all-reduced); a +inf refuses the resume, naming the checkpoint."""
    from types import SimpleNamespace

    from kto.train.guard import NonFiniteError, check_loaded_weights

    model = torch.nn.Linear(3, 2)
    one = SimpleNamespace(num_processes=1)
    check_loaded_weights(model, one, tmp_path / "checkpoint-4")  # finite: nothing to say
    with torch.no_grad():
        model.weight[1, 2] = float("inf")
    with pytest.raises(NonFiniteError, match=r"--resume: .*checkpoint-4: its weights hold non-finite values"):
        check_loaded_weights(model, one, tmp_path / "checkpoint-4")
