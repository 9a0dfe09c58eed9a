"""manifest.json: what a cache holds and everything that produced it.

Three kinds of content, checked differently:
- `content`: everything that decides the numbers (model identity, tokenizer, inputs, column
  mapping, length limits, seed, dtype, attention implementation, format version), a typed
  `CacheContent` (below). Its hash is the `fingerprint` that kto-train checks and that
  resumed kto-precompute runs must match.
- `layout`: how the work was split (rows per shard, batch tokens, processes). A resume must
  match it; training does not care.
- `info`: the input files' and a local model's absolute paths (a hub id as given), versions,
  device. Information only: moving a model or a cache invalidates nothing; kto-train notes an
  input file edited since.

The content is one frozen dataclass, `CacheContent`: kto-precompute builds it; every reader
(kto-train, kto-inspect, tools) reads its attributes. Its canonical JSON's sha256 is the cache's
fingerprint (`fingerprint_of`), which kto-train checks and a resumed kto-precompute must match.
Paths are never part of it: moving a model or a cache invalidates nothing (they go to `info`).
On disk it is a JSON object with exactly its keys. Keys added after format version 1 shipped
(`chat_template`, `chat_template_kwargs`, `sharegpt`, `eval_split`, `alpaca`, `max_samples`, `eval_inputs`,
`reading`) are written only when set, so a cache made without them keeps its fingerprint. Adding such an
optional key needs no new FORMAT_VERSION; changing what an existing key means, or adding one
every cache must carry, does (schema.py).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from .atomic import write_json_atomic
from .errors import InputError
from .files import read_json
from .schema import FORMAT_VERSION, MANIFEST_NAME, shard_name

__all__ = ["INPUT_SUFFIXES", "CacheContent", "Counts", "Manifest", "ShardEntry", "fingerprint_of", "read_manifest"]

# The file types kto-precompute reads as --data (precompute/inputs/records.py takes them from here:
# train/ may not import precompute/). A recorded input file of another suffix made no cache, and
# kto-train hashes none (eval_cache.py).
INPUT_SUFFIXES = (".jsonl", ".json", ".parquet", ".csv", ".arrow", ".ipc", ".feather")


# ---- the content: what decides the numbers, and its fingerprint ------------------------------


def fingerprint_of(content: dict) -> str:
    """sha256 of the canonical JSON of `content`."""
    return hashlib.sha256(json.dumps(content, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


# Keys a weight file's identity gained after caches and run records already held identities:
# compared only when both identities carry them, so those stay valid.
LATER_WEIGHT_KEYS = frozenset({"small_tensors_sha256", "sha256"})


def same_model(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Do two model identities (identity.model_identity) name the same model? Equal, except that
    a key of LATER_WEIGHT_KEYS that one side's weight file lacks is not compared, nor a hub
    revision that one side lacks: a model named by hub id and a local copy of its files are one
    model (kto-precompute --model ORG/NAME, kto-train --model that copy: the step-0 check runs)."""
    if not isinstance(a, dict) or not isinstance(b, dict):
        return False
    one_sided = {"hub_revision"} - (set(a) & set(b))
    a, b = ({k: v for k, v in i.items() if k not in one_sided} for i in (a, b))
    if set(a) != set(b) or any(a[k] != b[k] for k in a if k != "weights"):
        return False
    wa, wb = a.get("weights"), b.get("weights")
    if not isinstance(wa, dict) or not isinstance(wb, dict) or set(wa) != set(wb):
        return wa == wb
    for name, fa in wa.items():
        fb = wb[name]
        if not isinstance(fa, dict) or not isinstance(fb, dict):
            if fa != fb:
                return False
            continue
        keys = (set(fa) | set(fb)) - {k for k in LATER_WEIGHT_KEYS if k not in fa or k not in fb}
        if any(fa.get(k) != fb.get(k) for k in keys):
            return False
    return True


