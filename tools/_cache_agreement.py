"""Do two kto-precompute caches of the same rows agree? The check behind
bench_prefix_sharing's end-to-end mode (prefix-shared against plain): a faster layout that
scored other tokens, or other values, must stop the benchmark rather than give it a ratio."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pyarrow as pa

# A per-token difference above this is not fp32 rounding but a layout error (a mask one token
# off moves log-probs by about 1): kto-train's own step-0 tolerance.
AGREEMENT_LIMIT = 1e-3


def cache_agreement(plain: Path, shared: Path) -> dict:
    """Two caches of the same rows, made with and without prefix sharing: the same rows in the
    same splits, the same ids, labels and truncation flags, every log-prob finite and within
    AGREEMENT_LIMIT per token; returns the largest differences (per token, main and KL side,
    also in ulps of max(1, largest |log p|) as tests/numerics_bounds.py counts them, and of the
    sequence sums). Exits naming the row otherwise."""

    def rows(cache: Path) -> dict:
        shards = sorted(f for f in cache.rglob("shard-*.arrow") if not any(part.startswith(".") for part in f.relative_to(cache).parts))
        if not shards:
            sys.exit(f"{cache}: no shard-*.arrow")
        found: dict = {}
        for shard in shards:
            with pa.memory_map(str(shard)) as source:
                shard_rows = pa.ipc.open_file(source).read_all().to_pylist()
            for row in shard_rows:
                key = (str(shard.parent.relative_to(cache)), row["id"])  # the split folder, then the id
                if key in found:
                    sys.exit(f"{shard}: row {row['id']} appears twice")
                found[key] = row
        return found

    a, b = rows(plain), rows(shared)
    if a.keys() != b.keys():
        sys.exit(f"{plain} and {shared} hold different rows: {sorted(a.keys() ^ b.keys())[:3]}")
    worst = {"main": 0.0, "kl": 0.0, "main_sum": 0.0, "kl_sum": 0.0}
    largest = 0.0
    for (split, key), row in a.items():
        other = b[(split, key)]
        for column in ("label", "truncated", "prompt_ids", "completion_ids", "kl_source_id", "kl_completion_ids"):
            if row[column] != other[column]:
                sys.exit(f"row {key}: {column} differs between {plain} and {shared}")
        for side, column, total in (("main", "ref_token_logps", "ref_logp"), ("kl", "ref_kl_token_logps", "ref_kl_logp")):
            if (row[column] is None) != (other[column] is None) or len(row[column] or ()) != len(other[column] or ()):
                sys.exit(f"row {key}: {column} has other lengths in {plain} and {shared}")
            if row[column] is None:
                continue
            x, y = np.asarray(row[column], dtype=np.float64), np.asarray(other[column], dtype=np.float64)
            if not (np.isfinite(x).all() and np.isfinite(y).all()):
                sys.exit(f"row {key}: {column} is not finite")
            d = float(np.abs(x - y).max(initial=0.0))
            if d > AGREEMENT_LIMIT:
                sys.exit(f"row {key}: {column} differs by {d:.3g} per token (> {AGREEMENT_LIMIT}): not rounding")
            worst[side] = max(worst[side], d)
            worst[f"{side}_sum"] = max(worst[f"{side}_sum"], abs(row[total] - other[total]))
            largest = max(largest, float(np.abs(x).max(initial=0.0)), float(np.abs(y).max(initial=0.0)))
    ulp = float(np.spacing(np.float32(max(1.0, largest))))
    return {
        "rows": len(a),
        "max_abs_token_diff_main": worst["main"],
        "max_abs_token_diff_kl": worst["kl"],
        "max_abs_sum_diff_main_kl": (worst["main_sum"], worst["kl_sum"]),
        "largest_abs_logp": largest,
        "ulps_of_largest_main_kl": (round(worst["main"] / ulp, 1), round(worst["kl"] / ulp, 1)),
    }
