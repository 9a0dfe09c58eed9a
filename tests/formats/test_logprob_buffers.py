"""token_logps reuses one set of large buffers per call (logprob.py, `_Scratch`): the numbers
must be those of the same operations on fresh tensors, bit for bit, and the number of large
allocations must not grow with the number of chunks.

`fresh` below is the module docstring's definition written with a new tensor for every
intermediate (what the package did before the buffers), logsumexp as `logsumexp_reference`
writes it (ATen's order, written out: a torch release may reorder its own); its gradients
are the module's formulas for dL/dz, grad_hidden, grad_weight and grad_bias, in the module's
order. torch.equal, not a tolerance: the reused buffers run the same kernels on the same shapes.
"""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from kto.formats.compute.logprob import token_logps


def logsumexp_reference(z: torch.Tensor) -> torch.Tensor:
    """logsumexp over the last dim, step by step: the row maximum (0 where infinite) taken out,
    exp, sum, log, the maximum added back."""
    m = z.amax(dim=-1, keepdim=True)
    m = torch.where(m.abs() == float("inf"), torch.zeros_like(m), m)
    return (z - m).exp().sum(dim=-1).log() + m.squeeze(-1)


def fresh(hidden, weight, targets, g, cd, chunk_size, softcap, bias):
    """(log p [N], grad_hidden, grad_weight, grad_bias) chunk by chunk, every tensor fresh."""
    acc = torch.promote_types(torch.float32, cd)
    w_cd, g = weight.to(cd), g.to(acc)
    out, grad_h = [], []
    grad_w = torch.zeros(weight.shape, dtype=acc)
    grad_b = torch.zeros(weight.shape[:1], dtype=acc)
    for s in range(0, hidden.shape[0], chunk_size):
        h_c, t_c, g_c = hidden[s : s + chunk_size].to(cd), targets[s : s + chunk_size, None], g[s : s + chunk_size, None]
        z = h_c @ w_cd.T
        if bias is not None:
            z = z + bias.to(cd)
        z = z.to(acc)
        if softcap is not None:
            z = torch.tanh(z / softcap) * softcap
        lse = logsumexp_reference(z)
        out.append(z.gather(1, t_c).squeeze(1) - lse)
        dz = (z - lse[:, None]).exp() * -g_c
        dz = dz.scatter_add(1, t_c, g_c)
        if softcap is not None:
            dz = dz * ((z / softcap).square().neg() + 1)
        grad_h.append((dz.to(cd) @ w_cd).to(hidden.dtype))
        grad_w = grad_w + (dz.to(cd).T @ h_c).to(acc)
        grad_b = grad_b + dz.sum(0)
    return torch.cat(out), torch.cat(grad_h), grad_w.to(weight.dtype), grad_b.to(weight.dtype)


def inputs(n=37, v=1000, h=24, dtype=torch.float32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, h, generator=gen).to(dtype)
    weight = (torch.randn(v, h, generator=gen) * 0.5).to(dtype)
    bias = (torch.randn(v, generator=gen) * 0.1).to(dtype)
    targets = torch.randint(0, v, (n,), generator=gen)
    g = torch.randn(n, generator=gen)
    return hidden, weight, bias, targets, g


CASES = [
    # (weight dtype, compute dtype, softcap, bias, chunk_size): chunk 16 of 37 rows leaves a last
    # chunk of 5 rows, a shorter view of the same buffers.
    (torch.float32, torch.float32, None, False, 16),
    (torch.float32, torch.float32, None, False, 1024),
    (torch.float32, torch.float32, 30.0, True, 16),
    (torch.float32, torch.bfloat16, None, True, 16),
    (torch.float32, torch.bfloat16, 5.0, True, 7),
    (torch.bfloat16, torch.bfloat16, 5.0, False, 16),
    (torch.float64, torch.float64, 30.0, True, 16),
]


