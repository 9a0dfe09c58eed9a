"""manifest.json: what a cache holds and everything that produced it.

Three kinds of content, checked differently:
- `content`: everything that decides the numbers (model identity, tokenizer, inputs, column
  mapping, length limits, seed, dtype, attention implementation, format version), a typed
  `CacheContent` (content.py). Its hash is the `fingerprint` that kto-train checks and that
  resumed kto-precompute runs must match.
- `layout`: how the work was split (rows per shard, batch tokens, processes). A resume must
  match it; training does not care.
- `info`: paths, code version. Information only: moving a model or a cache invalidates nothing.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from .atomic import write_json_atomic
from .content import CacheContent, fingerprint_of
from .errors import InputError
from .files import read_json
from .schema import FORMAT_VERSION, MANIFEST_NAME

__all__ = ["CacheContent", "Counts", "Manifest", "ShardEntry", "fingerprint_of", "read_manifest"]


@dataclass(frozen=True)
class ShardEntry:
    name: str
    rows: int
    sha256: str


@dataclass(frozen=True)
class Counts:
    rows: int = 0
    desirable: int = 0
    undesirable: int = 0
    dropped: int = 0
    truncated: int = 0
    """Rows whose main sequence lost tokens (prompt or completion); the next three say where."""
    prompt_truncated: int = 0
    """Rows whose prompt was cut: only when their own sequence did not fit; the next two say how."""
    prompt_cut_by_turns: int = 0
    """Conversations that lost whole earliest turns (they still start with a turn header)."""
    prompt_cut_mid_text: int = 0
    """Prompts cut inside text: plain-text prompts, and conversations whose last user turn alone was too long."""
    completion_truncated: int = 0
    kl_completion_truncated: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    kl_completion_tokens: int = 0
    same_prompt_kl_pairs: int = 0
    template_prefix_splits: int = 0
    represented_tokens: int = 0
    """Σ prompt + completion over every main and KL sequence: what plain scoring computes."""
    scored_tokens: int = 0
    """Tokens the reference actually ran (shared prompts once per shard with prefix sharing)."""
    prefix_tokens_saved: int = 0
    """represented_tokens − scored_tokens."""


@dataclass(frozen=True)
class Manifest:
    content: CacheContent
    layout: dict
    counts: Counts
    shards: list[ShardEntry]
    info: dict = field(default_factory=dict)
    format_version: int = FORMAT_VERSION

    @property
    def fingerprint(self) -> str:
        return self.content.fingerprint

    @property
    def shard_sha256(self) -> dict[str, str]:
        return {s.name: s.sha256 for s in self.shards}

    def to_json(self) -> dict:
        out = asdict(self)
        out["content"] = self.content.to_json()  # optional keys only when set (content.py)
        out["fingerprint"] = self.fingerprint
        return out

    @classmethod
    def from_json(cls, obj: dict) -> Manifest:
        """Build from parsed JSON; InputError (without the file name) on a bad shard list or count."""
        manifest = cls(
            content=CacheContent.from_json(obj["content"]),
            layout=obj["layout"],
            counts=Counts(**obj["counts"]),
            shards=[ShardEntry(**s) for s in obj["shards"]],
            info=obj.get("info", {}),
            format_version=obj["format_version"],
        )
        _check_shard_entries(manifest.shards)
        _check_counts(manifest)
        return manifest

    def write(self, cache_dir: Path) -> None:
        write_json_atomic(Path(cache_dir) / MANIFEST_NAME, self.to_json())


# Precompute names shards `shard-00000.arrow`, … (schema.shard_name). Anything else is refused,
# so a listed name can neither point outside the cache (absolute, `..`, a separator) nor be a
# glob that `pl.scan_ipc` would expand into unlisted files.
_SHARD_NAME = re.compile(r"shard-[0-9]+\.arrow")
_SHA256 = re.compile(r"[0-9a-f]{64}")


def _is_count(value) -> bool:
    # bool is an int subclass in Python; `true` is not a row count.
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _check_shard_entries(shards: list[ShardEntry]) -> None:
    seen = set()
    for i, entry in enumerate(shards):
        name, what = entry.name, f"shards[{i}]"
        if not isinstance(name, str) or not name:
            raise InputError(f"{what}.name {name!r} is not a file name")
        if name.startswith(("/", "\\")) or re.match(r"[A-Za-z]:", name):
            raise InputError(f"{what}.name {name!r} is an absolute path; shard names are plain file names")
        if ".." in name:
            raise InputError(f"{what}.name {name!r} contains '..'; shard names are plain file names")
        if "/" in name or "\\" in name:
            raise InputError(f"{what}.name {name!r} contains a path separator; shard names are plain file names")
        if not _SHARD_NAME.fullmatch(name):
            raise InputError(f"{what}.name {name!r} is not a shard name (shard-N.arrow)")
        if name in seen:
            raise InputError(f"{what}.name {name!r} is listed twice")
        seen.add(name)
        if not _is_count(entry.rows):
            raise InputError(f"{what}.rows {entry.rows!r} ({name}) is not a non-negative integer")
        if not isinstance(entry.sha256, str) or not _SHA256.fullmatch(entry.sha256):
            raise InputError(f"{what}.sha256 {entry.sha256!r} ({name}) is not a sha256 hex digest")


def _check_counts(manifest: Manifest) -> None:
    c = manifest.counts
    for f in fields(Counts):
        value = getattr(c, f.name)
        if not _is_count(value):
            raise InputError(f"counts.{f.name} {value!r} is not a non-negative integer")
    listed = sum(s.rows for s in manifest.shards)
    if listed != c.rows:
        raise InputError(f"its shard entries list {listed} rows, counts.rows is {c.rows}")


def read_manifest(cache_dir: str | Path) -> Manifest:
    """Load and sanity-check `cache_dir/manifest.json`; InputError naming the file otherwise."""
    path = Path(cache_dir) / MANIFEST_NAME
    if not path.is_file():
        raise InputError(f"{path}: no manifest; is {cache_dir} a finished kto-precompute cache?")
    obj = read_json(path)  # `PATH: unreadable (…)`, a RecursionError included
    try:
        _check_version(obj)
        manifest = Manifest.from_json(obj)
    except InputError as exc:
        raise InputError(f"{path}: {exc}") from None
    except (ValueError, KeyError, TypeError, RecursionError) as exc:  # RecursionError: hashing a deep value
        raise InputError(f"{path}: unreadable manifest ({type(exc).__name__}: {exc})") from exc
    if obj.get("fingerprint") != manifest.fingerprint:
        raise InputError(f"{path}: fingerprint does not match its content section; the manifest was edited")
    return manifest


def _check_version(obj: dict) -> None:
    """Refuse a cache of another FORMAT_VERSION before reading anything else of it: an older or
    newer kto may lay out the content, the counts or the shards differently (schema.py)."""
    version = obj.get("format_version") if isinstance(obj, dict) else None
    if version == FORMAT_VERSION:
        return
    if not _is_count(version):
        raise InputError(f"format_version {version!r} is not a version number; this kto reads format version {FORMAT_VERSION}")
    what = "re-run kto-precompute with this kto" if version < FORMAT_VERSION else "use a newer kto"
    raise InputError(f"cache format version {version}, this kto reads format version {FORMAT_VERSION} only; {what}")
