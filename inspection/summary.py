"""kto-inspect summary: what a cache holds, computed from its rows (not copied from the manifest).

Counts by label, token lengths of prompt / completion / KL completion, and the reference
log-probs by label: per sequence (Σ over the completion, `ref_logp`), as a mean per token
(`ref_logp / completion length`), and over every stored per-token term (`ref_token_logps`).
Truncated rows are counted, with how many sit exactly at the prompt cap or at max_length;
repeated rows too: rows holding an earlier row's prompt and completion tokens (as kept), with its
label (a repeat weighs twice in the loss) or the other (one rated both ways: their pulls cancel);
how prompts were cut (whole earliest turns dropped, or mid-text) and dropped rows are not
visible in a shard, so those numbers come from the manifest.

"made from" is the manifest's record of what made the cache: the input files (name, sha256, and
the path `info` recorded when it is absolute) or datasets (name, revision), the settings that
shape the rows, the versions that made it, and for an eval split the cache it belongs to.
"""

from __future__ import annotations

import dataclasses
import json
import shlex
from pathlib import Path
from typing import TYPE_CHECKING

from kto.formats import schema as S
from kto.formats.cache import ShardedCache, open_cache
from kto.formats.errors import InputError
from kto.formats.manifest import Manifest

from .text import num, printable, table
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
        "repeats": {k: overall[k] for k in REPEAT_KEYS},
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
        "made_from": made_from(manifest, cache_dir),
    }


REPEAT_KEYS = ("repeated_rows", "both_label_pairs", "both_label_rows")
_KEYS = ("prompt_key", "completion_key")  # per-row hashes of the token lists (_small_rows)


def _repeats(frame) -> dict:
    """Rows repeating an earlier row's prompt and completion (the keys: two 64-bit hashes) with
    its label; (prompt, completion) pairs held with both labels, and their rows."""
    import polars as pl

    n, d = pl.col("n"), pl.col("d")
    both = (d > 0) & (d < n)
    return (
        frame.lazy()
        .group_by(*_KEYS)
        .agg(pl.len().alias("n"), pl.col(S.LABEL).sum().cast(pl.Int64).alias("d"))
        .select(
            ((d - 1).clip(lower_bound=0) + (n - d - 1).clip(lower_bound=0)).sum().cast(pl.Int64).alias("repeated_rows"),
            both.sum().cast(pl.Int64).alias("both_label_pairs"),
            n.filter(both).sum().cast(pl.Int64).alias("both_label_rows"),
        )
        .collect()
        .row(0, named=True)
    )


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
        ).row(0, named=True) | _repeats(frame)
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
    """Label, truncated, the three lengths, the two sequence log-probs and a hash of the prompt's
    and of the completion's token ids of each row: lengths from the list offsets; copied (a few
    bytes a row), so no shard's memory map outlives its turn in the loop."""
    import polars as pl
    import pyarrow as pa
    import pyarrow.compute as pc

    columns = {
        c: pa.concat_arrays(table.column(c).chunks or [pa.array([], table.schema.field(c).type)]) for c in (S.LABEL, S.TRUNCATED, S.REF_LOGP, S.REF_KL_LOGP)
    }
    # uint32, as polars' list.len() gives: the same arithmetic as reading the lists would.
    columns |= {name: pc.list_value_length(table.column(col)).cast(pa.uint32()) for name, col in LENGTHS.items()}
    for key, col in zip(_KEYS, (S.PROMPT_IDS, S.COMPLETION_IDS)):
        ids = pl.from_arrow(pa.concat_arrays(table.column(col).chunks or [pa.array([], table.schema.field(col).type)]))
        columns[key] = ids.hash(seed=0).to_arrow()
    return pa.table(columns)


def _pct(part: int, whole: int) -> str:
    return f"{100 * part / whole:.1f}%" if whole else "-"


def _repeats_text(r: dict) -> str:
    if not (r["repeated_rows"] or r["both_label_pairs"]):
        return "none (no two rows hold the same prompt and completion tokens)"
    rows, pairs = r["repeated_rows"], r["both_label_pairs"]
    same = f"{rows} {'row repeats' if rows == 1 else 'rows repeat'} an earlier row's prompt, completion and label (each weighs once more in the loss)"
    both = (
        f"{pairs} prompt+completion {'pair is' if pairs == 1 else 'pairs are'} held with both labels ({r['both_label_rows']} rows, pulling against each other)"
    )
    return "; ".join(part for part, n in ((same, r["repeated_rows"]), (both, r["both_label_pairs"])) if n)


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
    out.append(f"repeats      {_repeats_text(s['repeats'])}")
    if (mc["rows"], mc["desirable"], mc["truncated"]) != (n, c["desirable"], s["truncated"]):
        out.append("warning      the rows disagree with manifest.json's counts; run kto-inspect verify")
    out += ["", "made from", *made_from_lines(s["made_from"])]
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


# ---- made from: what the manifest records of the inputs, settings and versions --------------------

SHORT_HASH = 12  # hex digits of a sha256 or a revision in the text (the JSON has them whole)
SHOWN_INPUTS = 5  # input lines in the text; the rest are counted
# `info` keys (information only, never fingerprinted) read here; any may be missing (older caches).
INFO_VERSIONS = {"kto": "kto_version", "transformers": "transformers", "torch": "torch"}


