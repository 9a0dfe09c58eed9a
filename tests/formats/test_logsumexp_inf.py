"""The LM head's in-place logsumexp treats infinite row maxima as torch.logsumexp does: a row of
-inf gives -inf (not NaN), a row holding +inf gives +inf, so the other tokens' log-probs are -inf
rather than NaN."""

import math

import pytest
import torch


def test_in_place_logsumexp_equals_torch_on_rows_with_infinities():
    from kto.formats.compute.logprob import _logsumexp_

    inf = float("inf")
    z = torch.tensor([[-inf, -inf, -inf], [inf, 0.0, 1.0], [1.0, 2.0, -inf], [0.5, -0.25, 3.0]])
    m = z.amax(dim=-1, keepdim=True)
    m = torch.where(m.abs() == inf, torch.zeros_like(m), m)
    expected = (z - m).exp().sum(dim=-1).log() + m.squeeze(-1)  # the same operations in the same order: bit for bit
    got = _logsumexp_(z.clone())
    assert got.tolist()[:2] == [-inf, inf]
    assert got[2].item() == pytest.approx(math.log(math.e + math.e**2), rel=1e-6)  # fp32 against float64
    assert torch.equal(got, expected)
    reference = torch.logsumexp(z, dim=-1)  # torch's own: the same infinities, the finite rows to fp32 rounding
    assert got.tolist()[:2] == reference.tolist()[:2] and torch.allclose(got[2:], reference[2:], rtol=1e-6, atol=0)


def test_a_logit_of_plus_inf_leaves_the_other_tokens_at_minus_inf_not_nan():
    """A bias of +inf on token 2 (an overflowed logit): every other target's log-prob is -inf."""
    from kto.formats.compute.logprob import token_logps

    torch.manual_seed(0)
    hidden, weight = torch.randn(3, 4), torch.randn(5, 4)
    bias = torch.zeros(5)
    bias[2] = float("inf")
    got = token_logps(hidden, weight, torch.tensor([0, 1, 4]), bias=bias)
    assert got.tolist() == [float("-inf")] * 3
