"""token_logps: forward and gradients against a naive full-vocab path, edge cases, and memory.

The naive path materialises the whole [N, V] logits; token_logps must agree with it while
never keeping more than one chunk of logits, with or without autograd.
"""

from __future__ import annotations

import math

import pytest
import torch

from kto.formats.compute.logprob import token_logps


def naive(hidden, weight, targets, cd=None, softcap=None, bias=None):
    """The definition written out with the full [N, V] tensor."""
    cd = hidden.dtype if cd is None else cd
    z = hidden.to(cd) @ weight.to(cd).T
    if bias is not None:
        z = z + bias.to(cd)
    z = z.to(torch.promote_types(torch.float32, cd))
    if softcap is not None:
        z = softcap * torch.tanh(z / softcap)
    return torch.log_softmax(z, -1).gather(-1, targets[:, None]).squeeze(-1)


def make(n=37, v=101, h=16, seed=0, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, h, generator=gen, dtype=dtype)
    weight = (torch.randn(v, h, generator=gen) * 0.5).to(dtype)
    targets = torch.randint(0, v, (n,), generator=gen)
    return hidden, weight, targets


def test_hand_worked():
    """H = 1, hidden = [[1]], weight = [[0], [ln 3]]: logits = [0, ln 3], softmax = [1/4, 3/4],
    so log p(target 1) = ln(3/4) and log p(target 0) = ln(1/4)."""
    hidden = torch.tensor([[1.0], [1.0]])
    weight = torch.tensor([[0.0], [math.log(3.0)]])
    out = token_logps(hidden, weight, torch.tensor([1, 0]))
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, torch.tensor([math.log(0.75), math.log(0.25)]))


@pytest.mark.parametrize("chunk_size", [1, 5, 16, 36, 37, 1024])
def test_forward_fp32_matches_float64(chunk_size):
    hidden, weight, targets = make()
    ref = naive(hidden.double(), weight.double(), targets)
    out = token_logps(hidden, weight, targets, chunk_size=chunk_size)
    assert out.dtype == torch.float32 and out.shape == (37,)
    assert (out.double() - ref).abs().max() < 1e-5


def test_forward_bf16_compute():
    hidden, weight, targets = make(n=64, v=300, h=32)
    out = token_logps(hidden, weight, targets, compute_dtype=torch.bfloat16, chunk_size=10)
    assert out.dtype == torch.float32
    assert (out - naive(hidden, weight, targets, cd=torch.bfloat16)).abs().max() < 1e-4
    # bf16 rounding of the logits is the only error vs float64: small but far above fp32's.
    ref = naive(hidden.double(), weight.double(), targets)
    rel = ((out.double() - ref).abs() / ref.abs()).max().item()
    print(f"bf16 compute: max relative error vs float64 = {rel:.2e}")
    assert rel < 5e-2


