"""kto-inspect verify: is this cache exactly what its manifest says, and is it self-consistent?

Always re-hashes every shard (`open_cache(stamps=False)`). kto-train trusts the `.verified.json` stamp (same
size and mtime as when last hashed), which is right for a fast second start but would miss a
shard edited in place with its mtime restored; this command is the one that does not trust it.
It is read-only: it writes no stamp. A folder without a manifest.json (a cache kto-precompute
is still writing, a run directory) is refused with one line, as summary and rows refuse it:
there is nothing to verify yet, so no check failed.

Checks, in order (each problem is one line naming the file, row and id):
1. manifest.json reads, its fingerprint matches its content, its format version is ours, its
   shard names are plain `shard-N.arrow` names listed once, and its counts are integers
   (formats/manifest.py: every reader refuses these, not only verify);
2. every listed shard exists, its sha256 matches, it opens as an Arrow IPC file with the shard
   schema, it carries this cache's fingerprint tag (a shard copied from another cache, its sha
   patched into the manifest, is caught here), it holds the listed number of rows, and no
   unlisted `shard-*.arrow` lies beside it;
3. per row: no nulls in required columns, non-empty prompt and completion, prompt + completion
   within the manifest's max_length, the values every
   reader refuses (formats/shards.py shard_value_problems: non-finite log-probs, token ids
   outside the tokenizer's vocabulary), per-token terms (when stored) one per completion token
   and summing to the sequence value;
4. manifest counts (rows, labels, truncated, token totals) equal the rows';
5. every id appears exactly once, every kl_source_id is an id of the cache, and each row's KL
   completion is what the truncation rule (precompute/tokenize.py) makes of its source row's
   completion: the source's whole completion cut to max_length − this row's prompt. The source
   row stores its completion cut behind its own prompt, so one of the two is the start of the
   other, and their lengths are the ones the rule implies;
6. tokenizer/ loads and is the tokenizer the manifest records;
7. eval/ (when present) passes all of the above, shares no id with the train split, and was
   scored by the same reference model and tokenizer (what kto-train's --eval-cache checks).

It streams: one shard is open at a time, and what crosses shards is O(rows), never O(tokens):
the id -> first position map, and per row its KL source id, prompt, completion and KL lengths
and a 16-byte digest of its KL completion. A second pass over the shards that are KL sources
compares those digests with the digests of the sources' completion prefixes; a KL completion
longer than its source's stored one is compared in a third pass over its own shard.
"""

from __future__ import annotations

import hashlib
import itertools
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from kto.formats import schema as S
from kto.formats.cache import ShardedCache, check_cache_dir, open_cache
from kto.formats.errors import InputError
from kto.formats.manifest import CacheContent, Manifest, same_model
from kto.formats.shards import FINGERPRINT_TAG, sha256_file, shard_fingerprint, shard_value_problems, term_count_problems, tokenizer_vocab_size

MAX_PER_CHECK = 10  # a broken cache could otherwise print one line per row
COUNTED = ("rows", "desirable", "undesirable", "truncated", "prompt_tokens", "completion_tokens", "kl_completion_tokens")


@dataclass
class Report:
    cache: Path
    problems: list[str] = field(default_factory=list)
    rows: int = 0
    shards: int = 0
    ids: set | None = field(default=None, repr=False)
    """The split's ids, kept for the train/eval overlap check."""

    @property
    def ok(self) -> bool:
        return not self.problems

    def add(self, lines: list[str]) -> None:
        """Record one check's problems, at most MAX_PER_CHECK of them plus a count of the rest.
        A line already recorded is not repeated: an unreadable tokenizer.json fails both the
        tokenizer check and the vocabulary read, and is one problem."""
        lines = [line for line in lines if line not in self.problems]
        self.problems += lines[:MAX_PER_CHECK]
        if len(lines) > MAX_PER_CHECK:
            self.problems.append(f"… and {len(lines) - MAX_PER_CHECK} more like the line above")


