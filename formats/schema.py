"""The shard schema: column names and Arrow types. Every reader and writer goes through here.

One shard row is one example, with its mismatched KL partner already attached. Rows are stored
in the KL pairing's cycle order: row k's `kl_source_id` is normally row k+1's `id` (the last
row's is row 0's), so that kto-train can put a row and its partner in the same step.

The row is declared once, in `COLUMNS`: each column's name, Arrow type, the phase of
kto-precompute that fills it (`Phase`) and whether kto-train reads it. The shard schema, the
shard writer (shards.shard_table), the cache reader's gathers, kto-train's collation
(train/data.py) and the tests' expected schema all come from it; docs/design.md ("Adding a
column") walks through adding one.

When FORMAT_VERSION must change: when a cache written after a change would be refused or read
wrongly by the kto before it, or a cache written before would be read wrongly after it. That is:
- the shard schema: a column added, removed, renamed or retyped, or what a column or the order
  of rows means;
- manifest.json: a key readers need (in `counts`, the shard entries, `layout` keys training reads,
  or a `content` key every cache must carry) added, removed or changed in meaning. `Counts` and
  `CacheContent` refuse keys they do not know, so a new one there is a new version;
- what a stored number means (which positions a log-prob sums, its precision) when nothing in
  `content` records it. A rule that `content` does record (`truncation`, `dtype`, …) changes the
  fingerprint instead: precompute then refuses to resume the old cache, and it stays readable.
Not a new version: an optional `content` key written only when set (manifest.py CacheContent), an `info`
entry, a `layout` entry only precompute reads, a new file beside the shards.

Every reader refuses another version, older or newer, with one line naming both
(manifest.read_manifest, before anything else is read). There is no migration: re-run
kto-precompute.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import pyarrow as pa

# When it must change: see the module docstring. History:
# 1: the first format.
# 2: rows stored in KL-cycle order (row k's partner is normally row k+1, the last row's row 0) and
#    prompts cut only when a row's longer sequence does not fit. Version-1 caches are refused.
# 3: a row's own sequence is cut only by its own length (its KL partner no longer cuts its
#    prompt), conversations are cut at turn boundaries, a KL completion may be longer than its
#    source row's stored completion (which was cut behind the source's own prompt), and the
#    manifest counts prompts cut by turns and mid-text. Version-2 caches are refused.
FORMAT_VERSION = 3

ID = "id"
LABEL = "label"
PROMPT_IDS = "prompt_ids"
COMPLETION_IDS = "completion_ids"
REF_LOGP = "ref_logp"
REF_TOKEN_LOGPS = "ref_token_logps"
KL_SOURCE_ID = "kl_source_id"
KL_COMPLETION_IDS = "kl_completion_ids"
REF_KL_LOGP = "ref_kl_logp"
REF_KL_TOKEN_LOGPS = "ref_kl_token_logps"
TRUNCATED = "truncated"


class Phase(enum.Enum):
    """The step of kto-precompute that fills a column."""

    STAGE = "stage"
    """At tokenization (precompute/tokenize.py): the value is an attribute of the tokenized row,
    or of its Example, of the column's name, staged with the row (precompute/staging.py)."""
    PAIRING = "pairing"
    """Once the row's KL partner is known (precompute/pairing.py), where completions are cut."""
    SCORE = "score"
    """By the reference model (precompute/score.py)."""


@dataclass(frozen=True)
class Column:
    """One shard column. `trained`: kto-train collates it into every micro-batch (a list column
    of token ids into the policy or KL TokenBatch; a number or bool into `KTOMicroBatch.columns`
    as a [B] tensor)."""

    name: str
    type: pa.DataType
    phase: Phase
    trained: bool
    doc: str
    nullable: bool = False

    @property
    def is_list(self) -> bool:
        return pa.types.is_list(self.type)

    @property
    def is_string(self) -> bool:
        return pa.types.is_string(self.type)

    def field(self) -> pa.Field:
        return pa.field(self.name, self.type, nullable=self.nullable)


