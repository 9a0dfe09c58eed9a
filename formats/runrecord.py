"""RUN/kto_run.json: the record of a kto-train run, its full configuration.

kto-train writes it (atomically) when a run starts and checks a `--resume` against it;
kto-inspect reads β from it when it scores a run's `final/` or `checkpoint-STEP/` (or one set
aside as `checkpoint-STEP.superseded` or `.corrupt`). It also
proves that a directory is a run kto-train made (train/rundir.py refuses any other non-empty
`--out`). It lives here, in the contract, because both sides read it and train/ is no library
of inspection/'s.

    {"kind": "kto-train run", "version": 1,
     "config": {every TrainConfig field, paths as strings, auto-weights resolved; a default
                decided at run time as given: run_name null, mixed_precision "auto", …},
     "derived": {"total_steps", "world_size", "cache_fingerprint", "eval_cache_fingerprint",
                 "model_identity", "reference_identity", "steps_share_prefixes",
                 "mixed_precision_in_force": no | bf16 | fp16, what `auto` came to (runs
                 recorded before it lack it)},
     "finished_step": the step final/ holds, once it does}

Its name is not `config.json`: that is a Hugging Face model's configuration, and a run record
written over one (`--out` = `--model`) left a model that no longer loads. Runs made before the
rename hold the record as `config.json`; it is read, and counted as the run's own, only when its
content is provably such a record (`"kind": "kto-train run"`), and the next write of the record
moves it to the new name.
"""

from __future__ import annotations

import re
from pathlib import Path

from .atomic import write_json_atomic
from .errors import InputError
from .files import read_json

RUN_RECORD_NAME = "kto_run.json"
LEGACY_RECORD_NAME = "config.json"
KIND = "kto-train run"
VERSION = 1

# The layout of a run directory, declared once: train/ writes it; inspection/, model loading
# (`refuse_run_dir_as_model`) and `run_of_model_dir` read it.
FINAL_DIR = "final"  # the trained model (adapters under LoRA)
MERGED_DIR = "final-merged"  # --merge-adapters: the adapters merged into the base
METRICS_NAME = "metrics.jsonl"
CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
# A checkpoint that kto-train's --resume renamed aside: `.corrupt` (a newer one that failed its
# checksums, train/checkpoint.py usable_checkpoint) or `.superseded` (newer than the one
# `--resume PATH` continued from, train/rundir.py set_aside_later), numbered where that name
# was taken. Still the run's: its weights were trained with the run's settings.
ASIDE_CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)\.(corrupt|superseded)(\.\d+)?$")
# The metrics.jsonl lines past the step K a --resume continued from (train/metrics.py
# set_aside_past): the record of the continuation it abandons, as its checkpoints are
# `checkpoint-N.superseded`; `.superseded.1.jsonl` … where that name is taken. Not
# `metrics.jsonl.superseded`: a start-over's copy of a whole earlier run (train/rundir.py).
RESUMED_METRICS_RE = re.compile(r"^metrics\.after-step-(\d+)\.superseded(\.\d+)?\.jsonl$")
# A start-over's copy of a whole earlier run's metrics.jsonl (train/rundir.py start_over).
STARTED_OVER_METRICS_RE = re.compile(rf"^{re.escape(METRICS_NAME)}\.superseded(\.\d+)?$")


def is_set_aside_metrics(name: str) -> bool:
    """A metrics file kto-train set aside: a start-over's whole earlier run, or a resume's
    dropped lines."""
    return STARTED_OVER_METRICS_RE.match(name) is not None or RESUMED_METRICS_RE.match(name) is not None


# The eval cache a run evaluates on, in its record's `derived`: its fingerprint, and the one the
# run began with, kept once a resume changed it (train/resume_record.py keep_recorded).
EVAL_FINGERPRINT = "eval_cache_fingerprint"
EVAL_AT_START = "eval_cache_fingerprint_at_start"


# The identity of the run's reference model (its --cache's manifest content.model): what
# --eval-only and kto-inspect score check another cache against when the run's --cache is not at
# hand. Runs recorded before it name only the model they started from (derived.model_identity).
REFERENCE_IDENTITY = "reference_identity"


def eval_cache_at_start(derived: dict) -> str | None:
    """The eval cache fingerprint the run began with: EVAL_AT_START once a resume changed it."""
    return derived.get(EVAL_AT_START, derived.get(EVAL_FINGERPRINT))


def resumed_metrics_name(step: int, n: int = 0) -> str:
    """The name of the lines past `step` set aside by a resume; `n` > 0 where the first is taken."""
    return f"metrics.after-step-{step}.superseded{f'.{n}' if n else ''}.jsonl"


