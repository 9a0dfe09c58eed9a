"""Peak memory and time of `kto-inspect verify` on caches of 2,000 and 50,000 rows (issue 11).

Does verify's memory grow with the cache? The caches are written directly with the shard writer
and a manifest (no model: reference log-probs are random, per-token terms summing exactly to
the stored sums), with realistic lengths: tools/_bench_common.length_mix up to 2,048 tokens
(mean ≈ 485 per row), a KL completion per row from a seeded derangement, per-token log-probs
stored, 4,096 rows per shard (kto-precompute's default), and a 49,152-word tokenizer/.

Each verify runs in a fresh process, so that one run's freed memory cannot hide the next one's
peak. It reports:
- `VmHWM`: the peak resident set, the number `ru_maxrss` and most tools show;
- the peak of anonymous memory (RssAnon, sampled every 5 ms): what the process allocated, as
  opposed to memory-mapped shard pages (RssFile), which the page cache can drop at any time;
- both minus the process's footprint before verify starts.
verify's tokenizer check loads CACHE/tokenizer once, whatever the rows; the child does that
first (timed and shown apart), then resets the peak (/proc/self/clear_refs), so the figures
are those of the streaming over the shards.

`--impl NAME=DIR` adds an implementation to compare, DIR being a PYTHONPATH under which `kto`
is importable (e.g. a checkout of an older commit, as docs/benchmarks.md did); the variants run
interleaved, `--repeats` times each, on the same caches.

    python tools/bench_verify.py --rows 2000 50000 --impl old=/tmp/old-pkg --out /tmp/bench-verify
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parent))
if TYPE_CHECKING:
    from kto.formats import schema as S

from _bench_common import build_tokenizer, kl_partners, length_mix, synthetic_content

MAX_LEN, ROWS_PER_SHARD, VOCAB = 2048, 4096, 49152

CHILD = r"""
import json, sys, threading, time
from pathlib import Path

def status():
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
            out[key] = int(value.split()[0]) * 1024
    return out

import gc
from kto.inspection import verify as V
# The tokenizer check loads the tokenizer once (remembered by its files' bytes): a cost that does
# not depend on the rows. Paid and measured here, then the peak is reset, so what follows is the
# streaming over the shards (plus re-hashing the tokenizer files).
start = time.perf_counter()
V._identity_of(Path(sys.argv[1]) / "tokenizer")
tokenizer_seconds = time.perf_counter() - start
tokenizer_hwm = status()["VmHWM"]
gc.collect()
Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
verify = V.verify
before = status()
peak_anon = [before["RssAnon"]]
done = threading.Event()
def sample():
    while not done.is_set():
        peak_anon[0] = max(peak_anon[0], status()["RssAnon"])
        time.sleep(0.005)
threading.Thread(target=sample, daemon=True).start()
start = time.perf_counter()
reports = verify(sys.argv[1])
seconds = time.perf_counter() - start
done.set()
after = status()
peak_anon[0] = max(peak_anon[0], after["RssAnon"])
print(json.dumps({"seconds": seconds, "tokenizer_seconds": tokenizer_seconds, "tokenizer_hwm": tokenizer_hwm, "rss_before": before["VmRSS"], "hwm": after["VmHWM"],
                  "anon_before": before["RssAnon"], "anon_peak": peak_anon[0],
                  "rows": sum(r.rows for r in reports), "problems": sum(len(r.problems) for r in reports),
                  "first_problem": next((p for r in reports for p in r.problems), None)}))
