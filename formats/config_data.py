"""The data a `--config` file names, as kto-precompute would read it, against what a cache's
manifest records (docs/migrating.md): kto-train compares them, so that a shared file edited
between the two commands (`dataset: kto_en_demo` -> `dataset: kto_sg`, `max_samples: 1000` ->
`20`) is said, not trained past on the old rows under "kto-precompute's keys, ignored".

A LLaMA-Factory `dataset_info.json` entry's inputs (`entry_inputs`) are found here, in formats/,
because kto-train may not import kto-precompute; precompute/inputs/dataset_info.py checks the
entry and then takes its inputs from these same functions, so the two cannot drift apart.

Nothing here refuses: what cannot be resolved (no dataset_info.json, an unknown entry, a file
not there) is no claim, since kto-precompute refuses it in its own words.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .files import sha256_file
from .manifest import INPUT_SUFFIXES

INFO_NAME = "dataset_info.json"
DATASET_DIR = "data"  # kto-precompute's --dataset-dir default, as LLaMA-Factory's
HUB_PREFIX = "hf:"


def hub_input(entry: Mapping[str, Any]) -> str:
    """An `hf_hub_url` entry as --data takes it: hf:ID[:SUBSET]:SPLIT (split default train)."""
    parts = [entry["hf_hub_url"], *([entry["subset"]] if entry.get("subset") else []), entry.get("split", "train")]
    return ":".join(["hf", *map(str, parts)])


def is_data_folder(path: Path) -> bool:
    """A `file_name` folder read as its data files (LLaMA-Factory loads them as one dataset),
    not a `datasets` directory (save_to_disk's state.json, a dataset_info.json of its own)."""
    return path.is_dir() and not (path / INFO_NAME).is_file() and not (path / "state.json").is_file()


def skipped(name: str) -> bool:
    """Files a data folder may hold beside its data, not read: dotfiles (.DS_Store,
    .gitattributes, .cache/), READMEs, licences and Markdown notes. Any other file is data."""
    lower = name.lower()
    return name.startswith(".") or lower.startswith(("readme", "license", "licence")) or lower.endswith(".md")


def folder_files(path: Path) -> tuple[list[Path], list[str]]:
    """A data folder's data files in name order, and the names of what it holds that cannot be
    read (a file of another type, a subfolder; `NAME/` for a folder), which kto-precompute refuses."""
    files, unreadable = [], []
    for p in sorted(path.iterdir()):
        if p.is_file() and p.suffix.lower() in INPUT_SUFFIXES:
            files.append(p)  # a data file whatever its name (license_qa.jsonl, .extra.jsonl)
        elif not skipped(p.name):
            unreadable.append(f"{p.name}/" if p.is_dir() else p.name)
    return files, unreadable


def entry_inputs(entry: Any, dataset_dir: Path) -> tuple[str, ...] | None:
    """The inputs of one dataset_info.json entry as --data takes them, or None for an entry
    kto-precompute would refuse (its checks are its own)."""
    if not isinstance(entry, dict) or ("file_name" in entry) == ("hf_hub_url" in entry):
        return None
    if "hf_hub_url" in entry:
        return (hub_input(entry),)
    path = Path(dataset_dir) / str(entry["file_name"])
    if is_data_folder(path):
        files, unreadable = folder_files(path)
        return tuple(str(p) for p in files) if files and not unreadable else None
    return (str(path),) if path.exists() else None


def _dataset_inputs(names: Any, dataset_dir: Any) -> list[str] | None:
    """`dataset: a,b` under `dataset_dir` (default data/) as kto-precompute reads them, in order."""
    folder = Path(os.path.expanduser(str(DATASET_DIR if dataset_dir is None else dataset_dir)))
    try:
        info = json.loads((folder / INFO_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    found = []
    for name in str(names).split(","):
        inputs = entry_inputs(info.get(name.strip()), folder) if isinstance(info, dict) and name.strip() else None
        if inputs is None:
            return None
        found.extend(inputs)
    return found


def dataset_name_input(values: Mapping[str, Any]) -> str:
    """TRL's `dataset_name` (+ `dataset_config`, `dataset_train_split`) as --data takes it."""
    config = [str(values["dataset_config"])] if values.get("dataset_config") else []
    return ":".join(["hf", str(values["dataset_name"]), *config, str(values.get("dataset_train_split") or "train")])


DATA_KEYS = ("data", "dataset", "dataset_name")


def file_inputs(values: Mapping[str, Any]) -> list[str] | None:
    """The --data inputs kto-precompute would read for a file's data keys (`values`: the file's
    kto-precompute keys), --data's before the entries', as it orders them; None where the file
    names none or they cannot be resolved."""
    if not any(values.get(k) for k in DATA_KEYS):
        return None
    data = values.get("data")
    found = [str(d) for d in (data if isinstance(data, list) else [data] if data else [])]
    if values.get("dataset"):
        entries = _dataset_inputs(values["dataset"], values.get("dataset_dir"))
        if entries is None:
            return None
        found.extend(entries)
    if values.get("dataset_name"):
        found.append(dataset_name_input(values))
    return found


def _hub_parts(spec: str) -> tuple[str, str | None, str | None] | None:
    """hf:SOURCE[:CONFIG]:SPLIT (or hf:SOURCE) as (source, config, split), as --data reads it."""
    parts = spec[len(HUB_PREFIX) :].split(":")
    if not parts[0] or len(parts) > 3:
        return None
    return parts[0], (parts[1] if len(parts) == 3 else None), (parts[-1] if len(parts) > 1 else None)


def _local_dataset_name(source: Path, config: str | None, split: str | None) -> str:
    """The name the manifest records of a local `datasets` directory (its sha256 covers every file)."""
    return ":".join(p for p in (source.resolve().name, config, split) if p)


def _same_input(spec: str, identity: Mapping[str, Any], path: str | None) -> bool | None:
    """Would kto-precompute read input `spec` as the recorded one (`identity`, and its local
    `path` where recorded)? None where it cannot tell. A file at the recorded path is the same
    input even if edited since (kto-train's note on changed inputs says that); elsewhere, the
    same bytes (a copy) are the same rows. A hub dataset by id, config and split, not its
    revision (a later revision of one split keeps its rows' ids)."""
    if spec.startswith(HUB_PREFIX):
        parts = _hub_parts(spec)
        if parts is None:
            return None
        source, config, split = parts
        if Path(source).is_dir():
            return "dataset" not in identity and identity.get("name") == _local_dataset_name(Path(source), config, split)
        return (identity.get("dataset"), identity.get("config"), identity.get("split")) == parts
    local = Path(os.path.expanduser(spec))
    if (local / "state.json").is_file() or (local / "dataset_dict.json").is_file():
        return "dataset" not in identity and identity.get("name") == _local_dataset_name(local, None, None)
    if not local.is_file():
        return None
    if path is not None and os.path.abspath(local) == path:
        return True
    return "sha256" in identity and sha256_file(local) == identity["sha256"]


def _shown(specs: Sequence[str], identities: Sequence[Mapping[str, Any]], digests: Sequence[str | None]) -> tuple[str, str]:
    """Both sides' inputs by name; by name and sha256 where the names alone read the same."""
    ours = [s if s.startswith(HUB_PREFIX) else Path(s).name for s in specs]
    theirs = [str(i.get("name")) for i in identities]
    if ours == theirs:
        ours = [f"{n}, sha256 {d[:12]}…" if d else n for n, d in zip(ours, digests)]
        theirs = [f"{n}, sha256 {str(i['sha256'])[:12]}…" if "sha256" in i else n for n, i in zip(theirs, identities)]
    return ", ".join(ours), ", ".join(theirs)


def _inputs_disagreement(values: Mapping[str, Any], inputs: Sequence[Mapping[str, Any]], paths: Sequence[str | None]) -> str | None:
    specs = file_inputs(values)
    if specs is None:
        return None
    if len(specs) == len(inputs):
        same = [_same_input(s, i, p) for s, i, p in zip(specs, inputs, paths)]
        if None in same or all(same):
            return None
    files = [None if s.startswith(HUB_PREFIX) else Path(os.path.expanduser(s)) for s in specs]
    digests = [sha256_file(f) if f is not None and f.is_file() else None for f in files]
    ours, theirs = _shown(specs, inputs, digests)
    written = ", ".join(f"{k}: {', '.join(map(str, v)) if isinstance(v, list) else v}" for k in DATA_KEYS if (v := values.get(k)))
    return f"{written} (reads {ours}; the cache's inputs: {theirs})"


def _max_samples_disagreement(values: Mapping[str, Any], content: Mapping[str, Any]) -> str | None:
    """The file's max_samples (left out of a file that names its data: every row) against the
    cache's rows_per_input."""
    sample = content.get("max_samples")
    recorded = sample.get("rows_per_input") if isinstance(sample, dict) else None
    if "max_samples" in values:
        ours, shown = values["max_samples"], "null, every row" if values["max_samples"] is None else values["max_samples"]
    elif any(values.get(k) for k in DATA_KEYS):
        ours, shown = None, "not given, every row"
    else:
        return None
    if (ours is None and recorded is None) or (ours is not None and recorded is not None and _same_number(ours, recorded)):
        return None
    return f"max_samples: {shown} (the cache's max_samples: {'none, every row' if recorded is None else recorded})"


def _same_number(a: Any, b: Any) -> bool:
    try:
        return not isinstance(a, bool) and float(a) == float(b)
    except (TypeError, ValueError):
        return False


def data_disagreements(values: Mapping[str, Any], content: Mapping[str, Any], paths: Sequence[str | None]) -> list[str]:
    """The file's data keys and max_samples (`values`: its kto-precompute keys) that differ from
    what the cache's manifest `content` records, each as `KEY: VALUE (…the cache's …)`. `paths`:
    each recorded input's local path, or None (Manifest.input_paths)."""
    inputs = content.get("inputs") or []
    found = [_inputs_disagreement(values, inputs, list(paths) + [None] * (len(inputs) - len(paths))), _max_samples_disagreement(values, content)]
    return [f for f in found if f]
