"""kto-inspect verify: is this cache exactly what its manifest says, and is it self-consistent?

Always re-hashes every shard. kto-train's ShardVerifier trusts its `.verified.json` stamp (same
size and mtime as when last hashed), which is right for a fast second start but would miss a
shard edited in place with its mtime restored; this command is the one that does not trust it.
It is read-only: it writes no stamp.

Checks, in order (each problem is one line naming the file, row and id):
1. manifest.json reads, its fingerprint matches its content, and its format version is ours;
2. every listed shard exists, its sha256 matches, it opens as an Arrow IPC file with the shard
   schema, holds the listed number of rows, and no unlisted `shard-*.arrow` lies beside it;
3. per row: no nulls in required columns, non-empty prompt and completion, finite log-probs,
   per-token terms (when stored) one per completion token and summing to the sequence value;
4. manifest counts (rows, labels, truncated, token totals) equal the rows';
5. every id appears exactly once, every kl_source_id is an id of the cache, and each row's KL
   completion is the start of its source row's completion;
6. tokenizer/ loads and is the tokenizer the manifest records;
7. eval/ (when present) passes all of the above, and shares no id with the train split.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.ipc as ipc

from kto.formats import schema as S
from kto.formats.errors import InputError
from kto.formats.manifest import Manifest, read_manifest
from kto.formats.shards import sha256_file

MAX_PER_CHECK = 10  # a broken cache could otherwise print one line per row


@dataclass
class Report:
    cache: Path
    problems: list[str] = field(default_factory=list)
    rows: int = 0
    shards: int = 0
    ids: list | None = field(default=None, repr=False)
    """The split's ids, kept for the train/eval overlap check."""

    @property
    def ok(self) -> bool:
        return not self.problems

    def add(self, lines: list[str]) -> None:
        """Record one check's problems, at most MAX_PER_CHECK of them plus a count of the rest."""
        self.problems += lines[:MAX_PER_CHECK]
        if len(lines) > MAX_PER_CHECK:
            self.problems.append(f"… and {len(lines) - MAX_PER_CHECK} more like the line above")


def verify(cache_dir: str | Path, *, check_tokenizer: bool = True) -> list[Report]:
    """Verify the cache and, when present, its eval/ split. One Report per split."""
    cache_dir = Path(cache_dir)
    if not cache_dir.is_dir():
        raise InputError(f"{cache_dir}: no such cache directory")
    reports = [_verify_split(cache_dir, check_tokenizer)]
    eval_dir = cache_dir / S.EVAL_DIR
    if eval_dir.is_dir():
        reports.append(_verify_split(eval_dir, check_tokenizer))
        train_ids, eval_ids = (r.ids for r in reports)
        if train_ids is not None and eval_ids is not None:
            shared = sorted(set(train_ids) & set(eval_ids))
            reports[1].add([f"{eval_dir}: id {i!r} is also in the train split {cache_dir}" for i in shared])
    return reports


def _verify_split(cache_dir: Path, check_tokenizer: bool) -> Report:
    report = Report(cache_dir)
    try:
        manifest = read_manifest(cache_dir)
    except InputError as exc:
        report.add([str(exc)])
        return report
    report.shards = len(manifest.shards)
    tables = _check_shards(cache_dir, manifest, report)
    if tables is None:
        report.add([f"{cache_dir}: row checks skipped: some shards are unreadable"])
        return report
    table = pa.concat_tables([t for _, t in tables]) if tables else S.SHARD_SCHEMA.empty_table()
    report.rows = table.num_rows
    # 'DIR/shard-00001.arrow row 3' for every row (1-based within its shard), for messages.
    where = [f"{cache_dir / name} row {i + 1}" for name, t in tables for i in range(t.num_rows)]
    _check_rows(table, where, report)
    _check_counts(cache_dir, manifest, table, report)
    _check_ids(table, where, report)
    if check_tokenizer:
        _check_tokenizer(cache_dir, manifest, report)
    report.ids = table.column(S.ID).to_pylist()
    return report


def _check_shards(cache_dir: Path, manifest: Manifest, report: Report) -> list[tuple[str, pa.Table]] | None:
    """Hash, open and schema-check every listed shard: [(name, table)], or None when any cannot be read."""
    tables, readable = [], True
    listed = {entry.name for entry in manifest.shards}
    report.add([f"{p}: shard file not listed in the manifest (a polars glob over the cache would read it)"
                for p in sorted(cache_dir.glob(S.SHARD_GLOB)) if p.name not in listed])
    for entry in manifest.shards:
        path = cache_dir / entry.name
        if not path.is_file():
            report.add([f"{path}: listed in the manifest but missing"])
            readable = False
            continue
        actual = sha256_file(path)
        if actual != entry.sha256:
            report.add([f"{path}: sha256 {actual[:16]}… does not match the manifest's {entry.sha256[:16]}…; the shard was modified or is corrupt"])
        try:
            with pa.OSFile(str(path), "rb") as f:
                table = ipc.open_file(f).read_all()
            S.check_schema(table.schema, str(path))
        except (pa.ArrowException, OSError, ValueError) as exc:
            report.add([f"{path}: unreadable shard ({str(exc).splitlines()[0]})"])
            readable = False
            continue
        if table.num_rows != entry.rows:
            report.add([f"{path}: {table.num_rows} rows, the manifest says {entry.rows}"])
        tables.append((entry.name, table.select(S.SHARD_SCHEMA.names).replace_schema_metadata(None)))
    return tables if readable else None


def _lengths(column: pa.ChunkedArray) -> np.ndarray:
    """Per-row list lengths; a null list counts 0 (nulls are reported on their own)."""
    return pc.fill_null(pc.list_value_length(column), 0).to_numpy(zero_copy_only=False)