"""


def write_cache(out: Path, rows: int, seed: int = 0) -> Path:
    """A finished cache of `rows` rows: shards, manifest and tokenizer/, made without a model."""
    from kto.formats import schema as S
    from kto.formats.compute.identity import tokenizer_identity
    from kto.formats.compute.loading import load_tokenizer
    from kto.formats.compute.sources import ModelSource
    from kto.formats.manifest import Counts, Manifest, ShardEntry
    from kto.formats.shards import FINGERPRINT_TAG, write_shard

    if (out / S.MANIFEST_NAME).is_file():
        return out
    out.mkdir(parents=True, exist_ok=True)
    build_tokenizer(VOCAB).save_pretrained(out / S.TOKENIZER_DIR)
    tok = load_tokenizer(ModelSource(out / S.TOKENIZER_DIR), flag="tokenizer")  # as verify will load it
    content = synthetic_content(f"bench_verify rows={rows} seed={seed}", tokenizer_identity(tok), max_length=MAX_LEN, seed=seed)
    manifest = Manifest(content=content, layout={}, counts=Counts(), shards=[])
    tags = {FINGERPRINT_TAG: manifest.fingerprint}
    rng = np.random.default_rng(seed)
    mix = length_mix(rows, MAX_LEN, seed)
    p_len = np.array([r.prompt for r in mix], np.int64)
    c_len = np.array([r.completion for r in mix], np.int64)
    c_off = np.concatenate([[0], np.cumsum(c_len)])
    completions = rng.integers(7, VOCAB, c_off[-1], dtype=np.int32)
    partner = np.array(kl_partners(rows, seed))
    kl_len = np.minimum(c_len[partner], MAX_LEN - p_len)
    shards, totals = [], {"prompt_tokens": 0, "completion_tokens": 0, "kl_completion_tokens": 0, "desirable": 0}
    for k, a in enumerate(range(0, rows, ROWS_PER_SHARD)):
        idx = np.arange(a, min(rows, a + ROWS_PER_SHARD))
        table = _shard_table(idx, p_len, c_len, c_off, completions, partner, kl_len, rng)
        shards.append(ShardEntry(S.shard_name(k), len(idx), write_shard(out / S.shard_name(k), table, tags)))
        totals["prompt_tokens"] += int(p_len[idx].sum())
        totals["completion_tokens"] += int(c_len[idx].sum())
        totals["kl_completion_tokens"] += int(kl_len[idx].sum())
        totals["desirable"] += int(np.sum(idx % 2 == 0))
    represented = 2 * totals["prompt_tokens"] + totals["completion_tokens"] + totals["kl_completion_tokens"]
    counts = Counts(rows=rows, undesirable=rows - totals["desirable"], represented_tokens=represented, scored_tokens=represented, **totals)
    Manifest(content=content, layout={"rows_per_shard": ROWS_PER_SHARD}, counts=counts, shards=shards).write(out)
    return out


def _lists(lengths: np.ndarray, values: np.ndarray) -> S.Ragged:
    from kto.formats import schema as S

    return S.Ragged(values, np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64))


def _terms(lengths: np.ndarray, rng) -> tuple[S.Ragged, np.ndarray]:
    """Per-token log-probs (float32) and their float64 sums, as kto-precompute stores them."""
    values = -rng.exponential(2.0, int(lengths.sum())).astype(np.float32)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    sums = np.add.reduceat(values.astype(np.float64), starts) if len(values) else np.zeros(0)
    return _lists(lengths, values), np.where(lengths > 0, sums, 0.0)


def _shard_table(idx, p_len, c_len, c_off, completions, partner, kl_len, rng) -> pa.Table:
    from kto.formats import schema as S
    from kto.formats.shards import shard_table

    ids = [f"data.jsonl:{i + 1}" for i in idx]
    completion = np.concatenate([completions[c_off[i] : c_off[i + 1]] for i in idx])
    kl = np.concatenate([completions[c_off[partner[i]] : c_off[partner[i]] + kl_len[i]] for i in idx])
    prompt = rng.integers(7, VOCAB, int(p_len[idx].sum()), dtype=np.int32)
    terms, sums = _terms(c_len[idx], rng)
    kl_terms, kl_sums = _terms(kl_len[idx], rng)
    return shard_table(
        {
            S.ID: ids,
            S.LABEL: idx % 2 == 0,
            S.PROMPT_IDS: _lists(p_len[idx], prompt),
            S.COMPLETION_IDS: _lists(c_len[idx], completion),
            S.REF_LOGP: sums,
            S.REF_TOKEN_LOGPS: terms,
            S.KL_SOURCE_ID: [f"data.jsonl:{partner[i] + 1}" for i in idx],
            S.KL_COMPLETION_IDS: _lists(kl_len[idx], kl),
            S.REF_KL_LOGP: kl_sums,
            S.REF_KL_TOKEN_LOGPS: kl_terms,
        },
        fill_missing=True,  # truncated: False
    )


def measure(pythonpath: str, cache: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": pythonpath}
    proc = subprocess.run([sys.executable, "-c", CHILD, str(cache)], env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"verify of {cache} under {pythonpath} failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, nargs="+", default=[2000, 50000])
    ap.add_argument("--out", type=Path, default=Path("/tmp/bench-verify"), help="Where the caches are written (reused).")
    ap.add_argument("--impl", action="append", default=[], help="NAME=PYTHONPATH of another implementation to compare.")
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    impls = [("this", os.environ.get("PYTHONPATH", ""))] + [tuple(x.split("=", 1)) for x in args.impl]
    caches = {}
    for rows in args.rows:
        start = time.perf_counter()
        caches[rows] = write_cache(args.out / f"cache-{rows}", rows)
        size = sum(p.stat().st_size for p in caches[rows].glob("shard-*.arrow"))
        print(f"cache {rows} rows: {size / 1e6:.0f} MB of shards ({time.perf_counter() - start:.0f} s to write)", flush=True)
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}")
    results: dict[tuple, list] = {}
    for _ in range(args.repeats):
        for rows, cache in caches.items():
            for name, path in impls:  # interleaved: the variants share the machine's load
                results.setdefault((rows, name), []).append(measure(path, cache))
    print(
        f"{'rows':>7} {'impl':>6} {'seconds':>8} {'peak RSS MB':>12} {'RSS added MB':>13} {'peak anon MB':>13} "
        f"{'anon added MB':>14} {'tokenizer s / peak MB':>22} problems"
    )
    for (rows, name), runs in results.items():
        r = min(runs, key=lambda x: x["hwm"])
        sec = float(np.median([x["seconds"] for x in runs]))
        tok = f"{np.median([x['tokenizer_seconds'] for x in runs]):.1f} / {r['tokenizer_hwm'] / 1e6:.0f}"
        print(
            f"{rows:>7} {name:>6} {sec:>8.1f} {r['hwm'] / 1e6:>12.0f} {(r['hwm'] - r['rss_before']) / 1e6:>13.0f} "
            f"{r['anon_peak'] / 1e6:>13.0f} {(r['anon_peak'] - r['anon_before']) / 1e6:>14.0f} {tok:>22} {r['problems']}"
            + (f"  ({r['first_problem']})" if r["problems"] else "")
        )


if __name__ == "__main__":
    main()
