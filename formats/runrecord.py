"""RUN/config.json: the full resolved configuration of a kto-train run.

kto-train writes it (atomically) when a run starts and checks a `--resume` against it;
kto-inspect reads β from it when it scores a run's `final/` or `checkpoint-STEP/`. It lives
here, in the contract, because both sides read it and train/ is no library of inspection/'s.

    {"kind": "kto-train run", "version": 1,
     "config": {every TrainConfig field, paths as strings, auto-weights resolved},
     "derived": {"total_steps", "world_size", "cache_fingerprint", "eval_cache_fingerprint",
                 "model_identity"}}
"""

from __future__ import annotations

import re
from pathlib import Path

from .atomic import write_json_atomic
from .errors import InputError
from .files import read_json

RUN_CONFIG_NAME = "config.json"
KIND = "kto-train run"
VERSION = 1
RUN_MODEL_DIR = re.compile(r"^(final|checkpoint-\d+)$")


def write_run_config(run_dir: str | Path, config: dict, derived: dict) -> None:
    write_json_atomic(Path(run_dir) / RUN_CONFIG_NAME, {"kind": KIND, "version": VERSION, "config": config, "derived": derived})


def read_run_config(run_dir: str | Path) -> dict | None:
    """The record of the run in `run_dir`, or None when it has none; InputError if unreadable."""
    path = Path(run_dir) / RUN_CONFIG_NAME
    if not path.is_file():
        return None
    record = read_json(path)
    ok = isinstance(record, dict) and record.get("kind") == KIND and isinstance(record.get("config"), dict) and isinstance(record.get("derived"), dict)
    if not ok:
        raise InputError(f"{path}: not a kto-train run configuration")
    if record.get("version") != VERSION:
        raise InputError(f"{path}: run configuration version {record.get('version')}, this kto reads {VERSION}")
    return record


def run_of_model_dir(model: str | Path) -> Path | None:
    """The run directory whose `final/` or `checkpoint-STEP/` is `model`, if it has a record."""
    path = Path(model)
    if path.is_dir() and RUN_MODEL_DIR.match(path.resolve().name) and (path.resolve().parent / RUN_CONFIG_NAME).is_file():
        return path.resolve().parent
    return None
