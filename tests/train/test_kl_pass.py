"""The no-grad KL pass batches the step's KL sequences by their own lengths: same sums, less padding."""

import numpy as np
import pytest
import torch

from kto.formats.cache import open_cache
from kto.formats.compute.loading import load_causal_lm
from kto.formats.compute.logprob import CompletionLogps, sequence_sums
from kto.formats.compute.sources import resolve_source
from kto.train.data import MicroBatchShape, collate_micro_batch, epoch_plan
from kto.train.step import kl_local_sums


@pytest.fixture(scope="module")
def model(tiny_model_dir):
    return CompletionLogps(load_causal_lm(resolve_source(str(tiny_model_dir)), dtype=torch.float64).eval())


def step_micro_batches(cache, slots, pad_id=0):
    return [collate_micro_batch(cache, s, pad_id) for s in slots]


def per_microbatch(model, batches):
    """The KL pass as it ran before: one forward per collated micro-batch, filler rows included."""
    total, padded = 0.0, 0
    with torch.no_grad():
        for b in batches:
            diff = sequence_sums(model(b.kl.input_ids, b.kl.score_mask), b.kl.score_mask) - b.ref_kl_logp
            total += float((diff * b.valid).sum())
            padded += b.kl.input_ids.numel()
    return total, padded


def test_sums_equal_the_per_microbatch_pass_with_less_padding(tiny_cache, model):
    cache = open_cache(tiny_cache)
    rng = np.random.default_rng(0)
    # Micro-batches of random rows (the KL lengths inside each then differ a lot), a filler slot.
    slots = [rng.permutation(cache.num_rows)[:4] for _ in range(3)] + [np.array([5, 9, -1, -1])]
    batches = step_micro_batches(cache, slots)
    expected, padded_before = per_microbatch(model, batches)
    sums = kl_local_sums(model, batches)
    assert float(sums.total) == pytest.approx(expected, abs=1e-9)
    assert float(sums.count) == 14  # filler rows are not run
    real = sum(int((b.kl.attention_mask.sum(1) * b.valid).sum()) for b in batches)
    assert sums.real_tokens == real and sums.padded_tokens < padded_before


def test_kl_groups_are_sorted_near_equal_and_as_many_as_micro_batches():
    """Lengths 5 3 9 1 7 in 2 groups: bounds round(0), round(2.5) = 2, 5, so sorted 1 3 | 5 7 9
    (indices 3 1 | 0 4 2); 1 row in 3 groups
    leaves two empty (each runs a discarded repeat, so every rank runs as many forwards)."""
    from kto.train.step import kl_groups

    assert kl_groups([5, 3, 9, 1, 7], 2) == [[3, 1], [0, 4, 2]]
    assert kl_groups([4], 3) == [[], [0], []]


def test_cycle_plan_leaves_little_kl_padding(tiny_cache, model):
    """On the tiny cache (rows in cycle order), the step's KL pass pads under 10 %."""
    cache = open_cache(tiny_cache)
    plan = epoch_plan(cache.lengths(), MicroBatchShape(4, 2, 1), seed=0, epoch=0)
    real = padded = 0
    for step in plan:
        sums = kl_local_sums(model, step_micro_batches(cache, step[0]))
        real, padded = real + sums.real_tokens, padded + sums.padded_tokens
    assert 1 - real / padded < 0.10


@pytest.mark.parametrize("share", [False, True])
def test_a_micro_batch_of_filler_only_runs_and_counts_nothing(tiny_cache, model, share):
    """A short last step under --kl-scope microbatch, or a rank given only filler: the pass still
    runs one forward (every rank runs as many) and sums nothing; with prefix sharing it planned
    packs over no sequences and stopped before (pad_sequence of an empty list)."""
    cache = open_cache(tiny_cache)
    batches = step_micro_batches(cache, [np.array([-1, -1, -1, -1])])
    sums = kl_local_sums(model, batches, share)
    assert float(sums.total) == 0.0 and float(sums.count) == 0.0
    assert sums.real_tokens == 0 and sums.saved_tokens == 0
