"""A sequence's log-prob is a float64 sum of its fp32 terms (tests/numerics_bounds.py counts on
it): segment_sums accumulates in float64 whatever the per-token dtype, and the scorer behind
kto-precompute's cached ref sums keeps that sum rather than summing the fp32 values again."""

import torch


def test_fp32_terms_are_summed_in_float64():
    """2²⁴ + 1 + 1: every term is exact in fp32, but an fp32 running sum stays at 2²⁴ (2²⁴ + 1
    rounds to even); in float64 the sum is 2²⁴ + 2 exactly. A second run, [-2²⁴, 0.5, 0.25],
    likewise: fp32 would give -2²⁴."""
    from kto.formats.compute.logprob import segment_sums

    big = float(2**24)
    flat = torch.tensor([big, 1.0, 1.0, -big, 0.5, 0.25], dtype=torch.float32)
    out = segment_sums(flat, [3, 3])
    assert out.dtype == torch.float64
    assert out.tolist() == [big + 2.0, -big + 0.75]


def test_empty_runs_sum_to_zero_and_runs_keep_their_order():
    from kto.formats.compute.logprob import segment_sums

    flat = torch.tensor([1.5, -2.0, 4.0], dtype=torch.float32)
    assert segment_sums(flat, torch.tensor([0, 2, 0, 1])).tolist() == [0.0, -0.5, 0.0, 4.0]


class ScoreIdsAsLogps:
    """A stand-in scorer whose "log-prob" of each completion token is the token id itself
    (exact in fp32 up to 2²⁴): the sums are then known by hand."""

    def __call__(self, input_ids, score_mask, scored=None):
        return input_ids[score_mask].to(torch.float32)


def test_cached_sequence_sums_are_float64_sums_of_the_token_values():
    """Completions [2²⁴, 1, 1] and [3, 4] after one prompt token: the stored sums are 2²⁴ + 2
    and 7 exactly (an fp32 sum of the first gives 2²⁴), beside the per-token values as given."""
    import numpy as np

    from kto.formats.compute.scoring import score_sequences

    big = 2**24
    prompts, completions = [[7], [9]], [[big, 1, 1], [3, 4]]
    scored = score_sequences(ScoreIdsAsLogps(), prompts, completions, [0, 1], batch_tokens=64, pad_id=0, device=torch.device("cpu"))
    assert scored.sums.dtype == np.float64
    assert scored.sums.tolist() == [big + 2.0, 7.0]
    assert [v.tolist() for v in scored.token_logps] == [[big, 1.0, 1.0], [3.0, 4.0]]
