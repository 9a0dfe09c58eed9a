"""The manifest's `content`: everything that decides a cache's numbers, as one frozen dataclass.

kto-precompute builds a `CacheContent`; every reader (kto-train, kto-inspect, tools) reads its
attributes. Its canonical JSON's sha256 is the cache's fingerprint (`fingerprint_of`), which
kto-train checks and a resumed kto-precompute must match. Paths are never part of it: moving a
model or a cache invalidates nothing (they go to the manifest's `info`).

On disk it is a JSON object with exactly these keys. Keys added after format version 1 shipped
(`chat_template`, `chat_template_kwargs`, `sharegpt`, `eval_split`, `alpaca`, `max_samples`) are written only when set, so a cache made
without them keeps its fingerprint. Adding such an optional key needs no new FORMAT_VERSION;
changing what an existing key means, or adding one every cache must carry, does (schema.py).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, fields
from typing import Any

from .errors import InputError


def fingerprint_of(content: dict) -> str:
    """sha256 of the canonical JSON of `content`."""
    return hashlib.sha256(json.dumps(content, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


@dataclass(frozen=True)
class CacheContent:
    format_version: int
    """schema.FORMAT_VERSION of the kto that made the cache."""
    split: str
    """"train" or "eval"."""
    model: dict[str, Any]
    """models.model_identity of the reference model (config hash, weight files' identities)."""
    tokenizer: dict[str, Any]
    """models.tokenizer_identity of --model's own tokenizer (what kto-train checks --model against)."""
    inputs: tuple[dict[str, Any], ...]
    """One hub.input_identity per --data input: file name and sha256, or dataset and revision."""
    columns: dict[str, str]
    """The column mapping (examples.ColumnMap)."""
    max_length: int
    max_prompt_length: int
    truncation: str
    """The truncation rule, in words: a changed rule changes the fingerprint."""
    kl_pairing: str
    """The KL pairing rule, in words (precompute/pairing.py): likewise."""
    seed: int
    eval_fraction: float
    dtype: str
    """The numerics name the reference was scored in (numerics.NAMES)."""
    attn_implementation: str
    store_token_logps: bool
    chat_template: str | None = None
    """sha256 of --chat-template's text; absent when the model's own template was used."""
    chat_template_kwargs: dict[str, Any] | None = None
    """--chat-template-kwargs; absent when none were given."""
    sharegpt: dict[str, str] | None = None
    """The ShareGPT names map; absent when it is the default."""
    alpaca: dict[str, str] | None = None
    """The alpaca column map of a --dataset entry of that formatting; absent otherwise."""
    eval_split: str | None = None
    """How --eval-fraction chose the eval rows, in words (precompute/eval_split.py); absent when
    eval_fraction is 0, and in caches split by the earlier unstratified rule (so theirs differ)."""
    max_samples: dict[str, Any] | None = None
    """--max-samples: rows kept per input and the sampling rule; absent when every row is used."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "inputs", tuple(self.inputs))  # a list from JSON or a caller

    def to_json(self) -> dict[str, Any]:
        """The JSON object the manifest stores (optional keys only when set)."""
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in _OPTIONAL or getattr(self, f.name) is not None}
        out["inputs"] = [dict(i) for i in self.inputs]
        return out

    @classmethod
    def from_json(cls, obj: Any) -> CacheContent:
        """Parse the manifest's `content`; InputError (without the file name) on unknown or missing keys."""
        if not isinstance(obj, dict):
            raise InputError("content is not a JSON object")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(obj) - known)
        if unknown:
            raise InputError(f"content has keys this kto does not know ({', '.join(unknown)}); was the cache made by a newer kto?")
        missing = sorted(known - _OPTIONAL - set(obj))
        if missing:
            raise InputError(f"content lacks {', '.join(missing)}")
        if not isinstance(obj["inputs"], list):
            raise InputError("content.inputs is not a list")
        return cls(**obj)

    @property
    def fingerprint(self) -> str:
        return fingerprint_of(self.to_json())

    def scored_with(self, model_identity: dict[str, Any]) -> bool:
        """Was this cache scored with the model of `model_identity` (models.model_identity)?

        kto-train runs its step-0 check only then; `kto-inspect score` and tools/gpu_check.py
        expect rewards of about 0 only then."""
        return model_identity == self.model


_OPTIONAL = frozenset({"chat_template", "chat_template_kwargs", "sharegpt", "eval_split", "alpaca", "max_samples"})
