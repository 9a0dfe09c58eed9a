"""RUN/kto_run.json: the record of a kto-train run, the full resolved configuration.

kto-train writes it (atomically) when a run starts and checks a `--resume` against it;
kto-inspect reads β from it when it scores a run's `final/` or `checkpoint-STEP/`. It also
proves that a directory is a run kto-train made (train/rundir.py refuses any other non-empty
`--out`). It lives here, in the contract, because both sides read it and train/ is no library
of inspection/'s.

    {"kind": "kto-train run", "version": 1,
     "config": {every TrainConfig field, paths as strings, auto-weights resolved},
     "derived": {"total_steps", "world_size", "cache_fingerprint", "eval_cache_fingerprint",
                 "model_identity"}}

Its name is not `config.json`: that is a Hugging Face model's configuration, and a run record
written over one (`--out` = `--model`) left a model that no longer loads. Runs made before the
rename hold the record as `config.json`; it is read, and counted as the run's own, only when its
content is provably such a record (`"kind": "kto-train run"`), and the next write of the record
moves it to the new name.
"""

from __future__ import annotations

from pathlib import Path

from .atomic import write_json_atomic
from .errors import InputError
from .files import read_json

RUN_RECORD_NAME = "kto_run.json"
LEGACY_RECORD_NAME = "config.json"
KIND = "kto-train run"
VERSION = 1


def is_run_record(path: Path) -> bool:
    """`path` is a plain file holding a kto-train run record (any version)."""
    if not path.is_file() or path.is_symlink():
        return False
    try:
        record = read_json(path)
    except InputError:
        return False  # unreadable: proves nothing
    return isinstance(record, dict) and record.get("kind") == KIND


def record_path(run_dir: str | Path) -> Path | None:
    """Where the record of the run in `run_dir` is: kto_run.json, else a legacy config.json that
    is provably one (a model's config.json is not), else None."""
    run_dir = Path(run_dir)
    if (run_dir / RUN_RECORD_NAME).is_file():
        return run_dir / RUN_RECORD_NAME
    legacy = run_dir / LEGACY_RECORD_NAME
    return legacy if is_run_record(legacy) else None


def run_holding(path: str | Path) -> Path | None:
    """The kto-train run directory that `path` lies inside (a folder above it with a run
    record), or None. Writers refuse to put anything there: a run's --resume deletes and
    replaces its final/ and checkpoint-STEP/, and refuses entries it did not write."""
    for folder in Path(path).resolve().parents:
        if record_path(folder) is not None:
            return folder
    return None


def write_run_config(run_dir: str | Path, config: dict, derived: dict, finished_step: int | None = None) -> None:
    """`finished_step`: set once final/ holds that step's weights (kto-train then has nothing to
    resume); a run that starts or resumes rewrites the record without it."""
    run_dir = Path(run_dir)
    record = {"kind": KIND, "version": VERSION, "config": config, "derived": derived}
    if finished_step is not None:
        record["finished_step"] = finished_step
    write_json_atomic(run_dir / RUN_RECORD_NAME, record)
    legacy = run_dir / LEGACY_RECORD_NAME
    if is_run_record(legacy):
        legacy.unlink()  # migrated: the record now lives under its own name


def read_run_config(run_dir: str | Path) -> dict | None:
    """The record of the run in `run_dir`, or None when it has none; InputError if unreadable."""
    path = record_path(run_dir)
    if path is None:
        return None
    record = read_json(path)
    ok = isinstance(record, dict) and record.get("kind") == KIND and isinstance(record.get("config"), dict) and isinstance(record.get("derived"), dict)
    if not ok:
        raise InputError(f"{path}: not a kto-train run record")
    if record.get("version") != VERSION:
        raise InputError(f"{path}: run record version {record.get('version')}, this kto reads {VERSION}")
    return record


def run_of_model_dir(model: str | Path) -> Path | None:
    """The run directory whose `final/`, `final-merged/` or `checkpoint-STEP/` is `model`, if it
    has a record. ("final-merged" is train/adapters.py's MERGED_DIR: formats imports no train.)"""
    path = Path(model)
    if not path.is_dir():
        return None
    name, parent = path.resolve().name, path.resolve().parent
    ours = name in ("final", "final-merged") or (name.startswith("checkpoint-") and name.removeprefix("checkpoint-").isdigit())
    return parent if ours and record_path(parent) is not None else None


def run_setting(model: str | Path, key: str) -> tuple[object, Path | None]:
    """(`key` of the config recorded by the run whose final/, final-merged/ or checkpoint-STEP/ is
    `model`, that record's path); (None, None) when `model` is no such folder of a run."""
    run = run_of_model_dir(model)
    if run is None:
        return None, None
    return read_run_config(run)["config"].get(key), record_path(run)
