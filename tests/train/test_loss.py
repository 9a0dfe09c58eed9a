import math

import pytest
import torch

from kto.train.loss import LossType, kl_estimate, kto_loss


def sigmoid(x):
    return 1 / (1 + math.exp(-x))


def test_hand_worked_kto():
    """β = 0.5, z = 1.
    row 0 desirable,   r = -10 - (-12) = 2:   1 - σ(0.5·(2-1))  = 1 - σ(0.5)  = 0.377541
    row 1 undesirable, r = -9 - (-8)  = -1:   1 - σ(0.5·(1+1))  = 1 - σ(1)    = 0.268941
    with w_D = 1, w_U = 2 the second doubles to 0.537883. Rewards β·r = 1.0 and -0.5.
    """
    out = kto_loss(
        torch.tensor([-10.0, -9.0]), torch.tensor([-12.0, -8.0]), torch.tensor([True, False]), 1.0, beta=0.5, desirable_weight=1.0, undesirable_weight=2.0
    )
    assert out.losses.tolist() == pytest.approx([0.377541, 0.537883], abs=1e-6)
    assert out.rewards.tolist() == pytest.approx([1.0, -0.5])


def test_hand_worked_apo_zero_unpaired():
    """β = 1: desirable r = 1 → 1 - σ(1) = 0.268941; undesirable r = -2 → σ(-2) = 0.119203."""
    out = kto_loss(torch.tensor([0.0, 0.0]), torch.tensor([-1.0, 2.0]), torch.tensor([True, False]), 123.0, beta=1.0, loss_type=LossType.APO_ZERO_UNPAIRED)
    assert out.losses.tolist() == pytest.approx([0.268941, 0.119203], abs=1e-6)


def float64_reference(policy, ref, desirable, z, beta, wd, wu):
    out = []
    for p, q, d in zip(policy.tolist(), ref.tolist(), desirable.tolist()):
        r = p - q
        out.append(wd * (1 - sigmoid(beta * (r - z))) if d else wu * (1 - sigmoid(beta * (z - r))))
    return out


def test_matches_float64_reference_on_random_inputs():
    g = torch.Generator().manual_seed(0)
    policy = -50 * torch.rand(64, generator=g, dtype=torch.float64)
    ref = policy + torch.randn(64, generator=g, dtype=torch.float64)
    desirable = torch.rand(64, generator=g) > 0.4
    out = kto_loss(policy.float(), ref.float(), desirable, 0.3, beta=0.1, desirable_weight=1.3, undesirable_weight=0.7)
    expected = float64_reference(policy.float().double(), ref.float().double(), desirable, 0.3, 0.1, 1.3, 0.7)
    assert out.losses.tolist() == pytest.approx(expected, abs=1e-12)


def test_rewards_carry_no_gradient_and_losses_do():
    policy = torch.tensor([-3.0, -4.0], requires_grad=True)
    out = kto_loss(policy, torch.tensor([-3.5, -3.0]), torch.tensor([True, False]), 0.0, beta=0.1)
    assert not out.rewards.requires_grad
    out.losses.sum().backward()
    # Raising a desirable completion's log-prob lowers its loss; raising an undesirable one's raises it.
    assert policy.grad[0] < 0 < policy.grad[1]


def test_a_better_desirable_answer_lowers_the_loss():
    ref, d = torch.tensor([-5.0]), torch.tensor([True])
    worse = kto_loss(torch.tensor([-6.0]), ref, d, 0.2, beta=0.1).losses
    better = kto_loss(torch.tensor([-4.0]), ref, d, 0.2, beta=0.1).losses
    assert better.item() < worse.item()


@pytest.mark.parametrize("labels", [[True, True, True], [False, False, False]])
def test_single_class_batches_are_finite(labels):
    out = kto_loss(torch.tensor([-1.0, -2.0, -3.0]), torch.tensor([-1.5, -2.0, -2.5]), torch.tensor(labels), 0.1, beta=0.1)
    assert torch.isfinite(out.losses).all()


def test_empty_batch():
    out = kto_loss(torch.zeros(0), torch.zeros(0), torch.zeros(0, dtype=torch.bool), 0.0, beta=0.1)
    assert out.losses.shape == (0,) and out.losses.sum().item() == 0.0


def test_kl_estimate_is_count_weighted_clamped_and_never_nan():
    est = kl_estimate(torch.tensor(-3.0), torch.tensor(4))
    assert est.raw.item() == pytest.approx(-0.75) and est.clamped.item() == 0.0
    est = kl_estimate(torch.tensor(6.0), torch.tensor(4))
    assert est.raw.item() == pytest.approx(1.5) and est.clamped.item() == pytest.approx(1.5)
    empty = kl_estimate(torch.tensor(0.0), torch.tensor(0))
    assert empty.raw.item() == 0.0 and not torch.isnan(empty.clamped)
