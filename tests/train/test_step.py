"""One step's gradients do not depend on how the step is split into ranks × accumulation × batch."""

from pathlib import Path

import grad_probe
import pytest
import torch
from conftest import make_tiny_llama, torchrun
from numerics_bounds import GRAD_ATOL, GRAD_RTOL
from safetensors import safe_open
from safetensors.torch import load_file

HERE = Path(__file__).parent


def probe_in_process(tiny_cache, model, out, batch, accum, scope="step", lora_r=0):
    """One rank, in this process (a fresh Accelerator before and after, as in its own process)."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
    try:
        grad_probe.probe(str(tiny_cache), str(model), grad_probe.Spec(str(out), batch, accum, scope, lora_r=lora_r))
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)
    return load_file(out)


def probe_two_ranks(tiny_cache, model, *specs):
    """The specs one after the other in one torchrun launch of 2 processes."""
    torchrun(str(HERE / "grad_probe.py"), str(tiny_cache), str(model), *map(str, specs))
    for s in specs:  # each ran on 2 ranks, sharded exactly when asked
        with safe_open(s.out, "pt") as f:
            assert f.metadata() == {"fsdp": str(s.fsdp), "world": "2"}, s
    return [load_file(s.out) for s in specs]


@pytest.fixture(scope="module")
def other_policy(tmp_path_factory, tokenizer_dir):
    """A policy that differs from the reference, so r ≠ 0 and z ≠ 0 at the probed step."""
    return make_tiny_llama(tmp_path_factory.mktemp("policy"), tokenizer_dir, seed=1)


@pytest.fixture(scope="module")
def kl_tuned_policy(tmp_path_factory, tiny_cache, tiny_model_dir):
    """The reference after a few steps that raise the log-prob of every cached KL completion:
    z > 0 in every micro-batch, with a different value in each, whatever the pairing (a random
    policy's z is near 0 with either sign, and z ≤ 0 clamps to the same 0 at every scope)."""
    import numpy as np
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from kto.formats.cache import open_cache
    from kto.formats.compute.logprob import CompletionLogps
    from kto.train.data import collate_micro_batch

    lm = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    model = CompletionLogps(lm)
    cache = open_cache(tiny_cache)
    kl = collate_micro_batch(cache, np.arange(cache.num_rows), pad_id=0).kl
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(5):
        (-model(kl.input_ids, kl.score_mask).sum()).backward()
        optimizer.step()
        optimizer.zero_grad()
    out = tmp_path_factory.mktemp("kl-tuned")
    lm.save_pretrained(out)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(out)
    return out


def assert_same_grads(a, b):
    assert a.keys() == b.keys() and len(a) > 5
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=GRAD_RTOL, atol=GRAD_ATOL, msg=name)


@pytest.mark.distributed
@pytest.mark.numerics
def test_gradients_equal_across_batch_accumulation_ranks_and_fsdp_with_and_without_lora(tiny_cache, other_policy, tmp_path):
    """1 rank × batch 4, 1 rank × batch 2 × accumulation 2, and 2 ranks × batch 2 under DDP and
    under FSDP2 (each decoder layer and the root sharded over the 2 ranks, DTensor parameters):
    same step rows, same z (kl-scope step), same reduction, so the same gradients within float
    tolerance. The same with LoRA adapters (r = 4, every decoder linear layer): only adapter
    parameters have gradients, and they agree between 1 process, DDP and FSDP2."""
    base = probe_in_process(tiny_cache, other_policy, tmp_path / "a.safetensors", 4, 1)
    assert any(g.abs().sum() > 0 for g in base.values())
    assert_same_grads(base, probe_in_process(tiny_cache, other_policy, tmp_path / "b.safetensors", 2, 2))
    lora_base = probe_in_process(tiny_cache, other_policy, tmp_path / "lora-a.safetensors", 4, 1, lora_r=4)
    assert all("lora_" in name for name in lora_base) and len(lora_base) == 2 * 7 * 2  # A and B, 7 linears, 2 layers
    assert all(g.abs().sum() > 0 for g in lora_base.values())
    Spec = grad_probe.Spec
    ddp, lora_ddp, fsdp, lora_fsdp = probe_two_ranks(
        tiny_cache,
        other_policy,
        Spec(str(tmp_path / "c.safetensors"), 2, 1),
        Spec(str(tmp_path / "lora-c.safetensors"), 2, 1, lora_r=4),
        Spec(str(tmp_path / "d.safetensors"), 2, 1, fsdp=True),
        Spec(str(tmp_path / "lora-d.safetensors"), 2, 1, fsdp=True, lora_r=4),
    )
    assert_same_grads(base, ddp)
    # FSDP2: the gathered gradient is the same as 1 process's and DDP's.
    assert_same_grads(base, fsdp)
    assert_same_grads(ddp, fsdp)
    assert_same_grads(lora_base, lora_ddp)
    assert_same_grads(lora_base, lora_fsdp)


