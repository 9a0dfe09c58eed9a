"""kto-inspect summary streams the per-token terms: the same numbers as one polars query over
every row (the reference below, which summary ran until it held ~2× the cache in RAM), in RAM
that does not grow with the cache."""

import json
import shutil
import tracemalloc

import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc
import pytest
from click.testing import CliRunner
from conftest import patch_shard_table

from kto.formats import schema as S
from kto.formats.manifest import read_manifest
from kto.formats.scanning import scan
from kto.inspection import summary, token_terms
from kto.inspection.cli import main

# polars' own aggregations (summary's, for the per-row figures) over the exploded terms: the
# reference the streamed token statistics must equal.
describe = summary._describe


def unpack(row: dict, name: str) -> dict:
    stats = {k.split(":")[1]: v for k, v in row.items() if k.startswith(f"{name}:")}
    return stats if stats["count"] else {k: (0 if k == "count" else None) for k in stats}


def polars_reference(cache) -> dict:
    """The statistics as summary computed them before 2026-12-06: the terms exploded per label
    (every -0.0 taken as +0.0: polars' sign of a zero at a quantile or the max was arbitrary)."""
    import polars as pl

    lf = scan(cache)
    lens = {name: pl.col(col).list.len() for name, col in summary.LENGTHS.items()}
    overall = lf.select(*(a for name, e in lens.items() for a in describe(e, name))).collect().row(0, named=True)
    by_label = (
        lf.group_by(S.LABEL)
        .agg(
            *describe(pl.col(S.REF_LOGP), "sequence"),
            *describe(pl.col(S.REF_LOGP) / lens["completion"], "mean_per_token"),
            *describe(pl.col(S.REF_TOKEN_LOGPS).list.explode(keep_nulls=False, empty_as_null=False), "token"),
            *describe(pl.col(S.REF_KL_LOGP), "kl_sequence"),
        )
        .collect()
        .rows(named=True)
    )
    parts = ("sequence", "mean_per_token", "token", "kl_sequence")
    labels = {("desirable" if r[S.LABEL] else "undesirable"): {p: unpack(r, p) for p in parts} for r in by_label}
    reference = {"lengths": {name: unpack(overall, name) for name in lens}, "ref_logps": {k: labels[k] for k in ("desirable", "undesirable") if k in labels}}
    return unsigned_zeros(reference)


def unsigned_zeros(value):
    """-0.0 as 0.0 everywhere: summary takes the two zeros as one value (test_the_two_zeros_are_one_value)."""
    if isinstance(value, dict):
        return {k: unsigned_zeros(v) for k, v in value.items()}
    return 0.0 if isinstance(value, float) and value == 0 else value


def same(got: dict, want: dict) -> bool:
    """Equal, NaN equal to NaN (json.dumps writes both as NaN)."""
    return json.dumps(got, sort_keys=True) == json.dumps(want, sort_keys=True)


def rewrite(tiny_cache, dest, terms, labels=None):
    """A copy of tiny_cache (4 shards) whose ref_token_logps (and labels) are replaced, row by
    row: `terms(i)` is row i's list (None: a null list), `labels(i)` its label."""
    cache = dest / "cache"
    shutil.copytree(tiny_cache, cache)
    first = 0
    for k, entry in enumerate(read_manifest(cache).shards):
        table = ipc.open_file(pa.memory_map(str(cache / entry.name))).read_all()
        rows = range(first, first + table.num_rows)
        first += table.num_rows
        column = pa.array([terms(i) for i in rows], pa.list_(pa.float32()))
        table = table.set_column(table.schema.get_field_index(S.REF_TOKEN_LOGPS), S.REF_TOKEN_LOGPS, column)
        if labels is not None:
            table = table.set_column(table.schema.get_field_index(S.LABEL), S.LABEL, pa.array([labels(i) for i in rows], pa.bool_()))
        patch_shard_table(cache, k, table)
    return cache