def checkpoint_dir(run_dir: Path, step: int) -> Path:
    """RUN/checkpoint-STEP."""
    return run_dir / f"checkpoint-{step}"


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


# What a run was made with, beside the settings: the versions of kto-offline, torch and
# transformers it began with, and the folder it started in (the config's relative paths are
# relative to it). Top-level keys, outside `config` and `derived`: no kto compares them on
# --resume (an earlier kto, which compares every `derived` key, still resumes the run).
MADE_WITH = ("versions", "cwd")


def write_run_config(run_dir: str | Path, config: dict, derived: dict, finished_step: int | None = None, made_with: dict | None = None) -> None:
    """`finished_step`: set once final/ holds that step's weights (kto-train then has nothing to
    resume); a run that starts or resumes rewrites the record without it. `made_with`: the
    MADE_WITH entries (others are not written)."""
    run_dir = Path(run_dir)
    record = {"kind": KIND, "version": VERSION, "config": config, "derived": derived}
    record |= {k: v for k, v in (made_with or {}).items() if k in MADE_WITH}
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
    """The run directory whose `final/`, `final-merged/` or `checkpoint-STEP/` is `model` (or a
    checkpoint it set aside, `checkpoint-STEP.superseded` or `.corrupt`), if it has a record."""
    path = Path(model)
    if not path.is_dir():
        return None
    name, parent = path.resolve().name, path.resolve().parent
    ours = name in (FINAL_DIR, MERGED_DIR) or CHECKPOINT_RE.match(name) is not None or ASIDE_CHECKPOINT_RE.match(name) is not None
    return parent if ours and record_path(parent) is not None else None


def run_setting(model: str | Path, key: str) -> tuple[object, Path | None]:
    """(`key` of the config recorded by the run whose final/, final-merged/ or checkpoint-STEP/
    (or a checkpoint it set aside) is `model`, that record's path); (None, None) when `model` is
    no such folder of a run."""
    run = run_of_model_dir(model)
    if run is None:
        return None, None
    return read_run_config(run)["config"].get(key), record_path(run)


def refuse_run_dir_as_model(path: Path, spec: str, flag: str, adapters_ok: bool = False) -> None:
    """A kto-train run directory (its record, kto_run.json or a legacy config.json, or its
    metrics.jsonl) holds no model of its own: its trained model is in final/ (adapters under
    LoRA; final-merged/ then holds them merged into the base, an ordinary model).

    `adapters_ok`: the caller loads a LoRA adapter folder as --model on its base (kto-train
    --eval-only, kto-inspect score; formats/compute/policy_dirs.py), so RUN/final is the answer
    there; elsewhere (training, kto-precompute) only a whole model is, and the adapters must be merged."""
    recorded = record_path(path) is not None
    is_model = ((path / "config.json").is_file() and not recorded) or any(path.glob("*.gguf"))
    if is_model or not (recorded or (path / METRICS_NAME).is_file()):
        return  # another trainer's output may hold a metrics.jsonl beside its model
    run = spec.rstrip("/\\") or spec
    said = f"{flag} {spec}: a kto-train run directory, not a model; its trained model is {run}/{FINAL_DIR}"
    merged = (path / MERGED_DIR).is_dir()
    adapters = (path / FINAL_DIR / "adapter_config.json").is_file()
    if adapters_ok and adapters:
        also = f" (or {run}/{MERGED_DIR}, merged into the base)" if merged else ""
        raise InputError(f"{said} (LoRA adapters): give {run}/{FINAL_DIR}{also}")
    if merged:
        raise InputError(f"{said} (LoRA adapters), merged into the base in {run}/{MERGED_DIR}: give {run}/{MERGED_DIR}")
    saved = [p for p in path.iterdir() if CHECKPOINT_RE.match(p.name) and p.is_dir()]
    if adapters or any((p / "adapter_config.json").is_file() for p in saved):
        how = (
            "rerun its kto-train command with --resume --merge-adapters: it trains only the steps after its last checkpoint"
            if saved
            else f"peft.AutoPeftModelForCausalLM.from_pretrained('{run}/{FINAL_DIR}').merge_and_unload().save_pretrained(DIR), "
            f"and AutoTokenizer.from_pretrained('{run}/{FINAL_DIR}').save_pretrained(DIR)"
        )
        raise InputError(f"{said}, LoRA adapters: merge them into the base ({how}), then give the merged model")
    if (path / FINAL_DIR).is_dir():
        raise InputError(f"{said}: give that")
    raise InputError(f"{said}, written when the run finishes: give it then, or one of the run's checkpoint-STEP folders")