def test_autocast_state_is_ignored():
    hidden, weight, targets = make()
    plain = token_logps(hidden, weight, targets, chunk_size=8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under = token_logps(hidden, weight, targets, chunk_size=8)
        under_grad = token_logps(hidden.requires_grad_(), weight, targets, chunk_size=8)
    assert torch.equal(plain, under) and torch.equal(plain, under_grad.detach())


def test_no_grad_and_autograd_paths_agree_bitwise():
    hidden, weight, targets = make()
    plain = token_logps(hidden, weight, targets, chunk_size=8)
    assert not plain.requires_grad
    tracked = token_logps(hidden, weight.requires_grad_(), targets, chunk_size=8)
    assert tracked.requires_grad and torch.equal(plain, tracked.detach())


def grads(fn, hidden, weight, bias, upstream):
    hidden = hidden.detach().requires_grad_()
    weight = weight.detach().requires_grad_()
    if bias is not None:
        bias = bias.detach().requires_grad_()
    (fn(hidden, weight, bias) * upstream).sum().backward()
    return hidden.grad, weight.grad, None if bias is None else bias.grad


@pytest.mark.parametrize("softcap", [None, 2.0])
@pytest.mark.parametrize("with_bias", [False, True])
@pytest.mark.parametrize("chunk_size", [7, 100])
def test_forward_and_grads_match_float64(softcap, with_bias, chunk_size):
    hidden, weight, targets = make()
    bias = torch.randn(weight.shape[0], generator=torch.Generator().manual_seed(1)) if with_bias else None
    upstream = torch.randn(hidden.shape[0], generator=torch.Generator().manual_seed(2), dtype=torch.float64)

    def ours(h, w, b):
        return token_logps(h, w, targets, chunk_size=chunk_size, softcap=softcap, bias=b)

    def ref(h, w, b):
        return naive(h.double(), w.double(), targets, softcap=softcap, bias=None if b is None else b.double())

    with torch.no_grad():
        assert (ours(hidden, weight, bias).double() - ref(hidden, weight, bias)).abs().max() < 1e-5
    got = grads(ours, hidden, weight, bias, upstream.float())
    want = grads(ref, hidden, weight, bias, upstream)
    for g, w in zip(got, want):
        if w is None:
            assert g is None
            continue
        assert g.dtype == torch.float32
        torch.testing.assert_close(g.double(), w.double(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("softcap", [None, 1.5])
def test_gradcheck_float64(softcap):
    hidden, weight, targets = make(n=5, v=7, h=3, dtype=torch.float64)
    bias = torch.randn(7, dtype=torch.float64)
    args = [t.requires_grad_() for t in (hidden, weight, bias)]
    assert torch.autograd.gradcheck(lambda h, w, b: token_logps(h, w, targets, chunk_size=2, softcap=softcap, bias=b), args)


def test_bf16_compute_with_bias_and_grad_dtypes():
    """fp32 master weights under bf16 compute get fp32 grads; bf16 hidden gets bf16 grads."""
    hidden, weight, targets = make(n=20, v=50)
    hidden = hidden.bfloat16().requires_grad_()
    weight.requires_grad_()
    bias = torch.randn(50).requires_grad_()
    out = token_logps(hidden, weight, targets, compute_dtype=torch.bfloat16, chunk_size=6, bias=bias)
    assert (out - naive(hidden, weight, targets, cd=torch.bfloat16, bias=bias)).abs().max() < 1e-4
    out.sum().backward()
    assert (hidden.grad.dtype, weight.grad.dtype, bias.grad.dtype) == (torch.bfloat16, torch.float32, torch.float32)
    # Each row's dL/dz = onehot - softmax sums to zero over V, so the bias grad sums to ~0.
    assert abs(bias.grad.sum().item()) < 1e-4


def test_only_requested_grads():
    hidden, weight, targets = make()
    weight.requires_grad_()
    token_logps(hidden, weight, targets, chunk_size=8).sum().backward()
    assert weight.grad is not None and hidden.grad is None


def test_empty_rows():
    hidden, weight, _ = make(n=0)
    targets = torch.zeros(0, dtype=torch.long)
    out = token_logps(hidden, weight, targets)
    assert out.shape == (0,) and out.dtype == torch.float32
    hidden.requires_grad_()
    weight.requires_grad_()
    out = token_logps(hidden, weight, targets, chunk_size=4)
    assert out.shape == (0,) and out.requires_grad
    out.sum().backward()
    assert hidden.grad.shape == (0, 16)
    assert torch.equal(weight.grad, torch.zeros_like(weight))


def test_bad_shapes_raise():
    hidden, weight, targets = make()
    with pytest.raises(ValueError, match="weight"):
        token_logps(hidden, weight[:, :3], targets)
    with pytest.raises(ValueError, match="targets"):
        token_logps(hidden, weight, targets[:3])
    with pytest.raises(ValueError, match="chunk_size"):
        token_logps(hidden, weight, targets, chunk_size=0)


def saved_numel(fn) -> int:
    """Total numel of the tensors autograd saves for backward while running fn()."""
    total = 0

    def pack(t):
        nonlocal total
        total += t.numel()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return total


def test_saved_for_backward_is_far_below_n_by_v():
    n, v, h = 4096, 32000, 64
    hidden, weight, targets = make(n=n, v=v, h=h)
    hidden.requires_grad_()
    weight.requires_grad_()
    saved = saved_numel(lambda: token_logps(hidden, weight, targets, chunk_size=256))
    # Exactly the inputs + lse: hidden N*H + weight V*H + targets N + lse N (2.3M vs N*V = 131M).
    assert saved == n * h + v * h + 2 * n
    assert saved < n * v / 10
    # The counter does see a naive path's [N, V] logits (smaller sizes to keep the test fast).
    small_n = 256
    naive_saved = saved_numel(lambda: naive(hidden[:small_n], weight, targets[:small_n]))
    assert naive_saved >= small_n * v


def chunk_by_chunk(hidden, weight, targets, chunk_size, bias=None):
    """The forward with torch's own logsumexp and fresh tensors, chunk by chunk as token_logps
    cuts them: the same kernels on the same shapes, so it must agree bit for bit."""
    out = []
    for s in range(0, hidden.shape[0], chunk_size):
        z = hidden[s : s + chunk_size] @ weight.T
        if bias is not None:
            z = z + bias
        out.append(z.gather(1, targets[s : s + chunk_size, None]).squeeze(1) - torch.logsumexp(z, dim=-1))
    return torch.cat(out)


@pytest.mark.parametrize("with_bias", [False, True])
def test_in_place_log_softmax_matches_torch_bitwise(with_bias):
    """The LM head takes its logsumexp in the logits' own memory: not a bit of the result may
    change against torch.logsumexp on the same chunks."""
    hidden, weight, targets = make(n=300, v=4099, h=24)
    bias = torch.randn(4099) if with_bias else None
    got = token_logps(hidden, weight, targets, chunk_size=128, bias=bias)
    assert torch.equal(got, chunk_by_chunk(hidden, weight, targets, 128, bias))


def test_backward_in_place_matches_the_out_of_place_formula_bitwise():
    """dL/dz = g·(onehot − exp(z − lse)) built in z's memory equals the same formula on fresh
    tensors, bit for bit (the gradients of hidden and weight, chunk by chunk)."""
    hidden, weight, targets = make(n=90, v=997, h=16)
    upstream = torch.randn(90)
    h, w = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    (token_logps(h, w, targets, chunk_size=32) * upstream).sum().backward()
    grad_h, grad_w = torch.empty_like(hidden), torch.zeros_like(weight)
    for s in range(0, 90, 32):
        z = hidden[s : s + 32] @ weight.T
        g = upstream[s : s + 32, None]
        dz = torch.exp(z - torch.logsumexp(z, dim=-1, keepdim=True)).mul_(-g)
        dz.scatter_add_(1, targets[s : s + 32, None], g)
        grad_h[s : s + 32] = dz @ weight
        grad_w += dz.T @ hidden[s : s + 32]
    assert torch.equal(h.grad, grad_h) and torch.equal(w.grad, grad_w)
