"""`--dataset NAME --dataset-dir DIR`: a LLaMA-Factory `dataset_info.json` entry, read completely.

An entry names where the rows are and how to read them:
- `file_name` (relative to DIR, and lying under it once `..` is taken away; a file,
  or a folder of data files read in name order) or `hf_hub_url` (+ `subset`, `split`, default
  train; a hub id, never a local path): the input, as `--data` would take it;
- `formatting`: `alpaca` (LLaMA-Factory's default) or `sharegpt`;
- `columns` and `tags`: the column and role names (examples.ShareGPTMap, alpaca.AlpacaMap);
- `ranking`: true for chosen/rejected pairs, false (default) for `kto_tag`-labelled rows. It
  decides how every row is read (a row of the other kind is refused, naming the entry's key), as
  the entry's map does whatever its conversation column is named: `messages: messages` reads the
  entry's kto_tag and tags, not the `messages` + `label` shape of `--data` alone.
- `file_sha1` is accepted and not checked (LLaMA-Factory only warns on a mismatch).

A `system` or `tools` column is read only when `columns` maps it, as LLaMA-Factory reads an
entry (`--data` alone reads columns named `system` and `tools` by default).

Other keys (`ms_hub_url`, `script_url`, `cloud_file_name`, `num_samples`, media columns, ...)
are refused in one line rather than silently ignored.

Fingerprint: the entry resolves to the same inputs and names that `--data FILE` with
`--sharegpt-info DIR/dataset_info.json#NAME` would give, so both ways make the same cache. An
entry's names (with its system and tools columns unread unless named) differ from the
defaults, so the content holds them: caches made from an entry before system and tools were
read LLaMA-Factory's way have another fingerprint, and so do those made before the entry's map
and ranking read every row (the names then gained `entry`). An alpaca entry also adds its
column map.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from kto.formats.config_data import INFO_NAME, folder_files, hub_input, is_data_folder
from kto.formats.errors import InputError
from kto.formats.files import regular_file, utf8_text
from kto.formats.paths import HF

from .alpaca import AlpacaMap
from .examples import ShareGPTMap
from .records import SUFFIXES
from .sharegpt import entry_ranking

_WHERE_KEYS = {"file_name", "hf_hub_url", "subset", "split"}
# LLaMA-Factory only warns when the file's SHA-1 differs (its docs: optional, no effect on
# training); the cache's manifest records every input's sha256 anyway.
_IGNORED_KEYS = {"file_sha1"}
_READ_KEYS = {"formatting", "ranking", "columns", "tags"}
_SHAREGPT_COLUMNS = {"messages", "system", "tools", "chosen", "rejected", "kto_tag"}
_ALPACA_COLUMNS = {"prompt", "query", "response", "history", "system", "chosen", "rejected", "kto_tag"}
_SHAREGPT_TAGS = {"role_tag", "content_tag", "user_tag", "assistant_tag", "observation_tag", "function_tag", "system_tag"}


@dataclass(frozen=True)
class DatasetEntry:
    """What a dataset_info.json entry resolves to."""

    data: tuple[str, ...]
    """Inputs as --data takes them: file paths, or one hf:ID[:SUBSET]:SPLIT."""
    sharegpt: ShareGPTMap = field(default_factory=ShareGPTMap)
    alpaca: AlpacaMap | None = None
    """Set for an alpaca entry: every row is read as alpaca."""
    ranking: bool = False
    spans: tuple[int, ...] = ()
    """How many of `data` each entry is, in order: a folder entry is all its files, which
    LLaMA-Factory loads as one dataset (records.RowSample counts --max-samples over it whole)."""


def read_dataset_info(dataset_dir: Path, names: str | None = None) -> dict:
    path = Path(dataset_dir) / INFO_NAME
    if not path.exists() and _data_instead(names):
        raise InputError(f"--dataset-dir {dataset_dir}: {INFO_NAME}: no such file{_data_instead(names)}")
    regular_file(path, f"--dataset-dir {dataset_dir}: {INFO_NAME}")
    try:
        info = json.loads(utf8_text(path, str(path)))
    except json.JSONDecodeError as e:
        raise InputError(f"{path}: malformed JSON ({e.msg} at line {e.lineno})") from None
    if not isinstance(info, dict):
        raise InputError(f"{path}: expected a JSON object of dataset entries")
    return info


def _data_instead(names: str | None) -> str:
    """What --data would read where --dataset names a file or a hub id (ORG/NAME), as TRL's and
    OpenRLHF's --dataset do, and no dataset_info.json is there to name entries of."""
    if names is None:
        return ""
    if Path(names).exists():
        return f"; --dataset names an entry of it (LLaMA-Factory's): for the file {names}, give --data {names}"
    if re.fullmatch(r"[\w.-]+/[\w.-]+", names):
        return f"; --dataset names an entry of it (LLaMA-Factory's): for the hub dataset {names}, give --data hf:{names}:SPLIT"
    return ""


