"""Training-batch collation, old path against new, and training RAM against the cache's size.

    python tools/bench_collate.py collate [--rows 20000]     # time per micro-batch, old vs new
    python tools/bench_collate.py rss [--sizes 2000,50000]    # peak RSS of a short kto-train run

Caches are written straight with the package's shard writer (`formats.shards.write_shard`,
`formats.shards.shard_table`) and a manifest, no model scoring: random token ids of a
realistic length mix (`_bench_common.length_mix`, total length log-uniform in [32, 2048]), each
row's KL completion its partner's completion cut to fit, random reference log-probs and no
per-token terms. The manifest carries the tokenizer and model identity of a tiny random Llama,
so `kto-train` accepts the cache (and, the reference numbers being random, skips the step-0
check: the model is not "the reference").

- `collate`: the same micro-batches of an epoch plan through `old_collate` (the pre-zero-copy
  code, kept verbatim below: `to_pylist`, then Python lists into tensors) and
  `kto.train.data.collate_micro_batch`, interleaved, every batch checked equal; median time per micro-batch.
- `rss`: one `kto-train` process per cache size (tiny model, a few steps): peak anonymous and
  file-backed resident memory, sampled every 50 ms from /proc (file pages are the memory-mapped
  shards and weights: page cache the kernel may drop), and its peak RSS (ru_maxrss, wait4).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _bench_common as C

from kto.formats import schema as S
from kto.formats.cache import ShardedCache, open_cache
from kto.formats.compute.identity import tokenizer_identity
from kto.formats.compute.loading import load_tokenizer
from kto.formats.compute.logprob import TokenBatch
from kto.formats.compute.sources import resolve_source
from kto.formats.manifest import Counts, Manifest, ShardEntry
from kto.formats.shards import FINGERPRINT_TAG, shard_table, write_shard
from kto.train.data import KTOMicroBatch, MicroBatchShape, collate_micro_batch, epoch_plan, row_columns

# --- the old path, verbatim (before zero-copy batches) ---------------------------------------


def old_rows(cache: ShardedCache, indices: list[int]) -> dict[str, list]:
    """Columns of the given global rows, in order, as Python lists (ids as int lists)."""
    indices = np.asarray(indices, dtype=np.int64)
    shard_of = np.searchsorted(cache.starts, indices, side="right") - 1
    parts, order = [], []
    for k in np.unique(shard_of):
        where = np.flatnonzero(shard_of == k)
        parts.append(cache.table(int(k)).take(pa.array(indices[where] - cache.starts[k])))
        order.append(where)
    table = pa.concat_tables(parts).take(pa.array(np.argsort(np.concatenate(order), kind="stable")))
    return {name: table.column(name).to_pylist() for name in S.SHARD_SCHEMA.names}


def old_make_token_batch(prompts, completions, pad_id: int) -> TokenBatch:
    lengths = [len(p) + len(c) for p, c in zip(prompts, completions)]
    width = max(lengths, default=0)
    ids = torch.full((len(lengths), width), pad_id, dtype=torch.long)
    attn = torch.zeros((len(lengths), width), dtype=torch.long)
    score = torch.zeros((len(lengths), width), dtype=torch.bool)
    for row, (p, c) in enumerate(zip(prompts, completions)):
        n = len(p) + len(c)
        ids[row, :n] = torch.as_tensor(list(p) + list(c), dtype=torch.long)
        attn[row, :n] = 1
        score[row, len(p) : n] = True
    return TokenBatch(ids, attn, score)


def old_collate(cache: ShardedCache, indices: np.ndarray, pad_id: int, with_token_logps: bool = False) -> KTOMicroBatch:
    valid = indices >= 0
    real = indices[valid]
    fill = int(real[0]) if len(real) else 0
    rows = old_rows(cache, [int(i) if i >= 0 else fill for i in indices])
    return KTOMicroBatch(
        policy=old_make_token_batch(rows[S.PROMPT_IDS], rows[S.COMPLETION_IDS], pad_id),
        kl=old_make_token_batch(rows[S.PROMPT_IDS], rows[S.KL_COMPLETION_IDS], pad_id),
        columns=row_columns(
            ref_logp=torch.tensor(rows[S.REF_LOGP], dtype=torch.float64),
            ref_kl_logp=torch.tensor(rows[S.REF_KL_LOGP], dtype=torch.float64),
            desirable=torch.tensor(rows[S.LABEL], dtype=torch.bool),
        ),
        valid=torch.as_tensor(valid),
        ref_token_logps=[np.asarray(x, np.float32) if x is not None else None for x in rows[S.REF_TOKEN_LOGPS]] if with_token_logps else None,
    )


def batches_equal(a: KTOMicroBatch, b: KTOMicroBatch) -> bool:
    tensors = lambda x: [
        x.policy.input_ids,
        x.policy.attention_mask,
        x.policy.score_mask,
        x.kl.input_ids,
        x.kl.attention_mask,
        x.kl.score_mask,
        x.ref_logp,
        x.ref_kl_logp,
        x.desirable,
        x.valid,
    ]
    same = all(s.dtype == t.dtype and torch.equal(s, t) for s, t in zip(tensors(a), tensors(b)))
    if (a.ref_token_logps is None) != (b.ref_token_logps is None):
        return False
    for s, t in zip(a.ref_token_logps or [], b.ref_token_logps or []):
        same = same and ((s is None and t is None) or (s is not None and t is not None and np.array_equal(s, t)))
    return same


# --- a synthetic cache ------------------------------------------------------------------------


def write_synthetic_cache(
    out: Path, model_dir: Path, rows: int, *, max_len: int = 2048, rows_per_shard: int = 4096, seed: int = 0, vocab_size: int | None = None
) -> Path:
    """A cache of `rows` rows whose manifest names `model_dir`'s tokenizer and model."""
    source = resolve_source(str(model_dir))
    tok = load_tokenizer(source)
    vocab = vocab_size or len(tok)
    rng = np.random.default_rng(seed)
    mix = C.length_mix(rows, max_len, seed=seed)
    partner = C.kl_partners(rows, seed)
    completions = [rng.integers(C.FIRST_WORD_ID, vocab, r.completion, dtype=np.int32) for r in mix]
    out.mkdir(parents=True, exist_ok=True)
    content = C.synthetic_content(f"tools/bench_collate.py rows={rows} seed={seed}", tokenizer_identity(tok), max_length=max_len, seed=seed)
    tags = {FINGERPRINT_TAG: Manifest(content=content, layout={}, counts=Counts(), shards=[]).fingerprint}  # what readers check
    entries, counts = [], dict(desirable=0, undesirable=0, prompt_tokens=0, completion_tokens=0, kl_completion_tokens=0)
    for k, a in enumerate(range(0, rows, rows_per_shard)):
        idx = range(a, min(rows, a + rows_per_shard))
        values = {
            S.ID: [f"row-{i}" for i in idx],
            S.LABEL: [bool(i % 2) for i in idx],
            S.PROMPT_IDS: [rng.integers(C.FIRST_WORD_ID, vocab, mix[i].prompt, dtype=np.int32) for i in idx],
            S.COMPLETION_IDS: [completions[i] for i in idx],
            S.KL_SOURCE_ID: [f"row-{partner[i]}" for i in idx],
            S.KL_COMPLETION_IDS: [completions[partner[i]][: max_len - mix[i].prompt] for i in idx],
            S.TRUNCATED: [False] * len(idx),
        }
        for label in values[S.LABEL]:
            counts["desirable" if label else "undesirable"] += 1
        for key, column in (("prompt_tokens", S.PROMPT_IDS), ("completion_tokens", S.COMPLETION_IDS), ("kl_completion_tokens", S.KL_COMPLETION_IDS)):
            counts[key] += sum(len(x) for x in values[column])
        values |= {S.REF_LOGP: -rng.uniform(1, 500, len(idx)), S.REF_KL_LOGP: -rng.uniform(1, 500, len(idx))}
        values |= {S.REF_TOKEN_LOGPS: None, S.REF_KL_TOKEN_LOGPS: None}
        name = S.shard_name(k)
        sha = write_shard(out / name, shard_table(values), tags)
        entries.append(ShardEntry(name, len(idx), sha))
    represented = 2 * counts["prompt_tokens"] + counts["completion_tokens"] + counts["kl_completion_tokens"]
    counts = Counts(rows=rows, represented_tokens=represented, scored_tokens=represented, **counts)
    Manifest(content=content, layout={"rows_per_shard": rows_per_shard}, counts=counts, shards=entries).write(out)
    tok.save_pretrained(out / S.TOKENIZER_DIR)
    return out