@dataclass
class _Seen:
    """What verify keeps across shards: O(rows), no token lists."""

    names: list[str]  # the manifest's shard names, in order
    first: dict[str, int] = field(default_factory=dict)  # id -> shard index << 32 | row
    kl_sources: list[pa.Array] = field(default_factory=list)  # per shard: kl_source_id (copied)
    kl_lengths: list[np.ndarray] = field(default_factory=list)  # per shard: len(kl_completion_ids)
    kl_digests: list[list[bytes]] = field(default_factory=list)  # per shard: digest of kl_completion_ids
    prompt_lengths: list[np.ndarray] = field(default_factory=list)  # per shard: len(prompt_ids)
    counts: Counter = field(default_factory=Counter)


def verify(cache_dir: str | Path, *, check_tokenizer: bool = True) -> list[Report]:
    """Verify the cache and, when present, its eval/ split. One Report per split."""
    cache_dir = Path(cache_dir)
    check_cache_dir(cache_dir)  # missing, a file, or not to be looked at: one line, exit 2
    if not (cache_dir / S.MANIFEST_NAME).is_file():
        # No cache yet (kto-precompute writing it) or none at all (a run directory; a dangling
        # link or a folder named manifest.json, which open_cache calls "no manifest" too):
        # refused as summary and rows refuse it (exit 2, open_cache's line), since no check has
        # failed. A manifest file that is there but unreadable is a problem found, below.
        open_cache(cache_dir, stamps=False, hint=False, hold=False)
    reports = [_verify_split(cache_dir, check_tokenizer)]
    eval_dir = cache_dir / S.EVAL_DIR
    content = _train_content(cache_dir)
    recorded = _recorded_eval_split(content) if content else None
    if not eval_dir.is_dir() and recorded:
        reports[0].add([f"{eval_dir}: missing, though the manifest records {recorded} (kto-precompute wrote those rows there)"])
    if eval_dir.is_dir():
        reports.append(_verify_split(eval_dir, check_tokenizer))
        reports[1].add(_other_reference(cache_dir, eval_dir))
        train_ids, eval_ids = (r.ids for r in reports)
        # --eval-data rows come from other files (refused when they hold the same rows): their
        # FILE:ROW ids differ from the train split's, but an id column may repeat them (ids
        # numbered per file) without naming the same rows.
        if train_ids is not None and eval_ids is not None and not (content and content.eval_inputs):
            shared = sorted(train_ids & eval_ids)
            reports[1].add([f"{eval_dir}: id {i!r} is also in the train split {cache_dir}" for i in shared])
    return reports


def _other_reference(cache_dir: Path, eval_dir: Path) -> list[str]:
    """The line kto-train's --eval-cache check (train/eval_cache.py open_eval_cache) would refuse
    the eval split with: scored by another reference model, or tokenized by another tokenizer,
    than the train split. Its rewards would be measured against another reference. Nothing
    when either manifest is unreadable (its own report says why)."""
    try:
        train, held_out = (open_cache(d, stamps=False, hint=False, hold=False).manifest.content for d in (cache_dir, eval_dir))
    except InputError:
        return []
    differs = lambda a, b: ", ".join(sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))) if isinstance(a, dict) and isinstance(b, dict) else "all"
    lines = []
    if not same_model(held_out.model, train.model):
        lines.append(f"made with another reference model than {cache_dir} (model identity differs in: {differs(held_out.model, train.model)})")
    if held_out.tokenizer != train.tokenizer:
        lines.append(f"made with another tokenizer than {cache_dir} (tokenizer identity differs in: {differs(held_out.tokenizer, train.tokenizer)})")
    return [f"{eval_dir}: {line}; kto-train --eval-cache refuses it" for line in lines]


def _train_content(cache_dir: Path) -> CacheContent | None:
    """The train cache's manifest content; None when unreadable (its own report says why) or
    when `cache_dir` is not a train split."""
    try:
        content = open_cache(cache_dir, stamps=False, hint=False, hold=False).manifest.content  # the manifest only
    except InputError:
        return None
    return content if content.split == "train" else None