def load_datasets(names: str, dataset_dir: Path) -> DatasetEntry:
    """Every entry of the comma list `names`; their files are read in order, so their names
    (columns, tags, formatting, ranking) must agree: one cache has one map."""
    info = read_dataset_info(dataset_dir, names)
    listed = [name.strip() for name in names.split(",") if name.strip()]
    twice = next((name for i, name in enumerate(listed) if name in listed[:i]), None)
    if twice is not None:
        raise InputError(
            f"--dataset {names}: {twice} is named twice; LLaMA-Factory reads a repeated entry twice (upsampling it), "
            "kto-precompute reads each file once: name it once"
        )
    entries = [load_entry(info, name, Path(dataset_dir), names) for name in listed]
    if not entries:
        raise InputError(f"--dataset {names!r}: name at least one entry of {Path(dataset_dir) / INFO_NAME}")
    _refuse_shared_files(names, listed, entries)
    first = entries[0]
    for name, entry in zip(listed[1:], entries[1:]):
        if (entry.sharegpt, entry.alpaca, entry.ranking) != (first.sharegpt, first.alpaca, first.ranking):
            raise InputError(f"--dataset {names}: {name.strip()} reads its rows with other columns, tags, formatting or ranking than {names.split(',')[0]}")
    return DatasetEntry(tuple(p for e in entries for p in e.data), first.sharegpt, first.alpaca, first.ranking, tuple(len(e.data) for e in entries))


def _refuse_shared_files(names: str, listed: list[str], entries: list[DatasetEntry]) -> None:
    """Two entries of one file would read its rows twice: refused naming the entries, before
    the inputs' check names two --data the user never wrote."""
    seen: dict[Path, str] = {}
    for name, entry in zip(listed, entries):
        for path in entry.data:
            real = Path(path).resolve()
            if real in seen:
                raise InputError(f"--dataset {names}: {seen[real]} and {name} read the same file {path}, which would read every row twice: name one of them")
            seen[real] = name


def load_entry(info: dict, name: str, dataset_dir: Path, names: str | None = None) -> DatasetEntry:
    """`names`: the --dataset list as written, which the messages lead with (a --config file's
    message then names its `dataset:` value once)."""
    where = f"--dataset {names or name}: entry {name} of {dataset_dir / INFO_NAME}"
    if name not in info:
        raise InputError(f"{where}: no such entry (entries: {', '.join(sorted(info)) or 'none'})")
    entry = info[name]
    if not isinstance(entry, dict):
        raise InputError(f"{where}: expected an object")
    unknown = sorted(set(entry) - _WHERE_KEYS - _READ_KEYS - _IGNORED_KEYS)
    if "num_samples" in unknown:
        n = entry["num_samples"]
        raise InputError(
            f"{where}: num_samples (LLaMA-Factory's sample of that many rows of the entry) is not supported here: leave it out and "
            f"give max_samples: {n} (--max-samples {n}), a seeded sample of at most that many rows of each input"
        )
    if unknown:
        raise InputError(f"{where}: {', '.join(unknown)} not supported here (supported: {', '.join(sorted(_WHERE_KEYS | _READ_KEYS | _IGNORED_KEYS))})")
    formatting = entry.get("formatting", "alpaca")
    if formatting not in ("alpaca", "sharegpt"):
        raise InputError(f"{where}: formatting {formatting!r}: alpaca or sharegpt")
    columns, tags = (_mapping(entry, group, where) for group in ("columns", "tags"))
    ranking = entry_ranking(entry, columns, where)
    if formatting == "sharegpt":
        _known(columns, _SHAREGPT_COLUMNS, "columns", where)
        _known(tags, _SHAREGPT_TAGS, "tags", where)
        sharegpt, alpaca = _build(ranking, {**columns, **tags}, where), None
    else:
        if tags:
            raise InputError(f"{where}: tags belong to the sharegpt formatting, not alpaca")
        _known(columns, _ALPACA_COLUMNS, "columns", where)
        alpaca = AlpacaMap.from_entry(columns)  # before the system column leaves the map
        system = {"system": columns.pop("system")} if "system" in columns else {}
        sharegpt = _build(ranking, system, where)
    data = _inputs(entry, dataset_dir, where)
    return DatasetEntry(data, sharegpt, alpaca, ranking, (len(data),))


def _mapping(entry: dict, group: str, where: str) -> dict:
    values = entry.get(group) or {}
    if not isinstance(values, dict) or not all(isinstance(v, str) for v in values.values()):
        raise InputError(f"{where}: {group} must be an object of names")
    return dict(values)