_I32, _F32 = pa.list_(pa.int32()), pa.list_(pa.float32())
COLUMNS: tuple[Column, ...] = (
    Column(ID, pa.string(), Phase.STAGE, False, "stable row id (input `id` column, or `file:row`)"),
    Column(LABEL, pa.bool_(), Phase.STAGE, True, "true = desirable"),
    Column(PROMPT_IDS, _I32, Phase.STAGE, True, "prompt tokens (cut only if the row's own sequence is too long)"),
    Column(COMPLETION_IDS, _I32, Phase.PAIRING, True, "completion tokens (truncated from the right)"),
    Column(REF_LOGP, pa.float64(), Phase.SCORE, True, "Σ over completion tokens of log πref(y_t | x, y_<t)"),
    Column(REF_TOKEN_LOGPS, _F32, Phase.SCORE, False, "the per-token terms of that sum (null when not stored; the step-0 check reads them)", True),
    Column(KL_SOURCE_ID, pa.string(), Phase.PAIRING, False, "id of the row whose completion forms the KL sequence"),
    Column(KL_COMPLETION_IDS, _I32, Phase.PAIRING, True, "that row's whole completion, cut to max_length − own prompt"),
    Column(REF_KL_LOGP, pa.float64(), Phase.SCORE, True, "Σ log πref(y'_t | x, y'_<t) over kl_completion_ids"),
    Column(REF_KL_TOKEN_LOGPS, _F32, Phase.SCORE, False, "per-token terms (null when not stored)", True),
    Column(TRUNCATED, pa.bool_(), Phase.PAIRING, False, "prompt or completion was cut to fit the length limits"),
)


def shard_schema(columns: tuple[Column, ...] | None = None) -> pa.Schema:
    """The Arrow schema of `columns` (the declared ones by default)."""
    return pa.schema([c.field() for c in (COLUMNS if columns is None else columns)])


def declared(name: str) -> Column:
    """The declared column `name` (KeyError when there is none)."""
    for c in COLUMNS:
        if c.name == name:
            return c
    raise KeyError(name)


def columns_of(phase: Phase) -> tuple[Column, ...]:
    """The declared columns `phase` fills, in shard order."""
    return tuple(c for c in COLUMNS if c.phase is phase)


# Derived from COLUMNS once; a temporary declaration (tests) replaces both together.
SHARD_SCHEMA = shard_schema()

SHARD_GLOB = "shard-*.arrow"
MANIFEST_NAME = "manifest.json"
TOKENIZER_DIR = "tokenizer"
EVAL_DIR = "eval"


def shard_name(index: int) -> str:
    return f"shard-{index:05d}.arrow"


def check_schema(schema: pa.Schema, where: str) -> None:
    """Raise ValueError naming `where` unless `schema` has exactly the shard columns: the same
    names, in the same order, with the same types. An extra column is not harmless: a shard
    carrying one (its sha256 patched into the manifest) passed as "schema agrees", and a polars
    scan of the cache then fails or shows the column for that shard only."""
    names, expected = schema.names, SHARD_SCHEMA.names
    for name in expected:
        if name not in names:
            raise ValueError(f"{where}: missing column {name!r}")
    extra = [n for n in names if n not in expected]
    if extra:
        raise ValueError(f"{where}: extra column(s) {', '.join(map(repr, extra))}; a shard has exactly the {len(expected)} columns of the shard schema")
    if names != expected:  # same set, so a repeated name or another order
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"{where}: column(s) {', '.join(map(repr, repeated))} appear more than once")
        raise ValueError(f"{where}: columns in the order {', '.join(names)}; the shard schema's is {', '.join(expected)}")
    for field in SHARD_SCHEMA:
        actual = schema.field(field.name).type
        if actual != field.type:
            raise ValueError(f"{where}: column {field.name!r} has type {actual}, expected {field.type}")