def tiny_model(work: Path) -> Path:
    out = work / "tiny-model"
    if not (out / "config.json").is_file():
        C.save_model_dir(out, "tiny", torch.float32, torch.device("cpu"))
    return out


# --- the two measurements ---------------------------------------------------------------------


def bench_collate(cache_dir: Path, batch_size: int, batches: int, repeats: int) -> dict:
    cache = open_cache(cache_dir)
    plan = epoch_plan(cache.lengths(), MicroBatchShape(batch_size, 1, 1), seed=0, epoch=0).reshape(-1, batch_size)
    picks = plan[np.linspace(0, len(plan) - 1, batches).astype(int)]
    for k in range(len(cache.manifest.shards)):
        cache.table(k)  # verify every shard up front: hashing is not collation
    times = {"old": [], "new": []}
    paths = {"old": old_collate, "new": collate_micro_batch}
    for _ in range(repeats):
        for idx in picks:
            made = {}
            for name in ("old", "new") if len(times["old"]) % 2 == 0 else ("new", "old"):  # interleaved
                t = time.perf_counter()
                made[name] = paths[name](cache, idx, 0)
                times[name].append(time.perf_counter() - t)
            if not batches_equal(made["old"], made["new"]):
                raise SystemExit(f"old and new collate differ on rows {idx.tolist()}")
    tokens = [int(b.sum()) for b in (cache.lengths()[picks])]
    med = {k: statistics.median(v) for k, v in times.items()}
    return {
        "rows": cache.num_rows,
        "batch_size": batch_size,
        "micro_batches": len(picks),
        "repeats": repeats,
        "mean_tokens_per_micro_batch": statistics.mean(tokens),
        "old_ms": med["old"] * 1e3,
        "new_ms": med["new"] * 1e3,
        "old_over_new": med["old"] / med["new"],
    }


