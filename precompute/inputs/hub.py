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
import stat
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kto.formats.errors import InputError
from kto.formats.files import regular_tree, sha256_file, stat_or_none

from .columnar import LABEL_COLUMNS, columnar_reader, without_nulls_row
from .examples import one_line

PREFIX = "hf:"
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
        found = stat_or_none(self.source, f"{self.flag} {self.text}")
        return found is not None and stat.S_ISDIR(found.st_mode)

    @property
    def saved(self) -> bool:
        """A `save_to_disk` directory (a Dataset or a DatasetDict). A path that cannot be looked
        at (a folder above it not searchable, a name too long) is one line naming the flag."""
        p = Path(self.source)
        found = (stat_or_none(p / name, f"{self.flag} {self.text}") for name in ("state.json", "dataset_dict.json"))
        return any(st is not None and stat.S_ISREG(st.st_mode) for st in found)


def is_dataset_input(path: str | Path, flag: str = "--data") -> bool:
    """An `hf:` spec or a `save_to_disk` directory; `flag` names the input in a refusal of a
    path that cannot be looked at."""
    text = str(path)
    return text.startswith(PREFIX) or DatasetSpec(text, text, None, None, flag).saved


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
    read = columnar_reader(schema, label_columns, decode_json=False) if schema is not None else without_nulls_row
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