def _recorded_eval_split(content: CacheContent) -> str | None:
    """What the train cache's manifest says made an eval split (--eval-fraction F, or
    --eval-data), or None."""
    if content.eval_inputs:
        return f"--eval-data {', '.join(i.get('name', '?') for i in content.eval_inputs)}"
    return f"--eval-fraction {content.eval_fraction:g}" if content.eval_fraction else None


def _verify_split(cache_dir: Path, check_tokenizer: bool) -> Report:
    report = Report(cache_dir)
    try:
        # stamps=False: re-hash every shard, trust and write no `.verified.json`.
        cache = open_cache(cache_dir, stamps=False, hint=False)
    except InputError as exc:
        report.add([str(exc)])
        return report
    manifest = cache.manifest
    report.shards = len(manifest.shards)
    listed = {entry.name for entry in manifest.shards}
    report.add(
        [
            f"{p}: shard file not listed in the manifest (a polars glob over the cache would read it)"
            for p in sorted(cache_dir.glob(S.SHARD_GLOB))
            if p.name not in listed
        ]
    )
    if check_tokenizer:
        _check_tokenizer(cache_dir, manifest, report)
    try:
        vocab_size = tokenizer_vocab_size(cache_dir)
    except InputError as exc:
        report.add([str(exc)])
        vocab_size = None
    seen, readable = _Seen([e.name for e in manifest.shards]), True
    for k, entry in enumerate(manifest.shards):
        table = _open_checked(cache, k, report)
        if table is None:
            readable = False
            continue
        _check_shard_rows(cache_dir / entry.name, table, vocab_size, report)
        _check_main_length(cache_dir / entry.name, table, manifest.content.max_length, report)
        _collect(k, cache_dir / entry.name, table, seen, report)
        del table  # one shard at a time: let its pages go before the next is mapped
    if not readable:
        report.add([f"{cache_dir}: count, id and KL checks skipped: some shards are unreadable"])
        return report
    report.rows = seen.counts["rows"]
    _check_counts(cache_dir, manifest, seen.counts, report)
    _check_kl_sources(cache, seen, manifest.content.max_length, report)
    report.ids = set(seen.first)
    return report


def _open_checked(cache: ShardedCache, k: int, report: Report) -> pa.Table | None:
    """Hash, memory-map and schema-check shard k: its table, or None when it cannot be read."""
    entry, path, manifest = cache.manifest.shards[k], cache.path(k), cache.manifest
    if not path.is_file():
        report.add([f"{path}: listed in the manifest but missing"])
        return None
    try:
        cache.check_sha256(k)
    except InputError as exc:  # reported; the rows are still checked, for the full picture
        report.add([str(exc)])
    try:
        table = cache.map_shard(k)
    except InputError as exc:
        report.add([str(exc)])
        return None
    tag = shard_fingerprint(table)
    if tag != manifest.fingerprint:
        why = f"was made for fingerprint {tag[:16]}…" if tag else f"has no {FINGERPRINT_TAG} tag"
        report.add([f"{path}: {why}, the manifest's is {manifest.fingerprint[:16]}…; the shard is not from this cache"])
    if table.num_rows != entry.rows:
        report.add([f"{path}: {table.num_rows} rows, the manifest says {entry.rows}"])
    return table.select(S.SHARD_SCHEMA.names).replace_schema_metadata(None)


def _lengths(column: pa.ChunkedArray) -> np.ndarray:
    """Per-row list lengths; a null list counts 0 (nulls are reported on their own)."""
    return pc.fill_null(pc.list_value_length(column), 0).to_numpy(zero_copy_only=False)


