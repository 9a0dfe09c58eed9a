"""How closely two fp32 computations of the same log-probs must agree: stated once, here.

Two kinds of promise, on every x86 CPU (checked on AVX-512, and in .ci/run a second time with
the vector width forced down to AVX2):

- **Bit-identical** where the same kernels see the same shapes with as many threads: a rerun
  or a resumed kto-precompute (cache bytes), two processes against one (each shard is scored
  alone, in the same batches), a resumed kto-train (losses and weights), train- against
  eval-mode forwards. Tests assert equality there, and any difference is a bug. The thread
  count belongs to "the same kernels": with 2 threads MKL splits some matmul sums otherwise
  than with 1 (under AVX2 a cache made with 1 thread differs from one made with 2). So does the
  way it was set: a process started with OMP_NUM_THREADS=4 and one that called
  torch.set_num_threads(4) after starting with fewer differed by 1 ulp of a loss on a 2-core
  Xeon, both reporting 4 threads (the tests hand their children OMP_NUM_THREADS equal to their
  own count, which CI sets at start).
- **Equal to fp32 rounding** where two paths run different shapes: prefix-shared against plain
  scoring, kto-train's batches against kto-precompute's (the step-0 check), LoRA at B = 0 and
  FSDP against the plain model, one plain batch width against another. A kernel may then sum the
  same terms in another order (another vector width, another split of a matmul's reduction,
  the scalar tail of a vectorised loop), so the last bits differ from one CPU kind to another.
  On this project's AVX-512 machine these paths happened to give equal bits; on an AVX2 EPYC
  the prefix-shared test differed by 1 ulp. Tests assert the bound below.

The bound. A log-prob is logit_y − logsumexp(logits); each logit ends a chain of about a dozen
reductions per layer (q/k/v/o projections, the softmax sum and the weighted sum over keys,
gate/up/down, then the LM head). Summing n fp32 terms in another order moves the result by at
most about n·u·Σ|terms| (u = 2⁻²⁴) and in practice by a few ulps of the result; these small
models do not amplify errors much, so each reduction adds a few ulps of the logits' scale and
the log-prob's absolute error is some tens of ulps of that scale. The logits are not stored: the
largest |log p| of the values compared stands in for their scale (logits within a few units,
|log p| near log V). Hence per token

    |a − b| ≤ TOKEN_ULPS · ulp(max(1, max |log p|))           (ulp of an fp32 number)

= 32 ulps: 7.6e-6 for |log p| in [2, 4), 3.1e-5 for [8, 16) (the SmolLM2 vocabulary: log V =
10.8). A sequence's log-prob is a float64 sum of its fp32 terms, so two sums differ by at most
the sum of their tokens' bounds (the float64 additions add < 1e-12). Real bugs are far above
this: a completion mask one token early moves them by up to 1.36 on test_shared_prefix.py's
model, where the bound is 1.5e-5 (that test shows the bound catching it).

Scope: the suite's models have 2 layers. On the real 30-layer SmolLM2-135M, sequences over
about 720 tokens differ by up to 2.1e-5 (40 unpaired rows) and 2.5e-5 (8 pairs) per token
between any two batchings (plain against plain at another --batch-tokens as much as
prefix-shared against plain): 11–13 ulps of 16, but up
to 44 ulps of a sequence's largest |log p| when that is small (7.1), so the |log p| scale
understates the logits' there (docs/benchmarks.md, issue 21's second pass). Over the whole
files of ../shared/data, prefix-shared against plain: up to 3.4e-5 / 6.1e-5 (main / KL,
kto_en_demo.json: 18 / 32 ulps of its largest |log p|, 31.98, the KL side at this bound) and
3.1e-5 / 4.9e-5 (dpo_en_demo.json: 8 / 13 ulps of 32.4), where sequences of 385–720 tokens
differ by up to 3.1e-5 and those of up to 384 tokens by at most 5.7e-6 (issue 21's fifth pass).
Against a float64 forward of each plain sequence, plain fp32 itself is 2–5e-5 off there (10–26
ulps of the largest |log p|), as prefix-shared is, under AVX-512 and AVX2 (sixth pass,
tools/bench_fp32_error.py): the differences are fp32's own error, which no layout goes below.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

# Per-token agreement of two fp32 paths over different shapes, in ulps of the scale (docstring).
TOKEN_ULPS = 32


def ulp(x: float) -> float:
    """The gap between the fp32 number |x| and the next one up."""
    return float(np.spacing(np.float32(abs(x))))


def token_bound(scale: float) -> float:
    """Per-token |Δ log p| allowed between two paths whose largest |log p| is `scale`."""
    return TOKEN_ULPS * ulp(max(1.0, scale))


def scale_of(*sequences: Sequence[np.ndarray]) -> float:
    """The largest |value| over lists of per-token arrays."""
    return float(max((np.abs(np.asarray(a, dtype=np.float64)).max(initial=0.0) for seqs in sequences for a in seqs), default=0.0))


def assert_tokens_agree(a: Sequence[np.ndarray], b: Sequence[np.ndarray], *, what: str = "log p") -> float:
    """Per-token values of two paths (one array per sequence) agree within token_bound at the
    scale of both; returns the largest |Δ|, also printed with its size in ulps (for the docs)."""
    assert len(a) == len(b), (len(a), len(b))
    scale = scale_of(a, b)
    bound, unit = token_bound(scale), ulp(max(1.0, scale))
    worst = 0.0
    for k, (x, y) in enumerate(zip(a, b)):
        x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
        assert x.shape == y.shape, (what, k, x.shape, y.shape)
        d = float(np.abs(x - y).max(initial=0.0))
        assert d <= bound, f"{what}, sequence {k}: max |Δ| {d:.3g} = {d / unit:.1f} ulp > bound {bound:.3g} = {TOKEN_ULPS} ulp of {scale:.3g}"
        worst = max(worst, d)
    print(f"{what}: max |Δ| per token {worst:.2e} = {worst / unit:.1f} ulp of {scale:.3g} (bound {bound:.2e})")
    return worst


def sum_bound(terms: np.ndarray, scale: float) -> float:
    """|Δ| allowed between two float64 sums of these per-token terms: the sum of their bounds."""
    return len(terms) * token_bound(scale)


def assert_sums_agree(a_sums: Sequence[float], b_sums: Sequence[float], token_values: Sequence[np.ndarray], *, what: str = "sequence log p") -> None:
    """Per-sequence sums agree within sum_bound of each sequence's per-token terms."""
    scale = scale_of(token_values)
    for k, (x, y, terms) in enumerate(zip(a_sums, b_sums, token_values, strict=True)):
        d, bound = abs(float(x) - float(y)), sum_bound(terms, scale)
        assert d <= bound, f"{what}, sequence {k}: |Δ| {d:.3g} > bound {bound:.3g}"


