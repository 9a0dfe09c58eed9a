"""manifest.json: what a cache holds and everything that produced it.

Three kinds of content, checked differently:
- `content`: everything that decides the numbers (model identity, tokenizer, inputs, column
  mapping, length limits, seed, dtype, attention implementation, format version). Its hash is
  the `fingerprint` that kto-train checks and that resumed kto-precompute runs must match.
- `layout`: how the work was split (rows per shard, batch tokens, processes). A resume must
  match it; training does not care.
- `info`: paths, code version. Information only: moving a model or a cache invalidates nothing.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .atomic import write_json_atomic
from .errors import InputError
from .schema import FORMAT_VERSION, MANIFEST_NAME


def fingerprint_of(content: dict) -> str:
    """sha256 of the canonical JSON of `content`."""
    return hashlib.sha256(json.dumps(content, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


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
    prompt_tokens: int = 0
    completion_tokens: int = 0
    kl_completion_tokens: int = 0
    same_prompt_kl_pairs: int = 0
    template_prefix_splits: int = 0


@dataclass(frozen=True)
class Manifest:
    content: dict
    layout: dict
    counts: Counts
    shards: list[ShardEntry]
    info: dict = field(default_factory=dict)
    format_version: int = FORMAT_VERSION

    @property
    def fingerprint(self) -> str:
        return fingerprint_of(self.content)

    @property
    def shard_sha256(self) -> dict[str, str]:
        return {s.name: s.sha256 for s in self.shards}

    def to_json(self) -> dict:
        out = asdict(self)
        out["fingerprint"] = self.fingerprint
        return out

    @classmethod
    def from_json(cls, obj: dict) -> "Manifest":
        return cls(
            content=obj["content"],
            layout=obj["layout"],
            counts=Counts(**obj["counts"]),
            shards=[ShardEntry(**s) for s in obj["shards"]],
            info=obj.get("info", {}),
            format_version=obj["format_version"],
        )

    def write(self, cache_dir: Path) -> None:
        write_json_atomic(Path(cache_dir) / MANIFEST_NAME, self.to_json())


def read_manifest(cache_dir: str | Path) -> Manifest:
    """Load and sanity-check `cache_dir/manifest.json`; InputError naming the file otherwise."""
    path = Path(cache_dir) / MANIFEST_NAME
    if not path.is_file():
        raise InputError(f"{path}: no manifest; is {cache_dir} a finished kto-precompute cache?")
    try:
        obj = json.loads(path.read_text())
        manifest = Manifest.from_json(obj)
    except (ValueError, KeyError, TypeError) as exc:
        raise InputError(f"{path}: unreadable manifest ({type(exc).__name__}: {exc})") from exc
    if manifest.format_version != FORMAT_VERSION:
        raise InputError(f"{path}: format version {manifest.format_version}, this kto reads {FORMAT_VERSION}")
    if obj.get("fingerprint") != manifest.fingerprint:
        raise InputError(f"{path}: fingerprint does not match its content section; the manifest was edited")
    return manifest