def _check_shard_rows(path: Path, table: pa.Table, vocab_size: int | None, report: Report) -> None:
    """Per-row checks of one shard, vectorized (no Python loop over tokens)."""
    ids = table.column(S.ID)
    at = lambda i: f"{path} row {i + 1} (id {ids[int(i)].as_py()!r})"
    for f in S.SHARD_SCHEMA:
        if not f.nullable and f.name not in (S.REF_LOGP, S.REF_KL_LOGP):  # those two: shard_value_problems
            nulls = np.flatnonzero(table.column(f.name).is_null().to_numpy(zero_copy_only=False))
            report.add([f"{at(i)}: {f.name} is null" for i in nulls[: MAX_PER_CHECK + 1]])
    for col, what in ((S.PROMPT_IDS, "prompt"), (S.COMPLETION_IDS, "completion")):
        empty = np.flatnonzero(_lengths(table.column(col)) == 0)
        report.add([f"{at(i)}: empty {what}" for i in empty[: MAX_PER_CHECK + 1]])
    report.problems += shard_value_problems(table, str(path), vocab_size)  # already capped per column
    report.problems += term_count_problems(table, str(path))  # kto-train's own check of the same, capped alike
    for logp, terms, ids_col in ((S.REF_LOGP, S.REF_TOKEN_LOGPS, S.COMPLETION_IDS), (S.REF_KL_LOGP, S.REF_KL_TOKEN_LOGPS, S.KL_COMPLETION_IDS)):
        _check_terms(table, logp, terms, ids_col, at, report)


def _check_main_length(path: Path, table: pa.Table, max_length: int, report: Report) -> None:
    """prompt + completion within max_length: precompute never writes a longer main sequence."""
    ids = table.column(S.ID)
    total = _lengths(table.column(S.PROMPT_IDS)) + _lengths(table.column(S.COMPLETION_IDS))
    report.add(
        [
            f"{path} row {i + 1} (id {ids[int(i)].as_py()!r}): prompt + completion is {total[i]} tokens, over max_length {max_length}"
            for i in np.flatnonzero(total > max_length)[: MAX_PER_CHECK + 1]
        ]
    )


def _check_terms(table: pa.Table, logp: str, terms: str, ids_col: str, at, report: Report) -> None:
    """Stored per-token terms, where one per token of `ids_col` (term_count_problems reports the
    others), summing to `logp`."""
    column = table.column(terms).combine_chunks()
    stored = column.is_valid().to_numpy(zero_copy_only=False)
    n_terms, n_ids = _lengths(column), _lengths(table.column(ids_col))
    flat = column.flatten().cast(pa.float64()).to_numpy(zero_copy_only=False)
    parents = pc.list_parent_indices(column).to_numpy()
    sums = np.bincount(parents, weights=flat, minlength=len(column))
    total = pc.fill_null(table.column(logp), np.nan).to_numpy(zero_copy_only=False)
    # The sum was taken in float64 over these very float32 terms; only summation order differs.
    # Non-finite values are shard_value_problems' to report, so they are left out here.
    off = stored & (n_terms == n_ids) & np.isfinite(sums) & np.isfinite(total) & (np.abs(sums - total) > 1e-4 + 1e-6 * np.abs(total))
    report.add([f"{at(i)}: {terms} sum to {sums[i]:.6g}, {logp} is {total[i]:.6g}" for i in np.flatnonzero(off)[: MAX_PER_CHECK + 1]])


def _digests(column: pa.ChunkedArray) -> list[bytes]:
    """16-byte digest of each row's int32 token list (a null list digests as empty)."""
    column = pc.fill_null(column.combine_chunks(), pa.scalar([], column.type))
    offsets = column.offsets.to_numpy()
    values = column.values.to_numpy(zero_copy_only=False)
    return [_digest(values[a:b]) for a, b in itertools.pairwise(offsets)]


