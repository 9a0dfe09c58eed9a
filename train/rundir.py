"""The run directory (--out): whose it is, one kto-train at a time, what a killed run left, and
the record of the configuration (RUN/kto_run.json) that a `--resume` must match.

A run directory is either empty (or missing) or one kto-train made, which its record proves;
then every entry in it must be one of RUN_ENTRIES. Anything else (a model directory, a cache, a
folder holding a user's own config.json) is refused on one line naming the first foreign entry,
before anything is written there, the lock file included.

Only the main process writes here. It takes the lock first; the other ranks wait for its answer
(formats.errors.on_main), so none of them starts while another kto-train holds the directory.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import click

from kto.formats.atomic import free_name, parse_temp_name, remove_stale_temps
from kto.formats.cache import refuse_inside_others
from kto.formats.errors import InputError, on_main
from kto.formats.files import output_dir
from kto.formats.lock import LOCK_NAME, locked_dir
from kto.formats.runrecord import (
    ASIDE_CHECKPOINT_RE,
    FINAL_DIR,
    LEGACY_RECORD_NAME,
    MERGED_DIR,
    METRICS_NAME,
    RUN_RECORD_NAME,
    is_run_record,
    is_set_aside_metrics,
    read_run_config,
    record_path,
    write_run_config,
)

from .adapters import model_targets
from .checkpoint import CHECKPOINT_RE, CHECKSUMS_NAME, STATE_NAME, checkpoint_problem, checkpoints, refuse_replacing, usable_checkpoint
from .config import TrainConfig
from .model_card import CARD_MARK, CARD_NAME
from .resume_hints import asks_more_steps, checkpoint_names, train_further_hint
from .resume_record import AFTER_FINAL, RESUMABLE, keep_recorded, precision_hint, record_differences, resumable_changes, versions_note

if TYPE_CHECKING:
    from accelerate import Accelerator

# The metrics of a run that saved nothing to continue from, set aside when a new run starts
# there (start_over).
# Everything that may be in a run directory, the one list: name -> what it must be. The record
# (and a pre-rename run's config.json, when it provably is one) proves the directory ours; the
# others are ours only in a directory so proven. "tensorboard" holds TensorBoard's events, one
# folder per run name (trackers.TENSORBOARD_DIR); "kto" is where runs made before it wrote them
# (accelerate's default, OUT/<project>), kept so that such a run still resumes; report/ is
# kto-inspect run's default output. Temp names are ours when `written_here` owns them (cleaned under the lock).
RUN_ENTRIES: dict[str, str] = {
    RUN_RECORD_NAME: "record",
    LEGACY_RECORD_NAME: "record",
    METRICS_NAME: "file",
    LOCK_NAME: "file",
    FINAL_DIR: "dir",
    MERGED_DIR: "dir",
    "report": "dir",
    "tensorboard": "dir",
    "kto": "dir",
}


def clean_stale(out: Path) -> list[str]:
    """Remove what a killed kto-train left in `out`: temp checkpoints and half-deleted ones. An
    `.old` copy whose original is missing (killed between atomic_dir's two renames) is put back
    instead: it is the last complete version. Safe because we hold the lock: nobody else writes.
    Only in a directory that our record proves a run of ours: elsewhere nothing is ours but a
    record's own temp file (a run killed while writing its first record left only that)."""
    if record_path(out) is None:
        return [str(t) for t in remove_stale_temps(out, owns=_first_record_temp)]
    return [str(t) for t in remove_stale_temps(out, owns=written_here, restore_old=True)]


def _first_record_temp(name: str, kind: str) -> bool:
    """write_json_atomic's temp of the run record: all a run killed while writing its first
    record leaves besides the lock file (which was refused as not ours for good)."""
    return kind == "tmp" and name == RUN_RECORD_NAME


def written_here(name: str, kind: str) -> bool:
    """A temp name kto-train's writers make in --out: atomic_dir's tmp and old for
    checkpoint-STEP (an FSDP save's shared ones too, sharding.shared_temp_names), final and
    final-merged; prune_checkpoints' deleted for checkpoint-STEP; write_json_atomic's and
    MetricsWriter's tmp for the record, metrics.jsonl and its set-aside lines."""
    if is_set_aside_metrics(name):
        return kind == "tmp"
    if CHECKPOINT_RE.match(name):
        return kind in ("tmp", "old", "deleted")
    if name in (FINAL_DIR, MERGED_DIR):
        return kind in ("tmp", "old")
    return kind == "tmp" and name in (RUN_RECORD_NAME, METRICS_NAME)


def is_ours(p: Path) -> bool:
    """`p`, an entry of a run directory its record proves ours, is one kto-train makes there."""
    if p.is_symlink():
        return False  # we write real files and folders, never links
    if (temp := parse_temp_name(p.name)) is not None:
        return written_here(*temp)
    if CHECKPOINT_RE.match(p.name):
        # Its state or checksums: --resume renames aside or deletes checkpoints, so a folder of
        # that name must be one kto-train saved (a user's checkpoint-90/ is not).
        return p.is_dir() and ((p / STATE_NAME).is_file() or (p / CHECKSUMS_NAME).is_file())
    if ASIDE_CHECKPOINT_RE.match(p.name):
        # Set aside by --resume (formats/runrecord.py): corrupt ones, and those newer than the
        # checkpoint `--resume PATH` continued from.
        return p.is_dir()  # set aside by us, whatever it holds now
    if is_set_aside_metrics(p.name):
        return p.is_file()
    if p.name in (FINAL_DIR, MERGED_DIR):
        return p.is_dir() and (_has_our_card(p) or _holds_a_model(p))  # the next final/ replaces it
    kind = RUN_ENTRIES.get(p.name)
    if kind == "record":
        return is_run_record(p)
    return (kind == "file" and p.is_file()) or (kind == "dir" and p.is_dir())


def _holds_a_model(folder: Path) -> bool:
    """Weights and their config, as kto-train saves them: a final/ whose model card was edited
    (as before a push to the Hub) is still the run's."""
    config = (folder / "config.json").is_file() or (folder / "adapter_config.json").is_file()
    return config and any(p.is_file() for p in folder.glob("*.safetensors"))


def _has_our_card(folder: Path) -> bool:
    """`folder` holds the model card kto-train writes into every final/ and final-merged/ in the
    same rename as the weights (model_card.py)."""
    card = folder / CARD_NAME
    try:
        return card.is_file() and not card.is_symlink() and CARD_MARK in card.read_text(encoding="utf-8", errors="replace")[:4096]
    except OSError:
        return False


def foreign_entry(out: Path) -> Path | None:
    """The first entry of `out` that kto-train did not make (None: `out` is missing, empty, or a
    run of ours). Without a record nothing is ours but a lock file and the record's own temp
    file (a start that failed or was killed before its record was written leaves only those)."""
    if not out.is_dir():
        return None
    proven = record_path(out) is not None
    for p in sorted(out.iterdir()):
        first_record = (temp := parse_temp_name(p.name)) is not None and _first_record_temp(*temp) and p.is_file() and not p.is_symlink()
        if not (is_ours(p) if proven else (p.name == LOCK_NAME and is_ours(p)) or first_record):
            return p
    return None


def refuse_foreign(out: Path) -> None:
    """InputError naming the first entry of `out` that is not ours (see the module docstring)."""
    output_dir(out, f"--out {out}")
    refuse_inside_others(out)
    entry = foreign_entry(out)
    if entry is not None:
        shown = entry.name + ("/" if entry.is_dir() and not entry.is_symlink() else "")
        raise InputError(
            f"--out {out}: holds {shown}, which kto-train did not write; a run directory must be empty or a kto-train run's "
            f"(its {RUN_RECORD_NAME} proves it): choose another directory"
        )


def has_progress(out: Path) -> bool:
    """An earlier run that a fresh start would mix with: a metrics line, a checkpoint or a final
    model. A start that failed before its first step (an empty metrics.jsonl, a config.json) is
    not one, and is simply replaced."""
    metrics = out / METRICS_NAME
    return bool(checkpoints(out)) or (out / FINAL_DIR).exists() or (metrics.is_file() and metrics.stat().st_size > 0)


def finished(out: Path) -> bool:
    """The run wrote a final model (its final/, or final-merged/)."""
    return (out / FINAL_DIR).exists() or (out / MERGED_DIR).exists()


def start_over(out: Path, log: Callable[[str], None]) -> bool:
    """A run killed before its first checkpoint (or whose final/ could not be written) left
    nothing to continue from: a new run may start in its place, as a rerun does in transformers'
    Trainer. Its metrics.jsonl is set aside, not deleted. False: the run holds a checkpoint or a
    final model, which a fresh start must not mix with or replace."""
    if checkpoints(out) or finished(out):
        return False
    metrics = out / METRICS_NAME
    aside = free_name(metrics.with_name(metrics.name + ".superseded"))
    os.replace(metrics, aside)
    log(f"--out {out}: its earlier run saved no checkpoint and no final model; starting over (its metrics moved to {aside.name})")
    return True


def open_run_dir(cfg: TrainConfig, record: dict, log: Callable[[str], None]) -> Path | None:
    """Main process, under the lock: the checkpoint to resume from (None: start from --model).

    Refuses (InputError) a directory that is not a run of ours, a fresh start into an earlier
    run, a resume whose settings differ from RUN/kto_run.json (each difference named, whether
    or not a checkpoint exists), and a resume with no checkpoint to resume from."""
    out = cfg.out
    for line in clean_stale(out):
        log(f"{out}: {line} (left by a killed run)")
    refuse_foreign(out)
    if not cfg.resume:
        if has_progress(out) and not start_over(out, log):
            raise _earlier_run(out)
        return None
    saved = refuse_resume(cfg, record)
    note = versions_note(saved, record)  # before keep_recorded gives record the versions the run began with
    keep_recorded(record, saved)
    changed = resumable_changes(saved, record)
    if changed:
        log("--resume: changed " + ", ".join(changed))
    if note:
        log(f"note: {note}")
    # The resumed run writes final/ (and final-merged/) again, whole: a file a user put there
    # since (an evaluation's output) is refused now, not deleted after the training.
    for name in (FINAL_DIR, MERGED_DIR) if cfg.merge_adapters else (FINAL_DIR,):
        refuse_replacing(out / name, "--resume")
    if isinstance(cfg.resume, Path):
        return chosen_checkpoint(out, cfg.resume, log)
    return usable_checkpoint(out, log)


def _earlier_run(out: Path) -> InputError:
    return InputError(f"--out {out}: holds an earlier run; pass --resume to continue it, or choose another directory")


def refuse_before_the_lock(cfg: TrainConfig, record: dict) -> None:
    """open_run_dir's refusals that read --out and change nothing in it, asked before the lock
    where --push-to-hub is to create its repo (setup.py check_inputs): a command refused here
    leaves no empty repo on the Hub, and a repo refused there leaves --out as it was (under the
    lock, open_run_dir clears a killed run's leftovers and sets aside what it cannot use)."""
    if cfg.resume:
        if finished_final(cfg, record) is None:  # a finished run resumed only pushes (loop.py train)
            refuse_resume(cfg, record)
    elif checkpoints(cfg.out) or finished(cfg.out):  # a fresh start that start_over would refuse
        raise _earlier_run(cfg.out)


def refuse_resume(cfg: TrainConfig, record: dict) -> dict:
    """A --resume's refusals that read --out and change nothing in it: a checkpoint elsewhere, no
    run there, other settings than the run's (each named), no checkpoint to resume from. Returns
    the run's record (refuse_before_the_lock asks them too)."""
    out = cfg.out
    if isinstance(cfg.resume, Path):
        refuse_elsewhere(out, cfg.resume)
    saved = read_run_config(out)
    if saved is None:  # (a directory with checkpoints but no record was refused above as not ours)
        raise InputError(f"--resume: {out} holds no run to resume; start it without --resume")
    differs = record_differences(saved, record, model_targets(cfg))
    if differs:
        # A cache rebuilt in place (kto-precompute --overwrite) has another fingerprint even where
        # its rows are the same: said in words, the hashes alone do not tell a user that.
        rebuilt = any(d.startswith("cache_fingerprint ") for d in differs)
        raise InputError(
            f"--resume: {out} was trained with other settings: "
            + ", ".join(differs)
            + "; only "
            + ", ".join(sorted(f.replace("_", "-") for f in RESUMABLE | {"eval_cache"}))
            + " may change on resume"
            + ("; the cache is not the one the run began on (rebuilt or replaced since): a run resumes only on its own cache" if rebuilt else "")
            + (train_further_hint(out, saved.get("config", {})) if asks_more_steps(differs, saved, record) else "")
            + precision_hint(differs, saved)
        )
    if not checkpoints(out):
        # Starting again from --model would replace final/ and the record of a run that saved no
        # checkpoint (--save-every 0), or that was killed before its first one.
        again = "start a new run in another directory" if finished(out) else "run the command without --resume to start it over"
        raise InputError(
            f"--resume: {out} holds no checkpoint to resume from (its run saved none); nothing was changed: {again} (--save-every N makes a run resumable)"
        )
    return saved


def chosen_checkpoint(out: Path, path: Path, log: Callable[[str], None]) -> Path:
    """`--resume PATH`: a usable checkpoint-STEP of this run (--out), else InputError. A bare
    name (`--resume checkpoint-1`, as the refusal below lists them) is the checkpoint of that name
    in --out where there is one: a folder of that name elsewhere (here) would be no checkpoint of
    this run anyway. The newer checkpoints are set aside once the run has resumed from it
    (set_aside_later)."""
    if path.parts == (path.name,) and (out / path).is_dir():
        path = out / path
    if not (path.is_dir() and CHECKPOINT_RE.match(path.name) and path.parent.resolve() == out.resolve()):
        raise InputError(f"--resume {path}: not a checkpoint of the run in --out {out} (its checkpoints: {checkpoint_names(out)})")
    problem = checkpoint_problem(path)
    if problem is not None:
        raise InputError(f"--resume {path}: unusable ({problem})")
    return out / path.name


def refuse_elsewhere(out: Path, path: Path) -> None:
    """`--resume PATH` naming a checkpoint that does not lie in --out: refused before --out is
    looked at, saying whose it is, since "--out holds no run" would send the user to start over
    from --model. Its run resumes with --out set to it (cli.py takes the checkpoint's folder when
    --out is left out); a new run starts from its weights with `--model PATH` (a full-weights
    checkpoint loads as a model; one of LoRA adapters or FSDP shards has no config.json and does
    not, so that is not offered). A bare name (`--resume checkpoint-1`) is --out's checkpoint of
    that name (chosen_checkpoint)."""
    if path.parts == (path.name,) and ((out / path).is_dir() or not path.is_dir()):
        return
    parent = path.parent
    if parent.resolve() == out.resolve():
        return
    if not path.is_dir():
        raise InputError(f"--resume {path}: no such checkpoint directory (and not in --out {out})")
    # Under --config, leaving a flag out brings the file's value back, and the file may name the
    # option by its own key (output_dir, out; resume_from_checkpoint, resume): the advice is what
    # works either way, a typed --out (it wins over the file) and no resume at all.
    in_file = _config_file_in_use()
    without = "with no --resume and no resume key in the --config file" if in_file else "without --resume"
    new_run = f"to start a new run from its weights, give --model {path} {without}" if (path / "config.json").is_file() else ""
    if record_path(parent) is not None:
        resume = f"to continue that run, give --out {parent}" + ("" if in_file else " (or leave --out out)")
        raise InputError(f"--resume {path}: a checkpoint of the run in {parent}, not of --out {out}: " + "; ".join(filter(None, (resume, new_run))))
    why = f"--resume {path}: not a checkpoint of --out {out}, nor of any kto-train run ({parent} holds no run record)"
    raise InputError(f"{why}: {new_run}" if new_run else f"{why}; a resume continues the run in --out from one of its checkpoints")


def _config_file_in_use() -> bool:
    """Whether the kto-train command running took a --config file (False outside one: the
    Python API has no file)."""
    ctx = click.get_current_context(silent=True)
    return ctx is not None and bool(ctx.params.get("config_file"))


def set_aside_later(out: Path, resumed: Path, log: Callable[[str], None]) -> None:
    """Main process, once the policy has resumed from `resumed` (so nothing refused the resume):
    every newer checkpoint is renamed `checkpoint-STEP.superseded`, since the run continues from
    `resumed` and a later `--resume` must not take a checkpoint of the abandoned continuation."""
    step = int(CHECKPOINT_RE.match(resumed.name).group(1))
    for later, newer in checkpoints(out):
        if later > step:
            aside = free_name(newer.with_name(newer.name + ".superseded"))  # an earlier one set aside stays
            os.replace(newer, aside)
            log(f"--resume {resumed}: moved the later {newer.name} aside to {aside.name}")


@contextlib.contextmanager
def lock_run_dir(out: Path, accelerator: Accelerator) -> Iterator[None]:
    """Hold `out`'s lock (main process) for the whole run; every rank waits for the answer and
    stops with the same line if another process holds it. If the run fails before writing
    anything into a directory it created, the directory is removed again."""
    with contextlib.ExitStack() as stack:

        def take() -> bool:
            refuse_foreign(out)  # before the lock file: nothing is written into a directory not ours
            created = not out.exists()
            stack.enter_context(locked_dir(out, "--out"))
            return created

        created = on_main(take, accelerator)
        try:
            yield
        except BaseException:
            if created and accelerator.is_main_process and {p.name for p in out.iterdir()} == {LOCK_NAME}:
                (out / LOCK_NAME).unlink()
                out.rmdir()
            raise


def mark_finished(out: Path, step: int) -> None:
    """Main process, after final/ is written: the run finished at `step`."""
    saved = read_run_config(out)
    write_run_config(out, saved["config"], saved["derived"], finished_step=step, made_with=saved)


def finished_final(cfg: TrainConfig, record: dict) -> Path | None:
    """Main process: the final/ of the run in --out when `--resume` (no PATH) finds it finished
    all its steps with these settings: nothing is left to train, and starting again from its
    last checkpoint would redo the steps after it and replace final/. None otherwise (the usual
    checks of open_run_dir follow)."""
    final = cfg.out / FINAL_DIR
    if cfg.resume is not True or not final.is_dir():
        return None
    saved = read_run_config(cfg.out)
    if saved is None or record_differences(saved, record, model_targets(cfg)):
        return None
    # A setting that asks for more than the steps (--merge-adapters, --push-to-hub) makes the
    # resume run as before, from its last checkpoint. The others change no step of a finished
    # run (when it logs, evaluates or saves, the eval batches, another --eval-cache), so they
    # leave it finished; the "nothing to do" line names them (changes_left_unused).
    if any(saved["config"].get(k) != record["config"].get(k) for k in AFTER_FINAL):
        return None
    return final if saved.get("finished_step") == record["derived"]["total_steps"] else None


def changes_left_unused(out: Path, record: dict) -> list[str]:
    """'--flag X -> Y' for each setting a resume of the finished run in `out` changed: none of
    them applies to a step, since none is left (finished_final)."""
    saved = read_run_config(out)
    return resumable_changes(saved, record) if saved is not None else []


def write_record(out: Path, record: dict) -> None:
    write_run_config(out, record["config"], record["derived"], made_with=record)