# Gradients of one optimizer step computed over another split (batch 4; batch 2 × accumulation 2;
# 2 ranks, DDP or FSDP2): each entry is a sum over the step's tokens of products that largely
# cancel, added in another order and all-reduced across ranks, so its rounding is relative to
# the terms, not to the (smaller) sum: entries agree to a relative 1e-4, and entries near 0 to
# 1e-7 absolute. A real difference in what is computed is larger: z per micro-batch instead of
# per step moves the gradient past these (test_step.test_microbatch_kl_scope_changes_the_gradient).
GRAD_RTOL, GRAD_ATOL = 1e-4, 1e-7


STEP0_LINE = re.compile(r"step-0 check: max \|Δ log p\| per token vs cache = (\S+) over (\d+) tokens")


def step0_drift(output: str) -> float:
    """The max |Δ| kto-train's step-0 check printed (it must have printed one)."""
    found = STEP0_LINE.search(output)
    assert found, output[-3000:]
    return float(found.group(1))


def _cache_columns(cache: Path, names: Sequence[str]) -> dict[str, list]:
    """The list columns `names` of every shard of a cache, each as one list of arrays."""
    import pyarrow as pa
    import pyarrow.ipc as ipc

    out: dict[str, list] = {n: [] for n in names}
    for path in sorted(Path(cache).glob("shard-*.arrow")):
        with pa.memory_map(str(path)) as source:
            table = ipc.open_file(source).read_all()
        for n in names:
            out[n] += [np.asarray(v) for v in table.column(n).to_pylist()]
    return out


def cache_logp_scale(cache: Path) -> float:
    """The largest |per-token reference log p| in a cache (main and KL sequences)."""
    cols = _cache_columns(cache, ("ref_token_logps", "ref_kl_token_logps"))
    return scale_of(*cols.values())


def cache_sum_bound(cache: Path) -> float:
    """The largest sum_bound of any sequence in a cache: what a step-0 reward or KL term
    (a policy sum minus the cached sum, with πθ = πref) may be off by."""
    cols = _cache_columns(cache, ("completion_ids", "kl_completion_ids"))
    longest = max(len(a) for seqs in cols.values() for a in seqs)
    return longest * token_bound(cache_logp_scale(cache))


def assert_step0_agrees(output: str, cache: Path) -> float:
    """kto-train's step-0 drift (the policy at step 0 is the reference, its batches are shaped
    otherwise than precompute's) is within the per-token bound at the cache's scale."""
    drift, bound = step0_drift(output), token_bound(cache_logp_scale(cache))
    assert drift <= bound, f"step-0 drift {drift:.3g} > bound {bound:.3g} ({TOKEN_ULPS} ulp)"
    print(f"step-0 drift {drift:.2e} = {drift / ulp(max(1.0, cache_logp_scale(cache))):.1f} ulp (bound {bound:.2e})")
    return drift