def _known(values: dict, known: set, group: str, where: str) -> None:
    unknown = sorted(set(values) - known)
    if unknown:
        raise InputError(f"{where}: {group} {', '.join(unknown)} not supported here (known: {', '.join(sorted(known))})")


def _build(ranking: bool, values: dict, where: str) -> ShareGPTMap:
    """The entry's map, which reads every row of its files as the entry's `ranking` says."""
    # Every name was checked against _SHAREGPT_COLUMNS and _SHAREGPT_TAGS first (_known), so
    # the message names only the bad ones; this stays for a name those sets and the map disagree on.
    try:
        return ShareGPTMap.from_entry(ranking, **values)
    except TypeError:
        raise InputError(f"{where}: unknown names {', '.join(sorted(set(values) - set(ShareGPTMap().as_dict())))}") from None


def _inputs(entry: dict, dataset_dir: Path, where: str) -> tuple[str, ...]:
    if ("file_name" in entry) == ("hf_hub_url" in entry):
        raise InputError(f"{where}: give exactly one of file_name and hf_hub_url")
    if "hf_hub_url" in entry:
        _hub_id(str(entry["hf_hub_url"]), dataset_dir, where)
        return (hub_input(entry),)
    if "subset" in entry or "split" in entry:
        raise InputError(f"{where}: subset and split go with hf_hub_url, not file_name")
    file_name = str(entry["file_name"])
    if Path(file_name).is_absolute():
        raise InputError(f"{where}: file_name {file_name}: an absolute path; {_under(dataset_dir)}")
    path = dataset_dir / file_name
    _inside(path, dataset_dir, f"{where}: file_name {file_name}")
    if is_data_folder(path):
        return _folder_files(path, f"{where}: file_name {file_name}")
    if not path.exists():
        raise InputError(f"{where}: file_name {file_name}: no such file in {dataset_dir}")
    # A file_name is always a local file (the hub is hf_hub_url): under `--dataset-dir .`,
    # `hf:y.jsonl` would read as an `hf:` spec, so such a name is given as its absolute path.
    return (str(path.absolute()) if str(path).startswith(HF) else str(path),)


# A dataset_info.json often comes with downloaded data, and its entries would otherwise read any
# file the user can (`../../.ssh/...`, `/etc/...`, or a symlink beside the data) into the cache,
# its rows shown by kto-inspect and its errors naming only the file's base name. LLaMA-Factory
# joins DIR and file_name without this check.
def _under(dataset_dir: Path) -> str:
    return f"the file must lie under --dataset-dir {dataset_dir} (LLaMA-Factory does not check this; move it there or give it with --data)"


def _inside(path: Path, dataset_dir: Path, where: str) -> None:
    """InputError unless `path`, its `..` taken away, lies under DIR. Symbolic links are not
    followed: one in DIR is the user's own way to keep data on another disk, while the entry's
    text is what comes with downloaded data."""
    lexical, root = Path(os.path.normpath(os.path.abspath(path))), Path(os.path.normpath(os.path.abspath(dataset_dir)))
    if not lexical.is_relative_to(root):
        raise InputError(f"{where}: is {lexical}, outside {dataset_dir}; {_under(dataset_dir)}")


def _hub_id(url: str, dataset_dir: Path, where: str) -> None:
    """InputError when an entry's hf_hub_url names a local path: `hf:SOURCE` reads a local
    directory when one is there (hub.py, as datasets.load_dataset does), so an entry could read
    any folder on the machine. A hub dataset id (ORG/NAME) is never absolute nor holds `..`."""
    if Path(url).is_absolute() or ".." in Path(url).parts or Path(url).exists():
        raise InputError(f"{where}: hf_hub_url {url}: a local path, not a hub dataset id; name files under --dataset-dir {dataset_dir} with file_name")


def _folder_files(path: Path, where: str) -> tuple[str, ...]:
    """The data files of a folder entry, sorted. A file of a type the reader cannot read
    (part-1.jsonl.gz beside part-0.jsonl), or a subfolder, is refused by name: leaving it out
    would drop its rows silently, and LLaMA-Factory itself refuses such a folder. The files are
    formats' folder_files, as kto-train resolves an entry to compare it with a cache."""
    files, unreadable = folder_files(path)
    readable = ", ".join(SUFFIXES)
    if unreadable:
        raise InputError(
            f"{where}: the folder {path} holds {', '.join(unreadable)}, which cannot be read (reads {readable} files; skips dotfiles, "
            "README*, LICENSE* and *.md); move them out of the folder"
        )
    if not files:
        raise InputError(f"{where}: the folder {path} holds no data files ({readable})")
    return tuple(str(p) for p in files)
