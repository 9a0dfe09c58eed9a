"""The run directory (--out): one kto-train at a time, what a killed run left, and the record of
the configuration (RUN/config.json) that a `--resume` must match.

Only the main process writes here. It takes the lock first; the other ranks wait for its answer
(step.on_main), so none of them starts while another kto-train holds the directory.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterator
from pathlib import Path

from kto.formats.atomic import remove_stale_temps
from kto.formats.errors import InputError
from kto.formats.lock import LOCK_NAME, locked_dir
from kto.formats.manifest import fingerprint_of
from kto.formats.runrecord import RUN_CONFIG_NAME, read_run_config, write_run_config

from .checkpoint import CHECKPOINT_RE, checkpoints, usable_checkpoint
from .config import TrainConfig
from .step import on_main

# Settings that may differ on --resume: how often things are logged, saved and evaluated, where
# metrics go, and memory/speed knobs whose maths is the same. Everything else (β, loss, weights,
# LR and its schedule, batch shape, steps, seed, KL scope, precision, dropout, data, model,
# attention kernel) decides the numbers, and a resume that changed it would silently train a
# different run than the one its metrics describe. Paths are not compared: the cache, the eval
# cache and the initial model are compared by their identities in "derived", so a moved cache
# or model still resumes.
RESUMABLE = frozenset(
    {
        "log_every",
        "save_every",
        "eval_every",
        "save_total_limit",
        "report_to",
        "drift_tolerance",
        "chunk_size",
        "gradient_checkpointing",
        "trust_remote_code",
        # What final/ also writes, and how the same maths is sharded (the checkpoint's own kind is
        # checked against the running FSDP state, which accelerate's environment may turn on too).
        "merge_adapters",
        "fsdp",
    }
)
PATHS = frozenset({"cache", "model", "out", "eval_cache", "resume"})

OUR_NAMES = ("final", RUN_CONFIG_NAME, "metrics.jsonl")


def config_record(cfg: TrainConfig) -> dict:
    """Every TrainConfig field as JSON (paths as strings)."""
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in dataclasses.asdict(cfg).items()}


def record_differences(saved: dict, now: dict) -> list[str]:
    """'name (X there, Y now)' for each setting a resume may not change."""
    out = []
    for part in ("config", "derived"):
        a, b = saved.get(part, {}), now[part]
        for k in sorted(set(a) | set(b)):
            if part == "config" and (k in RESUMABLE or k in PATHS):
                continue
            if a.get(k, "(absent)") != b.get(k, "(absent)"):
                out.append(f"{k} ({_show(a.get(k, '(absent)'))} there, {_show(b.get(k, '(absent)'))} now)")
    return out


def _show(value) -> str:
    """A value for the one-line message; a model identity (a dict of hashes) by a short hash."""
    if isinstance(value, (dict, list)):
        return "identity " + fingerprint_of(value)[:12]
    return str(value)


def clean_stale(out: Path) -> list[str]:
    """Remove what a killed kto-train left in `out`: temp checkpoints and half-deleted ones. An
    `.old` copy whose original is missing (killed between atomic_dir's two renames) is put back
    instead: it is the last complete version. Safe because we hold the lock: nobody else writes."""
    return [str(t) for t in remove_stale_temps(out, owns=written_here, restore_old=True)]


def written_here(name: str) -> bool:
    """A name kto-train writes in --out (checkpoint-STEP, final, config.json, metrics.jsonl)."""
    return bool(CHECKPOINT_RE.match(name)) or name in OUR_NAMES


def has_progress(out: Path) -> bool:
    """An earlier run that a fresh start would mix with: a metrics line, a checkpoint or a final
    model. A start that failed before its first step (an empty metrics.jsonl, a config.json) is
    not one, and is simply replaced."""
    metrics = out / "metrics.jsonl"
    return bool(checkpoints(out)) or (out / "final").exists() or (metrics.is_file() and metrics.stat().st_size > 0)


def open_run_dir(cfg: TrainConfig, record: dict, log: Callable[[str], None]) -> Path | None:
    """Main process, under the lock: the checkpoint to resume from (None: start from --model).

    Refuses (InputError) a fresh start into an earlier run, and a resume whose settings differ
    from RUN/config.json (each difference named)."""
    out = cfg.out
    for line in clean_stale(out):
        log(f"{out}: {line} (left by a killed run)")
    if not cfg.resume:
        if has_progress(out):
            raise InputError(f"--out {out}: holds an earlier run; pass --resume to continue it, or choose another directory")
        return None
    if not checkpoints(out):
        log(f"--resume: no checkpoint in {out}; starting from --model")
        return None
    saved = read_run_config(out)
    if saved is None:
        raise InputError(f"--resume: {out / RUN_CONFIG_NAME} is missing, so the checkpoints' settings cannot be checked; start a new run in another directory")
    differs = record_differences(saved, record)
    if differs:
        raise InputError(
            f"--resume: {out} was trained with other settings: "
            + ", ".join(differs)
            + "; only "
            + ", ".join(sorted(f.replace("_", "-") for f in RESUMABLE))
            + " may change on resume"
        )
    changed = [
        f"--{k.replace('_', '-')} {saved['config'].get(k)} -> {v}" for k, v in record["config"].items() if k in RESUMABLE and saved["config"].get(k) != v
    ]
    if changed:
        log("--resume: changed " + ", ".join(changed))
    return usable_checkpoint(out, log)


@contextlib.contextmanager
def lock_run_dir(out: Path, accelerator) -> Iterator[None]:
    """Hold `out`'s lock (main process) for the whole run; every rank waits for the answer and
    stops with the same line if another process holds it. If the run fails before writing
    anything into a directory it created, the directory is removed again."""
    with contextlib.ExitStack() as stack:

        def take() -> bool:
            created = not out.exists()
            try:
                stack.enter_context(locked_dir(out, "--out"))
            except OSError as exc:
                raise InputError(f"--out {out}: cannot create or lock ({exc.strerror})") from None
            return created

        created = on_main(take, accelerator)
        try:
            yield
        except BaseException:
            if created and accelerator.is_main_process and {p.name for p in out.iterdir()} == {LOCK_NAME}:
                (out / LOCK_NAME).unlink()
                out.rmdir()
            raise


def write_record(out: Path, record: dict) -> None:
    write_run_config(out, record["config"], record["derived"])
