"""Per-token log-probs straight from hidden states, chunked over rows, differentiable.

THE definition, for rows n = 0..N-1 (processed `chunk_size` rows at a time):

    z_n    = (hidden_n.to(cd) @ weight.to(cd).T [+ bias.to(cd)]).to(acc)     [V]
    z_n    = softcap * tanh(z_n / softcap)            (only if softcap is set; in acc)
    logp_n = z_n[targets_n] - logsumexp(z_n)                                 scalar

cd = compute_dtype (default hidden.dtype): the matmul dtype, as nn.Linear runs under autocast.
acc = max(float32, cd): float32, except float64 when cd is float64 (so gradcheck works).
The result equals, to acc rounding, the naive
`log_softmax((hidden.to(cd) @ weight.to(cd).T).to(acc), -1).gather(-1, targets[:, None])`.

Why chunked: the naive path materialises an N × V float32 tensor (N = 16k tokens, V = 128k
is 8 GiB). Here only chunk_size × V exists at a time. Under autograd, a plain loop over chunks
would still keep every chunk's logits alive for backward (N × V again), so `_ChunkedTokenLogps`
saves only its inputs plus the per-row logsumexp [N] and recomputes each chunk's logits in
backward: one extra LM-head matmul traded for O(N × V) memory.

Gradients (g = upstream grad [N], p = softmax(z), e_t = one-hot(target)):

    dL/dz_n      = g_n * (e_t - p_n)                                         [chunk, V] acc
    with softcap: dL/draw = dL/dz * (1 - tanh^2(raw / softcap)) = dL/dz * (1 - (z / softcap)^2)
    grad_hidden  = dL/draw.to(cd) @ weight.to(cd)                            [chunk, H] -> hidden.dtype
    grad_weight += dL/draw.to(cd).T @ hidden_c.to(cd)     summed over chunks in acc, -> weight.dtype
    grad_bias   += dL/draw.sum(0)                         summed over chunks in acc, -> bias.dtype
"""

from __future__ import annotations

import torch

__all__ = ["token_logps"]


def _acc_dtype(cd: torch.dtype) -> torch.dtype:
    # float32 for bf16/fp16/fp32 compute; float64 stays float64 (gradcheck needs it).
    return torch.promote_types(torch.float32, cd)


def _chunk_logits(h_c, w_cd, b_cd, cd, softcap):
    """[c, H] rows -> [c, V] logits in acc dtype, exactly as the module docstring defines them."""
    z = h_c.to(cd) @ w_cd.T
    if b_cd is not None:
        z = z + b_cd  # in cd, before the upcast, as nn.Linear adds it
    z = z.to(_acc_dtype(cd))
    if softcap is not None:
        z = torch.tanh(z.div_(softcap)).mul_(softcap)
    return z


def _forward(hidden, weight, targets, bias, cd, chunk_size, softcap):
    """Returns (logp [N], logsumexp [N]), both in acc dtype. Call with grad disabled."""
    n = hidden.shape[0]
    acc = _acc_dtype(cd)
    out = torch.empty(n, dtype=acc, device=hidden.device)
    lse = torch.empty(n, dtype=acc, device=hidden.device)
    # Cast the head once per call, not per chunk; a no-op when it already is in cd.
    w_cd = weight.to(cd)
    b_cd = None if bias is None else bias.to(cd)
    for s in range(0, n, chunk_size):
        z = _chunk_logits(hidden[s : s + chunk_size], w_cd, b_cd, cd, softcap)
        lse_c = torch.logsumexp(z, dim=-1)
        lse[s : s + chunk_size] = lse_c
        out[s : s + chunk_size] = z.gather(1, targets[s : s + chunk_size, None]).squeeze(1) - lse_c
    return out, lse