def _rss_kinds(pid: int) -> tuple[int, int]:
    """(RssAnon, RssFile) of a process now, in kB; (0, 0) once it is gone."""
    found = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, rest = line.partition(":")
            if key in ("RssAnon", "RssFile"):
                found[key] = int(rest.split()[0])
    except OSError:
        pass
    return found.get("RssAnon", 0), found.get("RssFile", 0)


def peak_rss_of_train(cache_dir: Path, model_dir: Path, out: Path, steps: int, batch_size: int) -> dict:
    """kto-train in its own process; peak RSS from wait4, and anonymous vs file-backed pages
    (memory-mapped shards and weights) sampled every 50 ms."""
    cmd = [
        sys.executable,
        "-m",
        "kto.train.cli",
        "--cache",
        str(cache_dir),
        "--model",
        str(model_dir),
        "--out",
        str(out),
        "--max-steps",
        str(steps),
        "--batch-size",
        str(batch_size),
        "--log-every",
        "1",
    ]
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    anon = file = 0
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)  # this child's own rusage once it ends
        if pid:
            break
        a, f = _rss_kinds(proc.pid)
        anon, file = max(anon, a), max(file, f)
        time.sleep(0.05)
    seconds = time.perf_counter() - t
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"kto-train failed: {' '.join(cmd)}")
    cache = open_cache(cache_dir)
    shard_bytes = sum((cache_dir / s.name).stat().st_size for s in cache.manifest.shards)
    return {
        "rows": cache.num_rows,
        "shards_mb": shard_bytes / 1e6,
        "steps": steps,
        "peak_anon_mb": anon / 1e3,
        "peak_file_mb": file / 1e3,
        "max_rss_mb": usage.ru_maxrss / 1e3,
        "seconds": seconds,
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=["collate", "rss"])
    p.add_argument("--rows", type=int, default=20000)
    p.add_argument("--sizes", default="2000,50000")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--batches", type=int, default=50, help="micro-batches timed per repeat")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--max-len", type=int, default=2048)
    p.add_argument("--work", type=Path, default=None, help="keep caches here (default: a temp dir)")
    args = p.parse_args(argv)
    print(C.describe(C.versions(torch.device("cpu"))))
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        model = tiny_model(work)
        if args.what == "collate":
            cache = work / f"cache-{args.rows}"
            if not (cache / S.MANIFEST_NAME).is_file():
                write_synthetic_cache(cache, model, args.rows, max_len=args.max_len)
            C.print_table("collation per micro-batch (median)", [bench_collate(cache, args.batch_size, args.batches, args.repeats)])
        else:
            rows = []
            for n in (int(x) for x in args.sizes.split(",")):
                cache = work / f"cache-{n}"
                if not (cache / S.MANIFEST_NAME).is_file():
                    write_synthetic_cache(cache, model, n, max_len=args.max_len)
                rows.append(peak_rss_of_train(cache, model, work / f"run-{n}-{time.time_ns()}", args.steps, args.batch_size))
            C.print_table("kto-train peak RSS by cache size (tiny model)", rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
