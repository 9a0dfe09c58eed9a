"""kto-inspect summary: what a cache holds, computed from its rows (not copied from the manifest).

Counts by label, token lengths of prompt / completion / KL completion, and the reference
log-probs by label: per sequence (Σ over the completion, `ref_logp`), as a mean per token
(`ref_logp / completion length`), and over every stored per-token term (`ref_token_logps`).
Truncated rows are counted, with how many sit exactly at the prompt cap or at max_length;
how prompts were cut (whole earliest turns dropped, or mid-text) and dropped rows are not
visible in a shard, so those numbers come from the manifest.
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import TYPE_CHECKING

from kto.formats import schema as S
from kto.formats.cache import ShardedCache, open_cache
from kto.formats.errors import InputError

from .text import printable, table
from .token_terms import KEEP_MAPPED_BYTES, QUANTILES, STAT_NAMES, TokenTerms, blank_stats, shard_slices, token_stats

if TYPE_CHECKING:
    import pyarrow as pa

LENGTHS = {"prompt": S.PROMPT_IDS, "completion": S.COMPLETION_IDS, "kl_completion": S.KL_COMPLETION_IDS}


def _describe(expr, name: str) -> list:
    """Aggregations named f"{name}:{stat}" for every stat in STAT_NAMES (nulls are skipped)."""
    import polars as pl

    e = expr.drop_nulls()
    aggs = [e.count().cast(pl.Int64).alias(f"{name}:count"), e.mean().alias(f"{name}:mean"), e.min().cast(pl.Float64).alias(f"{name}:min")]
    aggs += [e.quantile(q, "linear").alias(f"{name}:p{round(q * 100)}") for q in QUANTILES]
    return aggs + [e.max().cast(pl.Float64).alias(f"{name}:max")]


def _unpack(row: dict, name: str) -> dict:
    stats = {stat: row[f"{name}:{stat}"] for stat in STAT_NAMES}
    return stats if stats["count"] else blank_stats()


def summarize(cache_dir: str | Path) -> dict:
    """Everything `kto-inspect summary` shows, as plain JSON-able data."""
    cache_dir = Path(cache_dir)
    cache = open_cache(cache_dir)  # raises InputError for a missing dir / manifest (a shard: _first_pass)
    manifest = cache.manifest
    max_length = manifest.content.max_length
    max_prompt = manifest.content.max_prompt_length
    overall, by_label = _aggregates(cache, max_length, max_prompt, cache_dir)
    if bad := overall["not_finite"]:  # as every reader refuses them: a mean of them would print nan
        rows_said = "1 row" if bad == 1 else f"{bad} rows"
        raise InputError(f"{cache_dir}: {rows_said} with a ref_logp or ref_kl_logp that is not finite (NaN or ±inf); run kto-inspect verify, which names each")
    rows = overall["rows"]
    labels = {("desirable" if r[S.LABEL] else "undesirable"): r for r in by_label}
    eval_dir = cache_dir / S.EVAL_DIR
    return {
        "cache": str(cache_dir),
        "split": manifest.content.split,
        "fingerprint": manifest.fingerprint,
        "model": manifest.info.get("model_path"),
        "shards": len(manifest.shards),
        "counts": {"rows": rows, "desirable": overall["desirable"], "undesirable": rows - overall["desirable"]},
        "manifest_counts": vars(manifest.counts),
        "truncated": overall["truncated"],
        "at_prompt_cap": overall["at_prompt_cap"],
        "at_max_length": overall["at_max_length"],
        "dropped": manifest.counts.dropped,
        "max_length": max_length,
        "max_prompt_length": max_prompt,
        "token_logps_stored": manifest.content.store_token_logps,
        "prefix_sharing": manifest.layout.get("prefix_sharing"),
        "lengths": {name: _unpack(overall, name) for name in LENGTHS},
        "ref_logps": {
            label: {part: _unpack(labels[label], part) for part in ("sequence", "mean_per_token", "token", "kl_sequence")}
            for label in ("desirable", "undesirable")
            if label in labels
        },
        "eval_cache": str(eval_dir) if (eval_dir / S.MANIFEST_NAME).is_file() else None,
    }


def _aggregates(cache: ShardedCache, max_length: int, max_prompt: int, cache_dir: Path) -> tuple[dict, list[dict]]:
    """One polars pass over the rows' small columns for the whole cache (counts, caps, length
    statistics) and one per label (reference log-prob statistics) over one small row per cache
    row; the per-token terms are streamed from the memory-mapped shards, never gathered."""
    import polars as pl

    rows, terms, mapped = _first_pass(cache)
    frame = pl.from_arrow(rows, rechunk=False)
    lens = {name: pl.col(name) for name in LENGTHS}
    try:
        overall = frame.select(
            pl.len().alias("rows"),
            pl.col(S.LABEL).sum().cast(pl.Int64).alias("desirable"),
            pl.col(S.TRUNCATED).sum().cast(pl.Int64).alias("truncated"),
            (lens["prompt"] == max_prompt).sum().cast(pl.Int64).alias("at_prompt_cap"),
            ((lens["prompt"] + lens["completion"]) == max_length).sum().cast(pl.Int64).alias("at_max_length"),
            (~pl.col(S.REF_LOGP).is_finite() | ~pl.col(S.REF_KL_LOGP).is_finite()).sum().cast(pl.Int64).alias("not_finite"),
            *(agg for name, e in lens.items() for agg in _describe(e, name)),
        ).row(0, named=True)
        by_label = (
            frame.lazy()
            .group_by(S.LABEL)
            .agg(
                *_describe(pl.col(S.REF_LOGP), "sequence"),
                *_describe(pl.col(S.REF_LOGP) / lens["completion"], "mean_per_token"),
                *_describe(pl.col(S.REF_KL_LOGP), "kl_sequence"),
            )
            .collect()
            .rows(named=True)
        )
    except pl.exceptions.PolarsError as exc:
        raise InputError(f"{cache_dir}: cannot read the shards ({str(exc).splitlines()[0]}); run kto-inspect verify") from exc
    if overall["not_finite"]:  # summarize refuses the cache: no need to read every token
        return overall, by_label
    tokens = token_stats(cache, terms, mapped)
    none = {f"token:{stat}": v for stat, v in blank_stats().items()}  # for a null label (a tampered shard): no terms read
    return overall, [{**row, **tokens.get(row[S.LABEL], none)} for row in by_label]


def _first_pass(cache: ShardedCache) -> tuple[pa.Table, dict[bool, TokenTerms], list[pa.Table] | None]:
    """Each shard opened once (as formats.scan opens them: sha256 or its stamp, schema, rows):
    its small rows kept, its per-token terms fed to pass 1 of their label's statistics. The
    mapped shards are returned for pass 2 while their terms total under KEEP_MAPPED_BYTES
    (opening a shard again costs ~0.3 ms: 0.9 s of 3,000 one-row shards), else None."""
    import pyarrow as pa

    terms = {True: TokenTerms(), False: TokenTerms()}
    tables: list[pa.Table] = []
    mapped: list[pa.Table] | None = []
    mapped_bytes = 0
    for k in range(cache.num_shards):
        cache.check_sha256(k)
        table = cache.open_shard(k)
        tables.append(_small_rows(table))
        for label, values in shard_slices(table):
            terms[label].add(values)
        mapped_bytes += table.column(S.REF_TOKEN_LOGPS).nbytes
        if mapped is not None and mapped_bytes <= KEEP_MAPPED_BYTES:  # the two columns, not the table: less to hold
            mapped.append(table.select([S.LABEL, S.REF_TOKEN_LOGPS]))
        else:
            mapped = None
    return (pa.concat_tables(tables) if tables else _small_rows(S.SHARD_SCHEMA.empty_table())), terms, mapped


def _small_rows(table: pa.Table) -> pa.Table:
    """Label, truncated, the three lengths and the two sequence log-probs of each row: lengths
    from the list offsets, so no token id is read; copied (a few bytes a row), so no shard's
    memory map outlives its turn in the loop."""
    import pyarrow as pa
    import pyarrow.compute as pc

    columns = {
        c: pa.concat_arrays(table.column(c).chunks or [pa.array([], table.schema.field(c).type)]) for c in (S.LABEL, S.TRUNCATED, S.REF_LOGP, S.REF_KL_LOGP)
    }
    # uint32, as polars' list.len() gives: the same arithmetic as reading the lists would.
    columns |= {name: pc.list_value_length(table.column(col)).cast(pa.uint32()) for name, col in LENGTHS.items()}
    return pa.table(columns)


def _pct(part: int, whole: int) -> str:
    return f"{100 * part / whole:.1f}%" if whole else "-"


def render(s: dict) -> str:
    """The readable report of `summarize`'s result."""
    c, n = s["counts"], s["counts"]["rows"]
    out = [
        f"cache        {s['cache']} ({s['split']} split, {s['shards']} shards)",
        f"fingerprint  {s['fingerprint']}",
        f"model        {printable(s['model'])}",
        f"rows         {n}: {c['desirable']} desirable ({_pct(c['desirable'], n)}), {c['undesirable']} undesirable ({_pct(c['undesirable'], n)})",
        f"truncated    {s['truncated']} ({_pct(s['truncated'], n)}); prompt at the cap of {s['max_prompt_length']} tokens: "
        f"{s['at_prompt_cap']}, prompt+completion at max_length {s['max_length']}: {s['at_max_length']}",
        f"dropped      {s['dropped']} (empty completion after tokenization; never written)",
    ]
    mc = s["manifest_counts"]
    out.insert(
        -1,
        f"prompts cut  {mc['prompt_truncated']}: {mc['prompt_cut_by_turns']} by dropping earliest turns, {mc['prompt_cut_mid_text']} mid-text (manifest.json)",
    )
    if mc["represented_tokens"]:  # counted since prefix sharing: a cache made before has none
        how = f"{mc['prefix_tokens_saved']} ({_pct(mc['prefix_tokens_saved'], mc['represented_tokens'])}) saved by prefix sharing"
        out.insert(-1, f"scored       {mc['scored_tokens']} of {mc['represented_tokens']} tokens; {how if s['prefix_sharing'] else 'prefix sharing off'}")
    if (mc["rows"], mc["desirable"], mc["truncated"]) != (n, c["desirable"], s["truncated"]):
        out.append("warning      the rows disagree with manifest.json's counts; run kto-inspect verify")
    out += ["", "token lengths", table(("",) + STAT_NAMES, [[name] + [v[k] for k in STAT_NAMES] for name, v in s["lengths"].items()])]
    out += ["", "reference log-probs (nats)"]
    rows = []
    for label, parts in s["ref_logps"].items():
        for part, stats in parts.items():
            rows.append([f"{label} {part.replace('_', ' ')}"] + [stats[k] for k in STAT_NAMES])
    out.append(table(("",) + STAT_NAMES, rows))
    if not s["token_logps_stored"]:
        out.append("  (per-token terms were not stored: the cache was made with --no-token-logps)")
    if s["eval_cache"]:
        # Quoted: the hint is a command to paste, and a path with a space broke it.
        out += ["", f"eval split   {s['eval_cache']} (kto-inspect summary {shlex.quote(s['eval_cache'])})"]
    return "\n".join(out)


# ---- per-token terms: exact statistics in bounded memory ------------------------------------------
