"""`--data` through Hugging Face `datasets` (the optional extra `hf`).

Spellings:
- `hf:SOURCE:SPLIT` or `hf:SOURCE:CONFIG:SPLIT`, where SOURCE is a hub dataset id
  (`hf:trl-lib/kto-mix-14k:train`) or a local directory of data files that `datasets` can load;
- a directory written by `Dataset.save_to_disk` (or `hf:DIR` / `hf:DIR:SPLIT` for a DatasetDict).

Hub and local sources go through the same code: `load_dataset(..., streaming=True)`, so rows are
read one batch at a time and never copied into a cache first; `save_to_disk` directories are
memory-mapped by `load_from_disk`. Rows are then checked (records.py, examples.py) like any file's, named
`SPEC: row N` (1-based).

Identity (manifest `inputs`): a hub dataset by id, config, split and the commit sha the hub
resolves *now*; that sha is then passed as `revision=` to the read, so the rows read are the
rows fingerprinted, and a dataset updated on the hub gives another fingerprint instead of a
silent "latest"; offline, the commit of the version in the local `datasets` cache, which is
what `datasets` then reads (_cached_revision). A local source by the sha256 of every file under
its directory but git's and the hub download's bookkeeping (data_tree).

When is *now*: inside `one_run()`, once per run (every identity and read of the run names one
commit); outside it, at each identity, and a read takes the commit its identity last resolved
(records.input_records takes the identity just before the read; the pipeline compares it with
the fingerprinted one). Never once per process: a notebook's second run would record a commit
the hub has since left.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

from kto.formats.errors import InputError
from kto.formats.files import regular_tree, sha256_file

from .examples import one_line

PREFIX = "hf:"
LABEL_COLUMNS = ("label", "kto_tag")  # the label columns a row is read for by default (ColumnMap, ShareGPTMap)
# The rows of an input read through columnar_reader (Parquet, Arrow, `datasets`) are not the rows
# an earlier kto read from the same bytes (added nulls, Json text, ClassLabel indices): its
# identity says so (`reading`), so a cache of the earlier reading has another fingerprint and is
# refused, not reused. Short: the refusal shows it as written (precompute/output.py _show).
COLUMNAR_READING = "rows as JSON Lines (README: Datasets)"
INSTALL_HINT = "pip install 'kto-offline[hf]'"  # the optional extra that brings `datasets`
_BATCH = 1024
_LAST: dict[tuple[str, str | None], str] = {}  # (id, config) -> sha the last identity resolved (outside one_run)
_RUN: dict[tuple[str, str | None], str] | None = None  # the same, for the run inside one_run; None outside


@dataclass(frozen=True)
class DatasetSpec:
    text: str  # as given on the command line: names rows in messages and row ids
    source: str  # hub id or local directory
    config: str | None
    split: str | None
    flag: str = "--data"  # the option that gave it (--data, --eval-data): names it in messages

    @property
    def name(self) -> str:
        """Names rows (`NAME: row N`) and default row ids (`NAME:N`). A local directory goes by
        its base name, as files do, so moving the data renames no row."""
        if not self.local:
            return self.text
        parts = [Path(self.source).resolve().name, self.config, self.split]
        return ":".join(p for p in parts if p)

    @property
    def local(self) -> bool:
        return Path(self.source).is_dir()

    @property
    def saved(self) -> bool:
        """A `save_to_disk` directory (a Dataset or a DatasetDict)."""
        p = Path(self.source)
        return (p / "state.json").is_file() or (p / "dataset_dict.json").is_file()


def is_dataset_input(path: str | Path) -> bool:
    text = str(path)
    return text.startswith(PREFIX) or DatasetSpec(text, text, None, None).saved


def parse_spec(path: str | Path, flag: str = "--data") -> DatasetSpec:
    text = str(path)
    if not text.startswith(PREFIX):
        return DatasetSpec(text, text, None, None, flag)
    parts = text[len(PREFIX) :].split(":")
    if any("[" in part or "]" in part for part in parts[1:]):  # `train[:10]`: its colon split the spec
        raise InputError(f"{flag} {text}: split slices are not read; give the whole split, and --max-samples N for a seeded sample of N rows")
    if len(parts) > 3 or not parts[0]:
        raise InputError(f"{flag} {text}: expected hf:ID:SPLIT or hf:ID:CONFIG:SPLIT")
    source, config, split = parts[0], (parts[1] if len(parts) == 3 else None), (parts[-1] if len(parts) > 1 else None)
    if "" in (config, split):
        raise InputError(f"{flag} {text}: empty config or split name")
    return DatasetSpec(text, source, config, split, flag)


def check_dataset_input(path: str | Path, flag: str = "--data") -> None:
    """A `datasets` input's refusals that need no read, naming `flag` (--data, --eval-data): a
    spelling parse_spec refuses, and the datasets package missing. For the checks made when the
    configuration is built (records.check_input_kind), so that they come before the model's
    tokenizer loads (seconds) and name the option that gave the input."""
    _datasets(parse_spec(path, flag))


def dataset_identity(path: str | Path) -> dict:
    """What the manifest records of a `datasets` input (records.input_identity's other half)."""
    spec = parse_spec(path)
    identity = {"name": spec.name, "config": spec.config, "split": spec.split}
    if spec.local:
        return {**identity, "sha256": _tree_sha256(Path(spec.source)), **reading()}
    return {**identity, "dataset": spec.source, "revision": _revision(spec, fresh=True), **reading()}


def reading() -> dict[str, str]:
    """The identity key of an input read through columnar_reader (COLUMNAR_READING); none where
    that is None (an earlier kto's identity, as tests make one)."""
    return {"reading": COLUMNAR_READING} if COLUMNAR_READING else {}


@contextlib.contextmanager
def one_run() -> Iterator[None]:
    """Each hub dataset resolved once for the run inside (precompute's): its manifest, staging key
    and read name one commit even if the hub moves meanwhile; the next run resolves anew."""
    global _RUN
    outer, _RUN = _RUN, {}
    try:
        yield
    finally:
        _RUN = outer


def dataset_records(spec: DatasetSpec, label_columns: Collection[str] = LABEL_COLUMNS) -> Iterator[tuple[int, Any]]:
    """(1-based row, record) of the dataset, read as columnar_reader reads its features: a
    ClassLabel among `label_columns` by its names, merged structs without their added nulls."""
    # The bars are off only while `datasets` works, never across a yield: a reader stopped early
    # would hold the setting until the garbage collector closed it, then flip it mid-session.
    with _progress_bars_off(spec):
        dataset = _open(spec)
        batches = iter(dataset.iter(batch_size=_BATCH))
    features = getattr(dataset, "features", None)
    # datasets decodes its Json columns itself; without features (none resolved), TRL's rule.
    schema = features.arrow_schema if features is not None else None
    read = columnar_reader(schema, label_columns, decode_json=False) if schema is not None else _without_nulls_row
    row = 0
    while (batch := _next_batch(batches, spec, row)) is not None:
        keys = list(batch)
        for values in zip(*(batch[k] for k in keys)):
            row += 1
            record = dict(zip(keys, values))
            yield row, read(record) if read is not None else record


def _next_batch(batches: Iterator[dict], spec: DatasetSpec, row: int) -> dict | None:
    """The next batch of rows, None after the last. Streaming parses the files as it goes, so a
    file that breaks (a JSON line that does not parse) raises here, past _open's refusal."""
    try:
        with _progress_bars_off(spec):
            return next(batches)
    except StopIteration:
        return None
    except MemoryError:  # not the data's fault: the traceback says where memory ran out
        raise
    except Exception as e:  # pyarrow's and datasets' many types; the user needs one line
        where = "its rows" if row == 0 else f"past row {row}"
        raise InputError(f"{spec.flag} {spec.text}: cannot read {where} ({one_line(e)})") from None


# ---- opening -----------------------------------------------------------------------------------


def _datasets(spec: DatasetSpec):
    try:
        import datasets
    except ImportError as exc:
        if exc.name == "datasets":
            raise InputError(f"{spec.flag} {spec.text}: reading it needs the datasets package, which is not installed: {INSTALL_HINT}") from None
        # Installed but broken (a dependency of its own missing or too old): not the extra's fault.
        raise InputError(f"{spec.flag} {spec.text}: the datasets package is installed but does not import ({one_line(exc)})") from None
    return datasets


@contextlib.contextmanager
def _progress_bars_off(spec: DatasetSpec) -> Iterator[None]:
    """`datasets`' bars off while the rows are read (the run draws its own), then as they were:
    turned off for good, the user's own `datasets` calls drew none for the rest of the session."""
    datasets = _datasets(spec)
    was_on = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if was_on:
            datasets.enable_progress_bars()


def _open(spec: DatasetSpec):
    datasets = _datasets(spec)
    if spec.saved:
        return _open_saved(spec, datasets)
    if spec.split is None:
        raise InputError(f"{spec.flag} {spec.text}: missing split; write hf:{spec.source}:SPLIT or hf:{spec.source}:CONFIG:SPLIT")
    revision = None if spec.local else _revision(spec, fresh=False)
    _check_split(spec, datasets, revision)
    try:
        return datasets.load_dataset(spec.source, spec.config, split=spec.split, streaming=True, revision=revision)
    except Exception as e:  # datasets raises many types; the user needs one line
        raise InputError(f"{spec.flag} {spec.text}: cannot load ({one_line(e)})") from None


def _open_saved(spec: DatasetSpec, datasets):
    try:
        loaded = datasets.load_from_disk(spec.source)
    except Exception as e:
        raise InputError(f"{spec.flag} {spec.text}: cannot load the save_to_disk directory ({one_line(e)})") from None
    if isinstance(loaded, datasets.DatasetDict):
        splits = ", ".join(loaded) or "none"
        if spec.split is None:
            raise InputError(f"{spec.flag} {spec.text}: missing split: this directory holds {splits}; write hf:{spec.source}:SPLIT")
        if spec.split not in loaded:
            raise InputError(f"{spec.flag} {spec.text}: no split {spec.split!r} (available: {splits})")
        return loaded[spec.split]
    if spec.split is not None:
        raise InputError(f"{spec.flag} {spec.text}: this directory holds one dataset, not splits; drop ':{spec.split}'")
    return loaded


def _check_split(spec: DatasetSpec, datasets, revision: str | None) -> None:
    try:
        names = datasets.get_dataset_split_names(spec.source, spec.config, revision=revision)
    except Exception as e:
        raise InputError(f"{spec.flag} {spec.text}: cannot list the splits ({one_line(e)})") from None
    if spec.split not in names:
        raise InputError(f"{spec.flag} {spec.text}: no split {spec.split!r} (available: {', '.join(names) or 'none'})")


def _revision(spec: DatasetSpec, fresh: bool) -> str:
    """The dataset's commit sha: the one this run resolved (one_run), else the hub's current one
    when `fresh` (an identity), else the one the last identity resolved (a read: it reads what
    that identity recorded)."""
    key = (spec.source, spec.config)
    known = _LAST if _RUN is None else _RUN
    if key not in known or (fresh and _RUN is None):
        known[key] = _resolve(spec)
    return known[key]


def _resolve(spec: DatasetSpec) -> str:
    """The hub's current commit sha for the dataset; offline, the cached one (_cached_revision)."""
    datasets = _datasets(spec)
    if getattr(datasets.config, "HF_HUB_OFFLINE", False) or getattr(datasets.config, "HF_DATASETS_OFFLINE", False):
        return _cached_revision(spec, datasets)
    from huggingface_hub import HfApi
    from huggingface_hub.errors import RepositoryNotFoundError

    try:
        return HfApi().dataset_info(spec.source).sha
    except RepositoryNotFoundError:
        raise InputError(f"{spec.flag} {spec.text}: unknown dataset id {spec.source!r} (not a local directory, and not on the hub)") from None
    except Exception as e:  # offline, network, auth
        raise InputError(
            f"{spec.flag} {spec.text}: unknown dataset id {spec.source!r}: not a local directory, and the hub cannot resolve it ({one_line(e)})"
        ) from None


def _cached_revision(spec: DatasetSpec, datasets) -> str:
    """Offline (HF_HUB_OFFLINE, HF_DATASETS_OFFLINE), `datasets` reads the latest version of the
    dataset in its local cache, whatever revision is asked for: that version's commit sha is
    the one recorded, found as `datasets` finds it (its builder for the cached dataset)."""
    where = f"{spec.flag} {spec.text}"
    try:
        sha = getattr(datasets.load_dataset_builder(spec.source, spec.config), "hash", None)
    except Exception as e:  # nothing cached (ConnectionError), no such config (ValueError), ...
        raise InputError(
            f"{where}: not in the local cache (offline: HF_HUB_OFFLINE or HF_DATASETS_OFFLINE is set; load it once online "
            f"with datasets.load_dataset, or unset them) ({one_line(e)})"
        ) from None
    if not (isinstance(sha, str) and len(sha) == 40):
        raise InputError(f"{where}: not in the local cache as a hub commit (offline: HF_HUB_OFFLINE or HF_DATASETS_OFFLINE is set; found {sha!r})")
    return sha


# Entries of a folder that are never its data: git's own (`.git/`, `.gitattributes`,
# `.gitignore`) and the metadata `huggingface-cli download --local-dir` writes (`.cache/`). Other
# hidden files are hashed: `datasets` reads a hidden path that a README's `configs:` names.
_NEVER_DATA_DIRS = (".git", ".cache")
_NEVER_DATA_FILES = (".gitattributes", ".gitignore")


def _never_data(relative: Path) -> bool:
    parts = relative.parts
    return parts[0] in _NEVER_DATA_DIRS or ".git" in parts or relative.name in _NEVER_DATA_FILES


def data_tree(root: Path, what: str) -> list[Path]:
    """Every file under `root` that may be data, sorted: all but git's and the hub download's
    bookkeeping (_never_data), so that a `git status` (which rewrites .git/index) changes no
    fingerprint. Each must be a regular file: `datasets` would block on a FIFO among them."""
    return regular_tree(root, what, skip=_never_data)


def _tree_sha256(root: Path) -> str:
    """sha256 over (relative path, file sha256) of every data file under `root` (data_tree), in sorted order."""
    h = hashlib.sha256()
    for p in data_tree(root, f"--data {root}"):
        h.update(f"{p.relative_to(root).as_posix()}\0{sha256_file(p)}\n".encode())
    return h.hexdigest()


# ---- rows as `datasets` and Arrow write them -----------------------------------------------------

_Read = Callable[[Any], Any]


def columnar_reader(schema: pa.Schema, label_columns: Collection[str], decode_json: bool) -> Callable[[dict], dict] | None:
    """How a row of a columnar source (Parquet, Arrow, `datasets`) of `schema` is read so that it
    equals the row's JSON Lines; None where rows are read as they are (flat columns, no
    ClassLabel label).

    - An object nested in a column (a message, a tool call, its arguments, a tool schema) loses
      its null keys: Arrow stores objects as structs with one set of fields for the column, so
      rows whose calls take other arguments (`{"tz": ...}`, `{"city": ...}`) each read the other's
      as null, which chat templates render (`"city": null`). JSON Lines keep a null written
      there; here no null can be told from an added one, and TRL (remove_none_values) drops them
      all too. A row's own columns keep theirs (a null label is refused as null).
    - A column `datasets` declares `Json` (Arrow `arrow.json`, or the `huggingface` schema
      metadata), anywhere in the row: its JSON text parsed (`decode_json`; datasets' own reads
      parse it already), kept as parsed, nulls included.
    - A label column (`label_columns`: those a shape reads a label from) declared a ClassLabel
      reads by its class names (ClassName), as parse_label reads them; its index would be read
      as the label (0 as false). Other ClassLabel columns keep their indices."""
    features = _features(schema)
    readers = {f.name: _value_reader(f.type, features.get(f.name), decode_json) for f in schema}
    readers = {name: read for name, read in readers.items() if read is not None}
    labels = _class_labels(features, label_columns)
    if not (readers or labels):
        return None

    def read(record: dict) -> dict:
        row = dict(record)
        for name, value_reader in readers.items():
            if row.get(name) is not None:
                row[name] = value_reader(row[name])
        for name, names in labels.items():
            if name in row:
                row[name] = _class_name(row[name], names)
        return row

    return read


def _features(schema: pa.Schema) -> dict:
    """The `datasets` Features that `schema`'s `huggingface` metadata declares ({} if none)."""
    try:
        features = json.loads((schema.metadata or {})[b"huggingface"])["info"]["features"]
    except (KeyError, TypeError, ValueError):
        return {}
    return features if isinstance(features, dict) else {}


def _is_json(dtype: pa.DataType, feature: Any) -> bool:
    if getattr(dtype, "extension_name", None) == "arrow.json":
        return True
    text = pa.types.is_string(dtype) or pa.types.is_large_string(dtype)
    return text and isinstance(feature, dict) and feature.get("_type") == "Json"


def _value_reader(dtype: pa.DataType, feature: Any, decode_json: bool) -> _Read | None:
    """The reader of one value of Arrow type `dtype` (datasets `feature`, or None), None where
    the value is read as it is (columnar_reader: structs lose null keys, Json text is parsed)."""
    if _is_json(dtype, feature):
        return json.loads if decode_json else None
    if pa.types.is_struct(dtype):
        children = {f.name: _value_reader(f.type, _field_feature(feature, f.name), decode_json) for f in dtype}
        return lambda value: _struct(value, children)
    if pa.types.is_list(dtype) or pa.types.is_large_list(dtype) or pa.types.is_fixed_size_list(dtype):
        item = _value_reader(dtype.value_type, _item_feature(feature), decode_json)
        return None if item is None else (lambda value: [v if v is None else item(v) for v in value])
    return None


def _struct(value: Any, children: dict[str, _Read | None]) -> Any:
    if not isinstance(value, dict):
        return value
    return {k: (read(v) if (read := children.get(k)) is not None else v) for k, v in value.items() if v is not None}


def _field_feature(feature: Any, name: str) -> Any:
    if isinstance(feature, dict) and "_type" not in feature:
        return feature.get(name)
    return None


def _item_feature(feature: Any) -> Any:
    if isinstance(feature, dict) and feature.get("_type") in ("List", "LargeList", "Sequence"):
        return feature.get("feature")
    return None


def _without_nulls(value: Any) -> Any:
    """TRL's remove_none_values: every object below a row's columns without its null keys."""
    if isinstance(value, dict):
        return {k: _without_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_nulls(v) for v in value]
    return value


def _without_nulls_row(record: dict) -> dict:
    return {k: _without_nulls(v) for k, v in record.items()}


def _class_labels(features: dict, label_columns: Collection[str]) -> dict[str, list[str]]:
    """The label columns declared ClassLabel -> their class names."""
    labels = {}
    for name in dict.fromkeys(label_columns):
        feature = features.get(name)
        if isinstance(feature, dict) and feature.get("_type") == "ClassLabel" and isinstance(feature.get("names"), list):
            labels[name] = [str(n) for n in feature["names"]]
    return labels


class ClassName(str):
    """A ClassLabel index read as its class name, which parse_label reads where a row's label is
    read from its column (`desirable`, `no`, ...); a name that is no label (`negative`, a topic)
    is refused there, at that row, showing the index (repr). Where no label is read from the
    column (paired rows, another --label-column), nothing is refused: the columns of a row's
    shape are only known per row (records._row_examples), after this read."""

    index: int

    def __new__(cls, name: str, index: int) -> ClassName:
        value = super().__new__(cls, name)
        value.index = index
        return value

    def __repr__(self) -> str:
        return f"{str.__repr__(self)} (ClassLabel index {self.index})"

    def __reduce__(self) -> tuple:
        return ClassName, (str(self), self.index)


def _class_name(value: Any, names: list[str]) -> Any:
    """A ClassLabel index as its name; -1 (datasets' "no label") as null; anything else as it is."""
    if isinstance(value, int) and not isinstance(value, bool):
        if 0 <= value < len(names):
            return ClassName(names[value], value)
        if value == -1:
            return None
    return value
