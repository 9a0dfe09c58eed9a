"""forward_backward against the objective written out by hand, from the model's own logits:

    L = Σ_rows w·(1 − σ(β·(r − z)))  (desirable)  or  w·(1 − σ(β·(z − r)))  (undesirable), over N rows,
        + γ · Σ over desirable completion tokens of −log πθ / T_D,
    r = Σ log πθ(y|x) − ref_logp,   z = max(0, mean over rows of Σ log πθ(y'|x) − ref_kl_logp), detached.

The other step tests compare one way of splitting a step with another, which a wrong term common
to every split passes: a mutation hunt found the SFT term over undesirable completions too, the
SFT sum over rows instead of tokens, the unclamped z in the loss and raw z logged as `kl`, each
green. Here the policy (a float64 tiny Llama, seed 1) has z < 0 on these rows (-0.224), so the
clamp decides the loss, and the weights differ (1.3, 0.7), so a swapped class shows."""

import numpy as np
import pytest
import torch
from conftest import OneProcess, make_tiny_llama

BETA, W_D, W_U = 0.1, 1.3, 0.7


@pytest.fixture(scope="module")
def policy_and_batch(tmp_path_factory, tiny_cache, tokenizer_dir):
    from kto.formats.cache import open_cache
    from kto.formats.compute.loading import load_causal_lm
    from kto.formats.compute.logprob import CompletionLogps
    from kto.formats.compute.sources import resolve_source
    from kto.train.data import collate_micro_batch

    path = make_tiny_llama(tmp_path_factory.mktemp("policy"), tokenizer_dir, seed=1)
    model = CompletionLogps(load_causal_lm(resolve_source(str(path)), dtype=torch.float64).eval())
    cache = open_cache(tiny_cache)
    whole = collate_micro_batch(cache, np.arange(4), pad_id=0)
    halves = [collate_micro_batch(cache, rows, pad_id=0) for rows in (np.array([0, 3]), np.array([1, 2]))]
    return model, whole, halves


def row_logps(lm, input_ids: torch.Tensor, score_mask: torch.Tensor) -> list[torch.Tensor]:
    """Each row's scored tokens' log-probs, row by row without its padding, from the full logits."""
    out = []
    for ids, mask in zip(input_ids, score_mask):
        end = int(mask.nonzero().max()) + 1
        logits = lm(input_ids=ids[None, :end]).logits[0].double()
        token = torch.log_softmax(logits[:-1], dim=-1).gather(1, ids[1:end, None])[:, 0]
        out.append(token[mask[1:end]])
    return out


def by_hand(model, b, gamma: float) -> dict:
    with torch.no_grad():
        kl = torch.stack([t.sum() for t in row_logps(model.lm, b.kl.input_ids, b.kl.score_mask)]) - b.ref_kl_logp
    z_raw = float(kl.mean())
    z = max(z_raw, 0.0)
    tokens = row_logps(model.lm, b.policy.input_ids, b.policy.score_mask)
    logp = torch.stack([t.sum() for t in tokens])
    r = logp - b.ref_logp
    d = b.desirable
    losses = torch.where(d, W_D * (1 - torch.sigmoid(BETA * (r - z))), W_U * (1 - torch.sigmoid(BETA * (z - r))))
    nll = -sum(t.sum() for t, desirable in zip(tokens, d.tolist()) if desirable)
    t_d = sum(len(t) for t, desirable in zip(tokens, d.tolist()) if desirable)
    objective = losses.sum() / len(d) + gamma * nll / t_d
    model.zero_grad(set_to_none=True)
    objective.backward()
    rewards, logp = (BETA * r).detach(), logp.detach()
    return {
        "z_raw": z_raw,
        "kto_loss": float(losses.detach().sum()) / len(d),
        "sft_loss": float(nll.detach()) / t_d,
        "loss": float(objective.detach()),
        "rewards/chosen": float(rewards[d].mean()),
        "rewards/rejected": float(rewards[~d].mean()),
        "logps/chosen": float(logp[d].mean()),
        "logps/rejected": float(logp[~d].mean()),
        "grads": {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None},
    }


@pytest.mark.parametrize("gamma, accumulated", [(0.0, False), (1.0, False), (1.0, True)])
def test_the_step_is_the_objective_by_hand(policy_and_batch, gamma, accumulated):
    """`accumulated`: the same 4 rows as two micro-batches of one step (z and both means over
    the step's rows and tokens, not each micro-batch's)."""
    from kto.train.loss import LossType
    from kto.train.step import LossSettings, forward_backward, summarize

    model, b, halves = policy_and_batch
    assert b.desirable.any() and (~b.desirable).any()
    hand = by_hand(model, b, gamma)
    assert hand["z_raw"] < -0.1  # the clamp is what the loss sees
    model.zero_grad(set_to_none=True)
    stats = forward_backward(model, halves if accumulated else [b], LossSettings(BETA, W_D, W_U, LossType.KTO, gamma, "step"), OneProcess())
    logged = summarize(stats, gamma)
    for key in ("kto_loss", "sft_loss", "loss", "rewards/chosen", "rewards/rejected", "logps/chosen", "logps/rejected"):
        assert logged[key] == pytest.approx(hand[key], rel=1e-9, abs=1e-12), key
    assert logged["rewards/margins"] == pytest.approx(hand["rewards/chosen"] - hand["rewards/rejected"], rel=1e-9)
    assert logged["kl_raw"] == pytest.approx(hand["z_raw"], rel=1e-9) and logged["kl"] == 0.0
    grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert grads.keys() == hand["grads"].keys()
    for name, g in hand["grads"].items():
        assert torch.allclose(grads[name], g, rtol=1e-9, atol=1e-12 * float(g.abs().max())), name


def test_eval_is_the_objective_by_hand_with_its_z(tmp_path, tiny_cache, tokenizer_dir):
    """evaluate() over the whole cache, in batches of 4, against the objective by hand over all
    its rows at once. The policy (seed 6) has z > 0 here, so the z the eval loss uses shows: a
    mutation hunt found eval scoring every row at z = 0 (while logging the true z) passed every
    eval test, which compare eval with itself."""
    from kto.formats.cache import open_cache
    from kto.formats.compute.loading import load_causal_lm
    from kto.formats.compute.logprob import CompletionLogps
    from kto.formats.compute.sources import resolve_source
    from kto.train.data import collate_micro_batch
    from kto.train.evaluate import evaluate
    from kto.train.loss import LossType
    from kto.train.step import LossSettings

    class OneProcessEval(OneProcess):
        device, process_index, is_main_process = torch.device("cpu"), 0, False

    path = make_tiny_llama(tmp_path / "policy", tokenizer_dir, seed=6)
    model = CompletionLogps(load_causal_lm(resolve_source(str(path)), dtype=torch.float64).eval())
    cache = open_cache(tiny_cache)
    hand = by_hand(model, collate_micro_batch(cache, np.arange(cache.num_rows), pad_id=0), gamma=0.0)
    assert hand["z_raw"] > 0.1
    got = evaluate(model, cache, LossSettings(BETA, W_D, W_U, LossType.KTO, 0.0, "step"), 0, 4, OneProcessEval())
    assert got["kl"] == pytest.approx(hand["z_raw"], rel=1e-9) and got["kl_raw"] == got["kl"]
    for key in ("kto_loss", "loss", "rewards/chosen", "rewards/rejected", "logps/chosen", "logps/rejected"):
        assert got[key] == pytest.approx(hand[key], rel=1e-9), key