@dataclass(frozen=True)
class CacheContent:
    format_version: int
    """schema.FORMAT_VERSION of the kto that made the cache."""
    split: str
    """"train" or "eval"."""
    model: dict[str, Any]
    """identity.model_identity of the reference model (config hash, weight files' identities)."""
    tokenizer: dict[str, Any]
    """identity.tokenizer_identity of --model's own tokenizer (what kto-train checks --model against)."""
    inputs: tuple[dict[str, Any], ...]
    """One records.input_identity per --data input: file name and sha256, or dataset and revision."""
    columns: dict[str, str]
    """The column mapping (examples.ColumnMap)."""
    max_length: int
    max_prompt_length: int
    truncation: str
    """The truncation rule, in words: a changed rule changes the fingerprint."""
    kl_pairing: str
    """The KL pairing rule, in words (precompute/plan.py): likewise."""
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
    """How --eval-fraction chose the eval rows, in words (precompute/plan.py); absent when
    eval_fraction is 0, and in caches split by the earlier unstratified rule (so theirs differ)."""
    max_samples: dict[str, Any] | None = None
    """--max-samples: rows kept per input and the sampling rule; absent when every row is used."""
    eval_inputs: list[dict[str, Any]] | None = None
    """--eval-data: the identities of the held-out inputs whose rows are the eval split (as
    `inputs`); absent when the eval rows come from --eval-fraction or there are none."""
    reading: str | None = None
    """How input rows become examples where LLaMA-Factory's shapes were read otherwise before, in
    words (precompute/inputs/examples.py READING_RULE); absent in caches made before that rule,
    so theirs differ and are never reused for rows read the new way."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "inputs", tuple(self.inputs))  # a list from JSON or a caller

    def to_json(self) -> dict[str, Any]:
        """The JSON object the manifest stores (optional keys only when set)."""
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in _OPTIONAL or getattr(self, f.name) is not None}
        out["inputs"] = [dict(i) for i in self.inputs]
        if self.eval_inputs is not None:
            out["eval_inputs"] = [dict(i) for i in self.eval_inputs]
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

    @property
    def saved_tokenizer(self) -> dict[str, Any]:
        """The identity the cache's tokenizer/ must have: --model's tokenizer, with the
        --chat-template it was rendered with (tokenizer/ carries the template, the manifest its sha256)."""
        identity = dict(self.tokenizer)
        if self.chat_template is not None:
            identity["chat_template"] = self.chat_template
        return identity

    @property
    def row_inputs(self) -> tuple:
        """The inputs this cache's rows come from: --eval-data's for the eval split of a cache made
        with it (its ids may repeat the train split's: other files), else `inputs`."""
        return tuple(self.eval_inputs) if self.split == "eval" and self.eval_inputs else self.inputs

    def scored_with(self, model_identity: dict[str, Any]) -> bool:
        """Was this cache scored with the model of `model_identity` (identity.model_identity)?

        kto-train runs its step-0 check only then; `kto-inspect score` and tools/gpu_check.py
        expect rewards of about 0 only then."""
        return same_model(self.model, model_identity)


_OPTIONAL = frozenset({"chat_template", "chat_template_kwargs", "sharegpt", "eval_split", "alpaca", "max_samples", "eval_inputs", "reading"})


# ---- the manifest --------------------------------------------------------------------------------


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
        out["content"] = self.content.to_json()  # optional keys only when set (CacheContent.to_json)
        out["fingerprint"] = self.fingerprint
        return out

    @classmethod
    def from_json(cls, obj: dict) -> Manifest:
        """Build from parsed JSON; InputError (without the file name) on a bad shard list or count."""
        _check_parts(obj)
        manifest = cls(
            content=CacheContent.from_json(obj["content"]),
            layout=obj["layout"],
            counts=Counts(**obj["counts"]),
            shards=[ShardEntry(**s) for s in obj["shards"]],
            info=obj.get("info", {}),
            format_version=obj["format_version"],
        )
        _check_shard_entries(manifest.shards)
        _check_layout(manifest)
        _check_counts(manifest)
        return manifest

    @property
    def reference_model(self) -> str:
        """The reference model as the manifest records it for people: --model as kto-precompute
        was given it (info.model_path), else words saying so. The identity (`content.model`) is
        what decides; this only names it."""
        named = self.info.get("model_path") if isinstance(self.info, dict) else None
        return str(named or "the reference model its manifest identifies")

    def write(self, cache_dir: Path) -> None:
        """Write manifest.json, as `as_written`."""
        write_json_atomic(Path(cache_dir) / MANIFEST_NAME, self.as_written().to_json())

    def as_written(self) -> Manifest:
        """This manifest as `write` writes it: each local input file of `info.data_paths` and a
        local `info.model_path` made absolute (_absolute_paths)."""
        return replace(self, info=_absolute_paths(self))

    def input_paths(self) -> list[str | None]:
        """Each input file's absolute path, in the order of the inputs this cache's rows come from
        (`content.row_inputs`), as `info` records it: `data_paths` for --data, `eval_data_paths`
        for the eval split of a cache made with --eval-data. None for a hub dataset, a path
        recorded relative (caches made before), or one not of that input's name; all None where
        the two lists do not pair one to one (an --eval-data split made before its paths were
        recorded)."""
        return self._recorded_paths(*_paths_key(self))

    def eval_input_paths(self) -> list[str | None]:
        """As input_paths, for `content.eval_inputs` (--eval-data) of either split."""
        return self._recorded_paths("eval_data_paths", tuple(self.content.eval_inputs or ()))

    def _recorded_paths(self, key: str, inputs: tuple) -> list[str | None]:
        paths = self.info.get(key) if isinstance(self.info, dict) else None
        if not isinstance(paths, list) or len(paths) != len(inputs):
            return [None] * len(inputs)
        return [p if isinstance(p, str) and os.path.isabs(p) and isinstance(i, dict) and Path(p).name == i.get("name") else None for p, i in zip(paths, inputs)]

    def input_files(self) -> list[tuple[Path, str]]:
        """(absolute path, sha256 recorded) of each input of this cache's rows that is a local file
        (input_paths); dataset inputs, hub or local, are left out."""
        return [(Path(p), i["sha256"]) for p, i in zip(self.input_paths(), self.content.row_inputs) if p is not None and _names_file(p, i)]


def _paths_key(manifest: Manifest) -> tuple[str, tuple]:
    """The `info` key naming the files of the inputs `manifest`'s rows come from, and those inputs."""
    held_out = manifest.content.split == "eval" and bool(manifest.content.eval_inputs)
    return ("eval_data_paths", tuple(manifest.content.eval_inputs)) if held_out else ("data_paths", tuple(manifest.content.inputs))


def _names_file(path: Any, identity: Any) -> bool:
    """Is `path` (an info.data_paths entry) the local file of input identity `identity`? A file's
    identity is its name and sha256 (records.input_identity), and a Parquet or Arrow file's the
    rule its rows were read by (`reading`); a `datasets` input's carries its config and split
    too, and its spec is not a path."""
    file_keys = isinstance(identity, dict) and set(identity) - {"reading"} == {"name", "sha256"}
    return isinstance(path, str) and file_keys and Path(path).name == identity["name"]


def _absolute_paths(manifest: Manifest) -> dict:
    """`info` with its local paths absolute: the input files (_absolute_data_paths) and --model
    (`model_path`) where it names a local folder or file; a hub id, which names no path here,
    stays as given. As typed, a relative --model could not be found again, and kto-train could
    not tell that the folder it names holds other weights now (train/setup.py not_the_reference).
    Like the data paths, an absolute path given keeps its bytes."""
    info = _absolute_data_paths(manifest)
    model = info.get("model_path") if isinstance(info, dict) else None
    if isinstance(model, str) and model and os.path.exists(os.path.expanduser(model)):
        info = {**info, "model_path": os.path.abspath(os.path.expanduser(model))}
    return info


def _absolute_data_paths(manifest: Manifest) -> dict:
    """`info` with each local input file of `info.data_paths` (and `info.eval_data_paths`) absolute. kto-precompute records
    --data as typed, relative to a working directory nobody records: the file could not be found
    again, and kto-train could not tell that it was edited since the cache was made (train/eval_cache.py
    note_changed_inputs). Made absolute here, by the writer (kto-precompute, in its working
    directory), and in place rather than under a new key: `info` is no part of the fingerprint, and
    an absolute path given stays as it was, so the manifest of a cache made from absolute paths
    keeps its bytes (tests/test_pinned_outputs.py pins them). Idempotent: a manifest read and
    written again elsewhere keeps the paths it holds."""
    info = manifest.info
    if not isinstance(info, dict):
        return info
    for key, inputs in (("data_paths", manifest.content.inputs), ("eval_data_paths", manifest.content.eval_inputs or ())):
        paths = info.get(key)
        if isinstance(paths, list) and len(paths) == len(inputs):
            info = {**info, key: [os.path.abspath(p) if _names_file(p, i) else p for p, i in zip(paths, inputs)]}
    return info


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
        if name != shard_name(i):
            # Rows are stored in KL-cycle order across shards, so their order is content too.
            raise InputError(f"{what}.name {name!r} is not {shard_name(i)!r}: shards are listed in the order they were written")
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
    # Identities of how the counts are made (precompute/plan.py): each row's prompt is
    # represented twice, once before its completion and once before its KL completion.
    sums = (
        (c.desirable + c.undesirable, c.rows, "counts.desirable + counts.undesirable", "counts.rows"),
        (
            2 * c.prompt_tokens + c.completion_tokens + c.kl_completion_tokens,
            c.represented_tokens,
            "2 × counts.prompt_tokens + counts.completion_tokens + counts.kl_completion_tokens",
            "counts.represented_tokens",
        ),
        (c.scored_tokens + c.prefix_tokens_saved, c.represented_tokens, "counts.scored_tokens + counts.prefix_tokens_saved", "counts.represented_tokens"),
    )
    for total, recorded, what, name in sums:
        if total != recorded:
            raise InputError(f"{what} is {total}, {name} is {recorded}")
    if manifest.layout.get("prefix_sharing") is False and c.prefix_tokens_saved:
        raise InputError(f"counts.prefix_tokens_saved is {c.prefix_tokens_saved} in a cache made without prefix sharing")


def _check_layout(manifest: Manifest) -> None:
    """The layout's values, and the shard sizes its rows_per_shard makes (all full but the last)."""
    layout = manifest.layout
    if not isinstance(layout, dict):
        raise InputError(f"layout {layout!r} is not a mapping")
    for key in ("rows_per_shard", "batch_tokens", "num_processes"):
        if key in layout and not (_is_count(layout[key]) and layout[key] > 0):
            raise InputError(f"layout.{key} {layout[key]!r} is not a positive integer")
    if "prefix_sharing" in layout and not isinstance(layout["prefix_sharing"], bool):
        raise InputError(f"layout.prefix_sharing {layout['prefix_sharing']!r} is not true or false")
    per_shard = layout.get("rows_per_shard")
    for i, entry in enumerate(manifest.shards):
        last = i == len(manifest.shards) - 1
        if per_shard is not None and not (entry.rows == per_shard or (last and 0 < entry.rows < per_shard)):
            raise InputError(f"shards[{i}].rows {entry.rows} ({entry.name}) does not fit layout.rows_per_shard {per_shard}")


def _check_parts(obj: dict) -> None:
    """The manifest's parts are there and of their JSON kinds (said as the file's keys, not as
    the KeyError or TypeError their use would raise)."""
    missing = [key for key in ("content", "layout", "counts", "shards", "format_version") if key not in obj]
    if missing:
        raise InputError(f"lacks {', '.join(missing)}")
    for key, kind, what in (("layout", dict, "a JSON object"), ("counts", dict, "a JSON object"), ("shards", list, "a list")):
        if not isinstance(obj[key], kind):
            raise InputError(f"{key} is not {what}")
    unknown = sorted(set(obj["counts"]) - {f.name for f in fields(Counts)})
    if unknown:
        raise InputError(f"counts has keys this kto does not know ({', '.join(unknown)}); was the cache made by a newer kto?")
    entry_keys = [f.name for f in fields(ShardEntry)]
    for i, entry in enumerate(obj["shards"]):
        if not isinstance(entry, dict):
            raise InputError(f"shards[{i}] is not a JSON object")
        if lacks := [key for key in entry_keys if key not in entry]:
            raise InputError(f"shards[{i}] lacks {', '.join(lacks)}")


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