def test_microbatch_kl_scope_changes_the_gradient(tiny_cache, kl_tuned_policy, tmp_path):
    """The probe can tell splits apart: with z per micro-batch, accumulation no longer matches."""
    base = probe_in_process(tiny_cache, kl_tuned_policy, tmp_path / "a.safetensors", 4, 1, scope="microbatch")
    split = probe_in_process(tiny_cache, kl_tuned_policy, tmp_path / "b.safetensors", 2, 2, scope="microbatch")
    diffs = [float((base[n] - split[n]).abs().max()) for n in base]
    assert max(diffs) > 1e-6
    with pytest.raises(AssertionError):  # and past the rounding tolerance of the tests above
        assert_same_grads(base, split)


class CountingAccelerator:
    """Two 'processes' whose all-reduces return the local values (the other rank adds zeros):
    enough to count the collectives a step makes."""

    num_processes = 2

    def __init__(self):
        self.reductions = []

    def reduce(self, values, reduction):
        self.reductions.append(tuple(values.shape))
        return values

    def no_sync(self, model):
        import contextlib

        return contextlib.nullcontext()

    def backward(self, loss):
        loss.backward()


@pytest.mark.parametrize(
    "loss, scope, expected",
    [
        ("kto", "step", [(4,)]),  # Σ KL, KL pairs, rows, desirable tokens: one reduce
        ("kto", "microbatch", [(4,), (2,)]),  # the first micro-batch's z carries the counts
        ("apo_zero_unpaired", "step", [(2,)]),  # no KL pass: the counts alone
    ],
)
def test_a_step_makes_one_reduction_before_its_micro_batches(tiny_cache, tiny_model_dir, loss, scope, expected):
    import numpy as np

    from kto.formats.cache import open_cache
    from kto.formats.compute.loading import load_causal_lm
    from kto.formats.compute.logprob import CompletionLogps
    from kto.formats.compute.sources import resolve_source
    from kto.train.data import collate_micro_batch
    from kto.train.loss import LossType
    from kto.train.step import LossSettings, StepStats, forward_backward

    cache = open_cache(tiny_cache)
    model = CompletionLogps(load_causal_lm(resolve_source(str(tiny_model_dir)), dtype=torch.float32))
    batches = [collate_micro_batch(cache, np.array(rows), pad_id=0) for rows in ([0, 1], [2, -1])]
    acc = CountingAccelerator()
    stats = forward_backward(model, batches, LossSettings(0.1, 1.0, 1.0, LossType(loss), 0.0, scope), acc)
    assert acc.reductions == expected
    assert isinstance(stats, StepStats) and float(stats.examples) == 3  # the filler row counts nowhere
    again = StepStats.unstacked(stats.stacked())
    assert again._fields == stats._fields and all(torch.equal(a, b) for a, b in zip(again, stats))


def test_microbatch_kl_averages_only_the_micro_batches_that_hold_pairs(tiny_cache, kl_tuned_policy):
    """--kl-scope microbatch on a short last step: a micro-batch of filler rows has no KL pair,
    and its z of 0 must not pull the logged kl (and kl_raw) toward 0."""
    import numpy as np

    from kto.formats.cache import open_cache
    from kto.formats.compute.loading import load_causal_lm
    from kto.formats.compute.logprob import CompletionLogps
    from kto.formats.compute.sources import resolve_source
    from kto.train.data import collate_micro_batch
    from kto.train.loss import LossType, kl_estimate
    from kto.train.step import LossSettings, forward_backward, kl_local_sums, summarize

    cache = open_cache(tiny_cache)
    model = CompletionLogps(load_causal_lm(resolve_source(str(kl_tuned_policy)), dtype=torch.float32))
    batches = [collate_micro_batch(cache, np.array(rows), pad_id=0) for rows in ([0, 1], [2, -1], [-1, -1])]
    stats = forward_backward(model, batches, LossSettings(0.1, 1.0, 1.0, LossType.KTO, 0.0, "microbatch"), CountingAccelerator())
    with torch.no_grad():
        z = [kl_estimate(s.total, s.count) for s in (kl_local_sums(model, [b]) for b in batches[:2])]
    logged = summarize(stats)
    assert all(float(e.clamped) > 0 for e in z)
    assert logged["kl"] == pytest.approx(sum(float(e.clamped) for e in z) / 2, rel=1e-12)
    assert logged["kl_raw"] == pytest.approx(sum(float(e.raw) for e in z) / 2, rel=1e-12)
