"""What kto-train tells a user who cannot go on as they asked, at --resume: the way back to a
checkpoint an earlier --resume set aside, and the way to train past a run's last step. Apart
from train/rundir.py (which uses train_further_hint) so that TrainConfig's own checks can say the
first without importing rundir's torch; it imports nothing of train/."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

from kto.formats.atomic import free_name
from kto.formats.runrecord import ASIDE_CHECKPOINT_RE, CHECKPOINT_RE, FINAL_DIR, MERGED_DIR


def resume_name_refusal(path: Path, out: Path | None) -> str:
    """Why `--resume PATH` named no OUT/checkpoint-STEP, and, for a checkpoint a --resume set
    aside, what it is and the way back: a `.superseded` one (of the continuation an earlier
    `--resume RUN/checkpoint-STEP` abandoned, set_aside_later) resumes once renamed back, the
    name of the current continuation's checkpoint of that step moved aside first; a `.corrupt`
    one (usable_checkpoint) failed its checks and does not. A bare name is --out's, as a bare
    `checkpoint-STEP` is (rundir.refuse_elsewhere); one that is not there is no such checkpoint,
    said with those the run has."""
    aside = ASIDE_CHECKPOINT_RE.match(path.name)
    if aside is None:
        return f"--resume {path}: expected a checkpoint directory OUT/checkpoint-STEP (or --resume alone for the latest)"
    if out is not None and path.parts == (path.name,) and ((out / path).is_dir() or not path.is_dir()):
        path = out / path
    if not path.is_dir():
        kept = set_aside_names(path.parent)
        return f"--resume {path}: no such checkpoint directory (the checkpoints in {path.parent}: {checkpoint_names(path.parent)}{'; set aside: ' + kept if kept else ''})"
    if aside.group(2) == "corrupt":
        return (
            f"--resume {path}: a checkpoint --resume set aside as corrupt (it failed its checks); it does not resume: "
            "give --resume alone for the newest usable checkpoint, or --resume OUT/checkpoint-STEP"
        )
    back = path.with_name(f"checkpoint-{aside.group(1)}")
    what = f"--resume {path}: a checkpoint an earlier --resume set aside, of the continuation it abandoned (newer than the checkpoint it resumed from)"
    taken = ""
    if back.exists() or back.is_symlink():
        spare = free_name(back.with_name(back.name + ".superseded"))
        taken = f"first rename the {back} there now (this continuation's) aside ({shlex.join(['mv', str(back), str(spare)])}), then "
    return f"{what}; to go back to it, {taken}rename it back ({shlex.join(['mv', str(path), str(back)])}) and give --resume {shlex.quote(str(back))}"


def checkpoint_names(run: Path) -> str:
    """The checkpoint-STEP folders in `run`, oldest first, as the refusals list them ("none")."""
    return _folders_by_step(run, CHECKPOINT_RE) or "none"


def set_aside_names(run: Path) -> str:
    """The checkpoints a --resume set aside in `run` (`.superseded`, `.corrupt`), by step; "" if none."""
    return _folders_by_step(run, ASIDE_CHECKPOINT_RE)


def _folders_by_step(run: Path, pattern: re.Pattern[str]) -> str:
    """The folders in `run` whose names `pattern` matches (its group 1: the step), by step."""
    try:
        entries = list(run.iterdir())
    except OSError:  # no such folder, or not one: nothing in it
        return ""
    found = sorted((int(m.group(1)), p.name) for p in entries if (m := pattern.match(p.name)) and p.is_dir())
    return ", ".join(name for _, name in found)


# The settings that ask for another number of steps (the total shapes the LR schedule, so a run
# does not resume with more, as transformers' Trainer does); train_further_hint says what does.
STEP_COUNTS = ("epochs (", "max_steps (")


def asks_more_steps(differs: list[str], saved: dict, now: dict) -> bool:
    """Whether a refused resume's differences (resume_record.record_differences) ask for more steps than
    the run has: another --epochs or --max-steps, coming to a larger total. Fewer steps, or more
    of them from a smaller batch, are not "train further"."""
    there, here = saved.get("derived", {}).get("total_steps"), now.get("derived", {}).get("total_steps")
    asked = any(d.startswith(STEP_COUNTS) for d in differs)
    return asked and isinstance(there, int) and isinstance(here, int) and here > there


def train_further_hint(out: Path, config: dict) -> str:
    """The way to train past a run's last step: a new run from its final model (a LoRA run's
    final-merged/: final/ holds only adapters, which --model does not take), once it is written.
    Its paths are shell-quoted, as they are typed."""
    lora = (config.get("lora_r") or 0) > 0
    model = out / (MERGED_DIR if lora else FINAL_DIR)
    typed = shlex.quote(str(model))
    if model.is_dir():
        first, start = "", f"start a new run from {typed}"
    elif lora and (out / FINAL_DIR).is_dir():
        first, start = f"write {typed} (--resume with --merge-adapters added), then ", "start a new run from it"
    else:
        added = ", --merge-adapters added" if lora else ""
        first, start = f"let this run finish first (--resume with its own settings{added}), then ", f"start a new run from {typed}"
    return f"; to train further, {first}{start}: --model {typed}, another --out, no --resume (its optimizer state and LR schedule start afresh)"