def log_probs(rng, n: int) -> list:
    """Log-probs over many binades (-e^-20 .. -e^5), a third of them rounded to 1/64 (ties)."""
    v = -np.exp(rng.uniform(-20, 5, n)).astype(np.float32)
    v[: n // 3] = np.round(v[: n // 3] * 64) / 64
    return rng.permutation(v).tolist()


CASES = {
    # Lengths 0..300 across rows, labels reshuffled: slices cut rows, shards and labels apart.
    "random": (lambda rng, i: log_probs(rng, int(rng.integers(0, 300))), lambda i: bool(i % 3)),
    # Every term in one histogram bin (the hunter's cache: a constant -10.8 per token).
    "constant": (lambda rng, i: [-10.8] * 50, None),
    # One desirable row of one term; a label with terms only in null lists.
    "one_term": (lambda rng, i: [-0.5] if i == 0 else log_probs(rng, 40), lambda i: i == 0),
    "no_terms_for_a_label": (lambda rng, i: log_probs(rng, 20) if i % 2 else None, lambda i: bool(i % 2)),
    "empty_lists": (lambda rng, i: [] if i % 2 else log_probs(rng, 5), None),
    # Values verify refuses (a tampered cache): NaN sorts last, min / max skip it, ±inf, null terms.
    "not_finite_and_null_terms": (lambda rng, i: [float("nan"), float("-inf"), None, *log_probs(rng, 7)] if i % 5 == 0 else log_probs(rng, 9), None),
    "all_nan_for_a_label": (lambda rng, i: [float("nan")] * 3 if i % 2 else log_probs(rng, 9), lambda i: bool(i % 2)),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_summary_equals_the_polars_reference(tiny_cache, tmp_path, monkeypatch, case):
    """Every number of `summary --json` (lengths and log-probs) is the reference's, exactly."""
    rng = np.random.default_rng(0)
    terms, labels = CASES[case]
    cache = rewrite(tiny_cache, tmp_path, lambda i: terms(rng, i), labels)
    monkeypatch.setattr(token_terms, "CHUNK_TOKENS", 64)  # many slices per shard and per row
    got, want = summary.summarize(cache), polars_reference(cache)
    assert same(got["lengths"], want["lengths"]) and same(got["ref_logps"], want["ref_logps"]), (got["ref_logps"], want["ref_logps"])


def test_summary_of_the_tiny_cache_equals_the_reference(tiny_cache):
    s = json.loads(CliRunner().invoke(main, ["summary", str(tiny_cache), "--json"]).stdout)
    want = polars_reference(tiny_cache)
    assert s["lengths"] == want["lengths"] and s["ref_logps"] == want["ref_logps"]


def test_token_terms_are_read_a_slice_at_a_time(tiny_cache, tmp_path, monkeypatch):
    """RAM for the per-token terms does not grow with the cache: 16× the terms (1.6 M, 6.4 MB of
    float32, rows of 100,000 terms each) peak within 0.2 MB of the small cache (numpy's
    allocations, which tracemalloc sees: the fixed histograms, ~6 MB here, and one slice)."""
    monkeypatch.setattr(token_terms, "CHUNK_TOKENS", 4096)
    peaks = {}
    for n in (6_250, 100_000):  # 16 rows: 0.1 M and 1.6 M terms
        rng = np.random.default_rng(n)
        cache = rewrite(tiny_cache, tmp_path / str(n), lambda i, rng=rng, n=n: log_probs(rng, n))
        c = summary.open_cache(cache)
        tracemalloc.start()
        stats = token_terms.token_stats(c, *summary._first_pass(c)[1:])  # both passes over the terms
        peaks[n] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert stats[True]["token:count"] + stats[False]["token:count"] == 16 * n
    assert peaks[100_000] < peaks[6_250] + 200_000, peaks


def test_the_two_zeros_are_one_value(tiny_cache, tmp_path):
    """-0.0 and +0.0 are keyed as one value (polars ranks them equal): the statistics equal those
    of the same terms with every zero +0.0, so a quantile or the max never prints -0.0."""
    mixed = rewrite(tiny_cache, tmp_path / "mixed", lambda i: [0.0, -0.0, -0.0, 0.0, -1.0] * 3)
    plain = rewrite(tiny_cache, tmp_path / "plain", lambda i: [0.0, 0.0, 0.0, 0.0, -1.0] * 3)
    got, want = summary.summarize(mixed)["ref_logps"], summary.summarize(plain)["ref_logps"]
    assert same(got, want) and "-0.0" not in json.dumps(got), got