def _check_rows(table: pa.Table, where: list[str], report: Report) -> None:
    ids = table.column(S.ID).to_pylist()
    at = lambda i: f"{where[i]} (id {ids[i]!r})"  # noqa: E731
    for f in S.SHARD_SCHEMA:
        if not f.nullable:
            nulls = np.flatnonzero(table.column(f.name).is_null().to_numpy(zero_copy_only=False))
            report.add([f"{at(i)}: {f.name} is null" for i in nulls])
    for col, what in ((S.PROMPT_IDS, "prompt"), (S.COMPLETION_IDS, "completion")):
        report.add([f"{at(i)}: empty {what}" for i in np.flatnonzero(_lengths(table.column(col)) == 0)])
    for logp, terms, ids_col in ((S.REF_LOGP, S.REF_TOKEN_LOGPS, S.COMPLETION_IDS), (S.REF_KL_LOGP, S.REF_KL_TOKEN_LOGPS, S.KL_COMPLETION_IDS)):
        values = table.column(logp).to_pylist()
        report.add([f"{at(i)}: {logp} is {v}" for i, v in enumerate(values) if v is not None and not math.isfinite(v)])
        token_lists, n_ids = table.column(terms).to_pylist(), _lengths(table.column(ids_col))
        bad = []
        for i, (total, toks) in enumerate(zip(values, token_lists)):
            if toks is None or total is None:
                continue
            if len(toks) != n_ids[i]:
                bad.append(f"{at(i)}: {len(toks)} {terms} for {n_ids[i]} {ids_col}")
            # The sum was taken in float64 over these very float32 terms; only summation order differs.
            elif abs(math.fsum(toks) - total) > 1e-4 + 1e-6 * abs(total):
                bad.append(f"{at(i)}: {terms} sum to {math.fsum(toks):.6g}, {logp} is {total:.6g}")
        report.add(bad)


def _check_counts(cache_dir: Path, manifest: Manifest, table: pa.Table, report: Report) -> None:
    labels = table.column(S.LABEL).to_numpy(zero_copy_only=False)
    actual = {
        "rows": table.num_rows,
        "desirable": int(np.sum(labels == True)),  # noqa: E712 (nulls are not desirable)
        "undesirable": int(np.sum(labels == False)),  # noqa: E712
        "truncated": int(np.sum(table.column(S.TRUNCATED).to_numpy(zero_copy_only=False) == True)),  # noqa: E712
        "prompt_tokens": int(_lengths(table.column(S.PROMPT_IDS)).sum()),
        "completion_tokens": int(_lengths(table.column(S.COMPLETION_IDS)).sum()),
        "kl_completion_tokens": int(_lengths(table.column(S.KL_COMPLETION_IDS)).sum()),
    }
    listed = sum(e.rows for e in manifest.shards)
    lines = [f"{cache_dir / S.MANIFEST_NAME}: counts.{k} is {getattr(manifest.counts, k)}, the shards hold {v}"
             for k, v in actual.items() if getattr(manifest.counts, k) != v]
    if listed != manifest.counts.rows:
        lines.append(f"{cache_dir / S.MANIFEST_NAME}: its shard entries list {listed} rows, counts.rows is {manifest.counts.rows}")
    report.add(lines)


def _check_ids(table: pa.Table, where: list[str], report: Report) -> None:
    ids = table.column(S.ID).to_pylist()
    first: dict[str, int] = {}
    dupes = []
    for i, row_id in enumerate(ids):
        if row_id is None:
            continue
        if row_id in first:
            dupes.append(f"{where[i]}: id {row_id!r} appears again (first at {where[first[row_id]]})")
        else:
            first[row_id] = i
    report.add(dupes)
    completions = table.column(S.COMPLETION_IDS).to_pylist()
    missing, mismatched = [], []
    for i, (src, kl) in enumerate(zip(table.column(S.KL_SOURCE_ID).to_pylist(), table.column(S.KL_COMPLETION_IDS).to_pylist())):
        if src is None or kl is None:
            continue
        if src not in first:
            missing.append(f"{where[i]} (id {ids[i]!r}): kl_source_id {src!r} is not an id in this cache")
        elif completions[first[src]] is not None and kl != completions[first[src]][: len(kl)]:
            mismatched.append(f"{where[i]} (id {ids[i]!r}): kl_completion_ids are not the start of {src!r}'s completion_ids")
    report.add(missing)
    report.add(mismatched)


_IDENTITIES: dict[tuple, dict] = {}


def _identity_of(tok_dir: Path) -> dict:
    """tokenizer_identity of the tokenizer in `tok_dir`, remembered by the files' exact bytes:
    loading a tokenizer costs far more than hashing its files."""
    from kto.formats.models import ModelSource, load_tokenizer, tokenizer_identity

    key = tuple((p.name, sha256_file(p)) for p in sorted(tok_dir.iterdir()) if p.is_file())
    if key not in _IDENTITIES:
        _IDENTITIES[key] = tokenizer_identity(load_tokenizer(ModelSource(tok_dir), flag="tokenizer"))
    return _IDENTITIES[key]


def _check_tokenizer(cache_dir: Path, manifest: Manifest, report: Report) -> None:
    from kto.formats.models import diff_identity

    tok_dir = cache_dir / S.TOKENIZER_DIR
    if not tok_dir.is_dir():
        report.add([f"{tok_dir}: missing (kto-inspect rows decodes with it)"])
        return
    try:
        identity = _identity_of(tok_dir)
    except InputError as exc:
        report.add([str(exc)])
        return
    differs = diff_identity(manifest.content.get("tokenizer", {}), identity)
    if differs:
        report.add([f"{tok_dir}: differs from the tokenizer the manifest records ({', '.join(differs)})"])