def _collect(k: int, path: Path, table: pa.Table, seen: _Seen, report: Report) -> None:
    """Counts, duplicate ids, and what the KL check needs later; nothing of size O(tokens)."""
    labels = table.column(S.LABEL).to_numpy(zero_copy_only=False)
    c = seen.counts
    c["rows"] += table.num_rows
    c["desirable"] += int(np.sum(labels == True))  # noqa: E712 (nulls are not desirable)
    c["undesirable"] += int(np.sum(labels == False))  # noqa: E712
    c["truncated"] += int(np.sum(table.column(S.TRUNCATED).to_numpy(zero_copy_only=False) == True))  # noqa: E712
    for col, key in ((S.PROMPT_IDS, "prompt_tokens"), (S.COMPLETION_IDS, "completion_tokens"), (S.KL_COMPLETION_IDS, "kl_completion_tokens")):
        c[key] += int(_lengths(table.column(col)).sum())
    dupes = []
    for i, row_id in enumerate(table.column(S.ID).to_pylist()):
        if row_id is None:
            continue
        if row_id in seen.first:
            dupes.append(f"{path} row {i + 1}: id {row_id!r} appears again (first at {_where(path.parent, seen, seen.first[row_id])})")
        else:
            seen.first[row_id] = k << 32 | i
    report.add(dupes)
    # Copied (take), so the shard's memory map is not kept alive by these ids.
    seen.kl_sources.append(table.column(S.KL_SOURCE_ID).combine_chunks().take(pa.array(np.arange(table.num_rows))))
    seen.kl_lengths.append(_lengths(table.column(S.KL_COMPLETION_IDS)))
    seen.kl_digests.append(_digests(table.column(S.KL_COMPLETION_IDS)))
    seen.prompt_lengths.append(_lengths(table.column(S.PROMPT_IDS)))


def _where(cache_dir: Path, seen: _Seen, packed: int) -> str:
    return f"{cache_dir / seen.names[packed >> 32]} row {(packed & 0xFFFFFFFF) + 1}"


def _check_counts(cache_dir: Path, manifest: Manifest, actual: Counter, report: Report) -> None:
    report.add(
        [
            f"{cache_dir / S.MANIFEST_NAME}: counts.{k} is {getattr(manifest.counts, k)}, the shards hold {actual[k]}"
            for k in COUNTED
            if getattr(manifest.counts, k) != actual[k]
        ]
    )


def _check_kl_sources(cache: ShardedCache, seen: _Seen, max_length: int, report: Report) -> None:
    """Every kl_source_id is an id here, and each KL completion is what the rule makes of its
    source's completion.

    Row i with stored prompt P_i has room R = max_length − P_i; its source j stores its own
    completion c_j, cut to max_length − P_j behind its own prompt, while kl_i is j's whole
    completion cut to R. So one of kl_i and c_j is the start of the other, len(kl_i) ≤ R and
    len(kl_i) ≥ min(len(c_j), R), with equality when c_j is certainly whole (P_j + len(c_j) <
    max_length). Requests are grouped by the shard that holds their source, and each such shard
    is mapped once more; a KL completion is compared with its source's prefix by digest. A KL
    completion longer than c_j is compared (c_j against its start) in a pass over its own shard.
    """
    missing, wanted = [], {}  # source shard -> [(requesting shard, row, source row)]
    for k, sources in enumerate(seen.kl_sources):
        for i, src in enumerate(sources.to_pylist()):
            if src is None:
                continue
            packed = seen.first.get(src)
            if packed is None:
                missing.append((k, i, f"kl_source_id {src!r} is not an id in this cache"))
            else:
                wanted.setdefault(packed >> 32, []).append((k, i, packed & 0xFFFFFFFF))
    mismatched, longer = [], {}  # longer: requesting shard -> [(row, source, digest of c_j, len(c_j))]
    for s, requests in sorted(wanted.items()):
        offsets, values = _completions(cache, s)
        for k, i, r in requests:
            n, src = int(seen.kl_lengths[k][i]), seen.kl_sources[k][i].as_py()
            start, end = int(offsets[r]), int(offsets[r + 1])
            source_len, room = end - start, max_length - int(seen.prompt_lengths[k][i])
            expected = min(source_len, room)
            source_whole = int(seen.prompt_lengths[s][r]) + source_len < max_length
            if n > room or n < expected or (source_whole and n != expected):
                rule = f"{expected}" if source_whole or expected == room else f"{expected} to {room}"
                mismatched.append(
                    (
                        k,
                        i,
                        f"{n} kl_completion_ids, the rule keeps {rule} of {src!r}'s completion ({source_len} stored) behind this row's prompt (max_length {max_length})",
                    )
                )
            elif n <= source_len:
                if _digest(values[start : start + n]) != seen.kl_digests[k][i]:
                    mismatched.append((k, i, f"kl_completion_ids are not the start of {src!r}'s completion_ids"))
            else:
                longer.setdefault(k, []).append((i, src, _digest(values[start:end]), source_len))
        del offsets, values
    for k, items in sorted(longer.items()):
        kl = cache.map_shard(k).column(S.KL_COMPLETION_IDS).combine_chunks()
        offsets, values = kl.offsets.to_numpy(), kl.values.to_numpy(zero_copy_only=False)
        for i, src, digest, source_len in items:
            if _digest(values[offsets[i] : offsets[i] + source_len]) != digest:
                mismatched.append((k, i, f"{src!r}'s completion_ids are not the start of kl_completion_ids"))
        del kl, offsets, values
    mismatched.sort(key=lambda p: p[:2])
    for problems in (missing, mismatched):
        report.problems += _with_ids(cache, problems[:MAX_PER_CHECK])
        if len(problems) > MAX_PER_CHECK:
            report.problems.append(f"… and {len(problems) - MAX_PER_CHECK} more like the line above")