class _ChunkedTokenLogps(torch.autograd.Function):
    """Saves (hidden, weight, targets, bias, lse[N]) and recomputes logits chunk by chunk in backward."""

    @staticmethod
    def forward(ctx, hidden, weight, targets, bias, cd, chunk_size, softcap):
        with torch.autocast(device_type=hidden.device.type, enabled=False):
            out, lse = _forward(hidden, weight, targets, bias, cd, chunk_size, softcap)
        ctx.save_for_backward(hidden, weight, targets, bias, lse)
        ctx.cd, ctx.chunk_size, ctx.softcap = cd, chunk_size, softcap
        return out

    @staticmethod
    def backward(ctx, g):
        hidden, weight, targets, bias, lse = ctx.saved_tensors
        cd, chunk_size, softcap = ctx.cd, ctx.chunk_size, ctx.softcap
        need_h, need_w, _, need_b = ctx.needs_input_grad[:4]
        acc = _acc_dtype(cd)
        # Backward may run on another thread (CUDA) with its own autocast state; pin it off.
        with torch.autocast(device_type=hidden.device.type, enabled=False):
            w_cd = weight.to(cd)
            b_cd = None if bias is None else bias.to(cd)
            g = g.to(acc)
            grad_h = torch.empty_like(hidden) if need_h else None
            # Accumulate in acc even for a bf16 weight: many bf16 partial sums would lose bits.
            grad_w = torch.zeros(weight.shape, dtype=acc, device=weight.device) if need_w else None
            grad_b = torch.zeros(bias.shape, dtype=acc, device=bias.device) if need_b else None
            for s in range(0, hidden.shape[0], chunk_size):
                sl = slice(s, s + chunk_size)
                h_c = hidden[sl]
                z = _chunk_logits(h_c, w_cd, b_cd, cd, softcap)
                g_c = g[sl, None]
                # dL/dz = g * (onehot - softmax), built in place to keep one extra [c, V] buffer.
                dz = torch.exp(z - lse[sl, None]).mul_(-g_c)
                dz.scatter_add_(1, targets[sl, None], g_c)
                if softcap is not None:
                    # z = softcap * tanh(raw / softcap), so 1 - tanh^2 = 1 - (z / softcap)^2.
                    dz.mul_(z.div_(softcap).square_().neg_().add_(1))
                del z
                dz_cd = dz.to(cd)
                if need_h:
                    grad_h[sl] = (dz_cd @ w_cd).to(hidden.dtype)
                if need_w:
                    grad_w += (dz_cd.T @ h_c.to(cd)).to(acc)
                if need_b:
                    grad_b += dz.sum(0)
        if need_w:
            grad_w = grad_w.to(weight.dtype)
        if need_b:
            grad_b = grad_b.to(bias.dtype)
        return grad_h, grad_w, None, grad_b, None, None, None


def token_logps(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    *,
    compute_dtype: torch.dtype | None = None,
    chunk_size: int = 1024,
    softcap: float | None = None,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """log softmax(lm_head(hidden))[targets] per row, without an N × V tensor (module docstring).

    hidden:  [N, H] any float dtype, may require grad
    weight:  [V, H] LM-head weight, may require grad
    targets: [N] int64 in [0, V)
    compute_dtype: matmul dtype (None -> hidden.dtype); both operands are cast to it. The
        caller's autocast state is ignored, so pass the autocast dtype here.
    softcap: Gemma-2 final_logit_softcapping, applied after the upcast.
    bias:    [V] optional, added in compute_dtype before the upcast.
    Returns [N] float32 (float64 when compute_dtype is float64). Grads come back in
    hidden.dtype / weight.dtype / bias.dtype.
    """
    if hidden.dim() != 2 or weight.dim() != 2 or hidden.shape[1] != weight.shape[1]:
        raise ValueError(f"need hidden [N, H] and weight [V, H], got {tuple(hidden.shape)} and {tuple(weight.shape)}")
    if targets.shape != hidden.shape[:1]:
        raise ValueError(f"targets must be [N={hidden.shape[0]}], got {tuple(targets.shape)}")
    if bias is not None and bias.shape != weight.shape[:1]:
        raise ValueError(f"bias must be [V={weight.shape[0]}], got {tuple(bias.shape)}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    cd = hidden.dtype if compute_dtype is None else compute_dtype
    targets = targets.long()
    inputs = (hidden, weight) if bias is None else (hidden, weight, bias)
    if torch.is_grad_enabled() and any(t.requires_grad for t in inputs):
        return _ChunkedTokenLogps.apply(hidden, weight, targets, bias, cd, chunk_size, softcap)
    with torch.no_grad(), torch.autocast(device_type=hidden.device.type, enabled=False):
        return _forward(hidden, weight, targets, bias, cd, chunk_size, softcap)[0]