def made_from(manifest: Manifest, cache_dir: Path) -> dict:
    """The "made from" part of `summarize`: every value is the manifest's (none is guessed)."""
    content, info = manifest.content, manifest.info if isinstance(manifest.info, dict) else {}
    # An --eval-data eval split's rows come from its own inputs (CacheContent.row_inputs), whose
    # paths input_paths() gives as it gives --data's for the other caches.
    rows_from_eval_inputs = content.split == "eval" and bool(content.eval_inputs)
    out: dict = {"inputs": _with_paths(content.row_inputs, manifest.input_paths())}
    if content.eval_inputs and not rows_from_eval_inputs:
        out["eval_inputs"] = _with_paths(content.eval_inputs, manifest.eval_input_paths())
    settings = {
        "max_length": content.max_length,
        "max_prompt_length": content.max_prompt_length,
        "eval_fraction": content.eval_fraction,
        "seed": content.seed,
        "dtype": content.dtype,
        "attn_implementation": content.attn_implementation,
        "prefix_sharing": manifest.layout.get("prefix_sharing"),
        "store_token_logps": content.store_token_logps,
        "chat_template": (
            {"source": "--chat-template", "sha256": content.chat_template}
            if content.chat_template is not None
            else {"source": "model", "sha256": content.tokenizer.get("chat_template") if isinstance(content.tokenizer, dict) else None}
        ),
    }
    if content.chat_template_kwargs is not None:
        settings["chat_template_kwargs"] = content.chat_template_kwargs
    if isinstance(content.max_samples, dict):
        settings["max_samples"] = content.max_samples.get("rows_per_input")
    out["settings"] = settings
    out["versions"] = {name: info[key] for name, key in INFO_VERSIONS.items() if isinstance(info.get(key), str)}
    out["device"] = info.get("device") if isinstance(info.get("device"), str) else None
    out["parent"] = _parent(manifest, cache_dir)
    return out


def _with_paths(inputs: tuple | list, paths: list) -> list:
    """Each input identity as the manifest has it, with `path` where one is known
    (Manifest.input_paths, in the inputs' order; [] for inputs whose paths are not recorded)."""
    out = []
    for identity, path in zip(inputs, paths or [None] * len(inputs)):
        if not isinstance(identity, dict):  # not an identity records.input_identity writes: shown as it is
            out.append(identity)
        else:
            out.append({**identity, "path": path} if path else dict(identity))
    return out


def _parent(manifest: Manifest, cache_dir: Path) -> dict | None:
    """For CACHE/eval: CACHE, when its manifest is of the same run (equal content but the split)."""
    if manifest.content.split != "eval" or cache_dir.name != S.EVAL_DIR:
        return None
    try:
        parent = open_cache(cache_dir.parent, stamps=False, hold=False).manifest  # its manifest only: no shard held
    except InputError:
        return None
    if parent.content.split != "train" or dataclasses.replace(parent.content, split="eval") != manifest.content:
        return None
    return {"cache": str(cache_dir.parent), "fingerprint": parent.fingerprint}


def _input_line(entry: object) -> str:
    """One input: a file or a save_to_disk folder by its sha256, a hub dataset by its revision."""
    if not isinstance(entry, dict):
        return printable(json.dumps(entry))
    name = printable(entry.get("name"))
    if isinstance(entry.get("revision"), str):
        ident = f"revision {printable(entry['revision'][:SHORT_HASH])}"
    else:
        ident = f"sha256 {printable(str(entry.get('sha256'))[:SHORT_HASH])}"
    path = f"  {printable(entry['path'])}" if entry.get("path") else ""
    return f"{name}  {ident}{path}"


def made_from_lines(m: dict) -> list[str]:
    """The few lines of the text report's "made from" section."""
    label = "  {:<11}".format
    lines = []
    if m["parent"]:
        p = m["parent"]
        lines.append(label("eval of") + f"{printable(p['cache'])} (fingerprint {p['fingerprint'][:SHORT_HASH]}; the same inputs and settings)")
    for what, key in (("data", "inputs"), ("held out", "eval_inputs")):
        entries = m.get(key) or []
        shown = [_input_line(e) for e in entries[:SHOWN_INPUTS]]
        if len(entries) > SHOWN_INPUTS:
            shown.append(f"… and {len(entries) - SHOWN_INPUTS} more inputs (--json lists them)")
        lines += [label(what if k == 0 else "") + text for k, text in enumerate(shown)]
    s = m["settings"]
    sharing = {True: "on", False: "off"}.get(s["prefix_sharing"], "not recorded")
    lines.append(
        label("settings") + f"max_length {s['max_length']}, max_prompt_length {s['max_prompt_length']}, eval_fraction {num(s['eval_fraction'])}, "
        f"seed {s['seed']}, dtype {printable(s['dtype'])}, attention {printable(s['attn_implementation'])}, prefix sharing {sharing}"
    )
    lines.append(label("template") + _template_text(s))
    if s.get("max_samples") is not None:
        lines.append(label("sampled") + f"at most {s['max_samples']} rows per input (--max-samples)")
    if versions := m["versions"]:
        device = f", on {printable(m['device'])}" if m["device"] else ""
        lines.append(label("made with") + ", ".join(f"{name} {printable(v)}" for name, v in versions.items()) + device)
    return lines


def _template_text(settings: dict) -> str:
    """The chat template by its sha256 (the model tokenizer's own or --chat-template's), and its kwargs."""
    t = settings["chat_template"]
    short = printable(str(t.get("sha256"))[:SHORT_HASH])
    if t["source"] != "model":
        said = f"--chat-template (sha256 {short})"
    elif t.get("sha256"):
        said = f"the model's own (sha256 {short})"
    else:
        said = "none (the model's tokenizer has no chat template)"
    if (kwargs := settings.get("chat_template_kwargs")) is not None:
        said += f"; kwargs {printable(json.dumps(kwargs, ensure_ascii=False))}"
    return said


# ---- per-token terms: exact statistics in bounded memory ------------------------------------------
