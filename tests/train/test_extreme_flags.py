"""Extreme numeric flags: --lr 9.2e18 exited 0 with every weight of final/ at 9.2e18 (its last
step's update is never run through the model); --beta or --sft-weight 9.2e18 stopped at step 1
with "the gradient norm is inf", naming no flag; --adam-epsilon 1e-50 (0 in float32) gave NaN
weights, again naming none. Values no run can mean are refused before any work, saying why;
values that are merely far from usual are named when the run turns non-finite."""

from __future__ import annotations

import pytest
import torch
from conftest import train_error_line
from test_loop import train_cli

from kto.formats.errors import InputError
from kto.train.config import FP32_MAX, FP32_TINY, TrainConfig, unusual_flags


def cfg(**kw: object) -> TrainConfig:
    return TrainConfig(cache="c", model="m", out="o", **kw)


def test_the_float32_bounds_are_torchs():
    assert (FP32_MAX, FP32_TINY) == (torch.finfo(torch.float32).max, torch.finfo(torch.float32).tiny)


def test_an_lr_above_1_is_refused_saying_why():
    with pytest.raises(InputError, match=r"^--lr 9\.2e\+18: must be at most 1; AdamW moves every weight by about lr at each step"):
        cfg(lr=9.2e18)
    with pytest.raises(InputError, match=r"^--lr 1\.5: must be at most 1;"):
        cfg(lr=1.5)
    assert cfg(lr=1.0).lr == 1.0  # odd, but the user's to choose


def test_an_adam_epsilon_that_float32_rounds_to_0_is_refused():
    """1e-50 is 0 in float32: m / (√v + ε) was 0/0 for the embedding rows no batch used."""
    with pytest.raises(InputError, match=r"^--adam-epsilon 1e-50: must be at least 1\.175e-38, float32's smallest normal number"):
        cfg(adam_epsilon=1e-50)
    assert cfg(adam_epsilon=1e-30).adam_epsilon == 1e-30


@pytest.mark.parametrize("name", ["beta", "desirable_weight", "undesirable_weight", "sft_weight"])
def test_a_loss_scale_past_float32_is_refused_and_a_large_one_taken(name):
    flag = name.replace("_", "-")
    with pytest.raises(InputError, match=rf"^--{flag} 1e\+300: must be at most 3\.403e\+38, float32's largest number"):
        cfg(**{name: 1e300})
    assert getattr(cfg(**{name: 9.2e18}), name) == 9.2e18  # no bound below: a scale, named if it overflows


def test_unusual_flags_names_only_the_far_ones():
    """β 10 or 100 is a legitimate sharp loss: not named; 1001 is, as lr above 0.01 is."""
    assert unusual_flags(cfg()) == ""
    assert unusual_flags(cfg(beta=100.0, lr=1e-2, desirable_weight=3.0)) == ""
    assert unusual_flags(cfg(beta=9.2e18)) == "likely cause: --beta 9.2e+18 (usually at most 1000)"
    both = unusual_flags(cfg(sft_weight=2e3, lr=0.5))
    assert both == "likely cause: --sft-weight 2000 (usually at most 1000), --lr 0.5 (usually at most 0.01)"


@pytest.mark.parametrize("flag", ["--beta", "--sft-weight"])
def test_a_gradient_that_overflows_names_the_flag(tiny_cache, tiny_model_dir, tmp_path, flag):
    """β/4 × ∇log π (the loss's gradient at the reference) or γ × ∇NLL past float32: inf."""
    out = tmp_path / "r"
    result = train_cli(tiny_cache, tiny_model_dir, out, flag, "9.2e18", "--max-steps", "2")
    assert result.exit_code == 2, result.output
    line = train_error_line(result.output)
    assert line == (
        "kto-train: error: step 1: the gradient norm is inf (not finite); stopped before updating the weights, nothing of this step "
        f"saved; last good checkpoint: none; likely cause: {flag} 9.2e+18 (usually at most 1000)"
    )
    assert not (out / "final").exists()


def test_non_finite_weights_before_a_save_name_the_flags(tmp_path):
    """The check before every checkpoint and final/ says the likely flags too."""
    from types import SimpleNamespace

    from kto.train.guard import NonFiniteError, check_weights

    model = torch.nn.Linear(3, 2)
    with torch.no_grad():
        model.bias[0] = float("nan")
    with pytest.raises(NonFiniteError) as err:
        check_weights(model, SimpleNamespace(num_processes=1), 7, None, "final/", cfg(lr=0.5))
    assert str(err.value) == (
        "step 7: the weights hold non-finite values (the run diverged); final/ not saved; last good checkpoint: none; "
        "likely cause: --lr 0.5 (usually at most 0.01)"
    )