@pytest.mark.parametrize("dtype, cd, softcap, with_bias, chunk_size", CASES)
def test_reused_buffers_give_the_fresh_tensors_numbers_bit_for_bit(dtype, cd, softcap, with_bias, chunk_size):
    hidden, weight, bias, targets, g = inputs(dtype=dtype)
    bias = bias if with_bias else None
    want_out, want_h, want_w, want_b = fresh(hidden, weight, targets, g, cd, chunk_size, softcap, bias)

    no_grad = token_logps(hidden, weight, targets, compute_dtype=cd, chunk_size=chunk_size, softcap=softcap, bias=bias)
    assert torch.equal(no_grad, want_out)

    leaves = [t.clone().requires_grad_() for t in (hidden, weight, *([bias] if with_bias else []))]
    got = token_logps(leaves[0], leaves[1], targets, compute_dtype=cd, chunk_size=chunk_size, softcap=softcap, bias=leaves[2] if with_bias else None)
    assert torch.equal(got.detach(), want_out)
    got.backward(g.to(got.dtype))
    assert torch.equal(leaves[0].grad, want_h)
    assert torch.equal(leaves[1].grad, want_w)
    if with_bias:
        assert torch.equal(leaves[2].grad, want_b)


class NewStorages(TorchDispatchMode):
    """Counts the tensors of `at_least` bytes or more that ops return in new memory: not views,
    not in-place or out= results (their storage is an input's). Counted at the dispatcher,
    whatever allocator or profiler a torch release has."""

    def __init__(self, at_least: int) -> None:
        super().__init__()
        self.at_least, self.count = at_least, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        given = {t.untyped_storage().data_ptr() for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)}
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor) and t.untyped_storage().nbytes() >= self.at_least and t.untyped_storage().data_ptr() not in given:
                self.count += 1
        return out


def large_allocations(fn, at_least: int) -> int:
    """How many new tensors of `at_least` bytes or more `fn` makes."""
    with NewStorages(at_least) as seen:
        fn()
    return seen.count


@pytest.mark.parametrize("n", [8, 40])
@pytest.mark.parametrize("softcap", [None, 30.0])
def test_large_allocations_per_call_do_not_grow_with_the_chunks(softcap, n):
    """V = 5000, H = 16, chunks of 8 rows, n = 8 rows (1 chunk) or 40 (5 chunks): a [8, V] fp32
    chunk is 160 kB, the [V, H] weight gradient 320 kB; nothing else of a call reaches 100 kB.
    Forward: one logits buffer. Backward: the logits buffer, dL/dz's buffer with a softcap, the
    weight gradient's accumulator and its per-chunk product buffer: 3, or 4 with a softcap, for
    1 chunk or 5 (fresh tensors per chunk made 1 per chunk in the forward and 1 + 2 per chunk
    in the backward: 5 and 11 for 5 chunks without softcap)."""
    hidden, weight, _, targets, g = inputs(n=n, v=5000, h=16)
    assert large_allocations(lambda: token_logps(hidden, weight, targets, chunk_size=8, softcap=softcap), 100_000) == 1
    leaves = [hidden.clone().requires_grad_(), weight.clone().requires_grad_()]
    out = token_logps(*leaves, targets, chunk_size=8, softcap=softcap)
    assert large_allocations(lambda: out.backward(g), 100_000) == (3 if softcap is None else 4)


@pytest.mark.parametrize("softcap", [None, 5.0])
def test_bf16_compute_makes_as_many_large_tensors_for_five_chunks_as_for_one(softcap):
    """Under bf16 compute (the usual training dtype) the cd copies and the weight gradient's
    product are reused too: the count for 5 chunks equals the count for 1, forward and backward."""

    def counts(n):
        hidden, weight, _, targets, g = inputs(n=n, v=5000, h=16)
        forward = large_allocations(lambda: token_logps(hidden, weight, targets, compute_dtype=torch.bfloat16, chunk_size=8, softcap=softcap), 60_000)
        leaves = [hidden.clone().requires_grad_(), weight.clone().requires_grad_()]
        out = token_logps(*leaves, targets, compute_dtype=torch.bfloat16, chunk_size=8, softcap=softcap)
        return forward, large_allocations(lambda: out.backward(g), 60_000)

    assert counts(40) == counts(8)
