"""One step's gradients do not depend on how the step is split into ranks × accumulation × batch."""

import sys
from pathlib import Path

import pytest
import torch
from conftest import make_tiny_llama, run_checked, torchrun
from numerics_bounds import GRAD_ATOL, GRAD_RTOL
from safetensors.torch import load_file

HERE = Path(__file__).parent


def run_probe(tiny_cache, tiny_model_dir, out, batch, accum, scope="step", procs=1, *extra):
    args = [str(tiny_cache), str(tiny_model_dir), str(batch), str(accum), scope, str(out), *extra]
    probe = str(HERE / "grad_probe.py")
    if procs == 1:
        run_checked([sys.executable, probe, *args])
    else:
        torchrun(probe, *args, procs=procs)
    return load_file(out)


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
def test_gradients_equal_across_batch_accumulation_and_ranks(tiny_cache, other_policy, tmp_path):
    """1 rank × batch 4, 1 rank × batch 2 × accumulation 2, and 2 ranks × batch 2: same step rows,
    same z (kl-scope step), same reduction, so the same gradients within float tolerance."""
    base = run_probe(tiny_cache, other_policy, tmp_path / "a.safetensors", 4, 1)
    assert any(g.abs().sum() > 0 for g in base.values())
    assert_same_grads(base, run_probe(tiny_cache, other_policy, tmp_path / "b.safetensors", 2, 2))
    ddp = run_probe(tiny_cache, other_policy, tmp_path / "c.safetensors", 2, 1, "step", 2)
    assert_same_grads(base, ddp)
    # FSDP2 (each decoder layer and the root sharded over the 2 ranks, DTensor parameters): the
    # gathered gradient is the same as 1 process's and DDP's.
    fsdp = run_probe(tiny_cache, other_policy, tmp_path / "d.safetensors", 2, 1, "step", 2, "--fsdp")
    assert_same_grads(base, fsdp)
    assert_same_grads(ddp, fsdp)


@pytest.mark.distributed
@pytest.mark.numerics
def test_lora_gradients_equal_across_one_process_ddp_and_fsdp(tiny_cache, other_policy, tmp_path):
    """The same with LoRA adapters (r = 4, every decoder linear layer): only adapter parameters
    have gradients, and they agree between 1 process, DDP and FSDP2."""
    base = run_probe(tiny_cache, other_policy, tmp_path / "a.safetensors", 4, 1, "step", 1, "--lora-r", "4")
    assert all("lora_" in name for name in base) and len(base) == 2 * 7 * 2  # A and B, 7 linears, 2 layers
    assert all(g.abs().sum() > 0 for g in base.values())
    ddp = run_probe(tiny_cache, other_policy, tmp_path / "b.safetensors", 2, 1, "step", 2, "--lora-r", "4")
    fsdp = run_probe(tiny_cache, other_policy, tmp_path / "c.safetensors", 2, 1, "step", 2, "--lora-r", "4", "--fsdp")
    assert_same_grads(base, ddp)
    assert_same_grads(base, fsdp)


def test_microbatch_kl_scope_changes_the_gradient(tiny_cache, kl_tuned_policy, tmp_path):
    """The probe can tell splits apart: with z per micro-batch, accumulation no longer matches."""
    base = run_probe(tiny_cache, kl_tuned_policy, tmp_path / "a.safetensors", 4, 1, scope="microbatch")
    split = run_probe(tiny_cache, kl_tuned_policy, tmp_path / "b.safetensors", 2, 2, scope="microbatch")
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
    from kto.formats.compute.logprob import CompletionLogps
    from kto.formats.compute.models import load_causal_lm, resolve_source
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