def _digest(ids: np.ndarray) -> bytes:
    return hashlib.blake2b(ids.tobytes(), digest_size=16).digest()


def _completions(cache: ShardedCache, k: int) -> tuple[np.ndarray, np.ndarray]:
    completions = cache.map_shard(k).column(S.COMPLETION_IDS).combine_chunks()
    return completions.offsets.to_numpy(), completions.values.to_numpy(zero_copy_only=False)


def _with_ids(cache: ShardedCache, problems: list[tuple[int, int, str]]) -> list[str]:
    """'DIR/shard row N (id X): what' for (shard, row, what); ids are not kept across shards, so
    the few shown are read back from their shards."""
    ids = {k: cache.map_shard(k).column(S.ID) for k in sorted({k for k, _, _ in problems})}
    return [f"{cache.path(k)} row {i + 1} (id {ids[k][i].as_py()!r}): {what}" for k, i, what in problems]


_IDENTITIES: dict[tuple, dict] = {}


def _identity_of(tok_dir: Path) -> dict:
    """tokenizer_identity of the tokenizer in `tok_dir`, remembered by the files' exact bytes:
    loading a tokenizer costs far more than hashing its files."""
    from kto.formats.compute.identity import tokenizer_identity
    from kto.formats.compute.loading import load_tokenizer
    from kto.formats.compute.sources import ModelSource

    key = tuple((p.name, sha256_file(p)) for p in sorted(tok_dir.iterdir()) if p.is_file())
    if key not in _IDENTITIES:
        _IDENTITIES[key] = tokenizer_identity(load_tokenizer(ModelSource(tok_dir), flag="tokenizer"))
    return _IDENTITIES[key]


def _check_tokenizer(cache_dir: Path, manifest: Manifest, report: Report) -> None:
    from kto.formats.compute.identity import diff_identity

    tok_dir = cache_dir / S.TOKENIZER_DIR
    if not tok_dir.is_dir():
        report.add([f"{tok_dir}: missing (kto-inspect rows decodes with it)"])
        return
    try:
        identity = _identity_of(tok_dir)
    except InputError as exc:
        report.add([str(exc)])
        return
    differs = diff_identity(manifest.content.saved_tokenizer, identity)
    if differs:
        report.add([f"{tok_dir}: differs from the tokenizer the manifest records ({', '.join(differs)})"])
