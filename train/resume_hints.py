"""What kto-train tells a user who cannot go on as they asked, at --resume: the way back to a
checkpoint an earlier --resume set aside, and the way to train past a run's last step. Apart
from train/rundir.py (which uses train_further_hint) so that TrainConfig's own checks can say the
first without importing rundir's torch; it imports nothing of train/."""

from __future__ import annotations

import shlex
from pathlib import Path

from kto.formats.atomic import free_name
from kto.formats.runrecord import ASIDE_CHECKPOINT_RE, FINAL_DIR, MERGED_DIR


def resume_name_refusal(path: Path) -> str:
    """Why `--resume PATH` named no OUT/checkpoint-STEP, and, for a checkpoint a --resume set
    aside, what it is and the way back: a `.superseded` one (of the continuation an earlier
    `--resume RUN/checkpoint-STEP` abandoned, set_aside_later) resumes once renamed back, the
    name of the current continuation's checkpoint of that step moved aside first; a `.corrupt`
    one (usable_checkpoint) failed its checks and does not."""
    aside = ASIDE_CHECKPOINT_RE.match(path.name)
    if aside is None:
        return f"--resume {path}: expected a checkpoint directory OUT/checkpoint-STEP (or --resume alone for the latest)"
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
    return f"{what}; to go back to it, {taken}rename it back ({shlex.join(['mv', str(path), str(back)])}) and give --resume {back}"


# The differences that ask for another number of steps: the total shapes the LR schedule, so a
# run does not resume with more (transformers' Trainer does); train_further_hint says what does.
STEP_COUNTS = ("epochs (", "max_steps (", "total_steps (")


def train_further_hint(out: Path, config: dict) -> str:
    """The way to train past a run's last step: a new run from its final model (a LoRA run's
    final-merged/: final/ holds only adapters, which --model does not take), once it is written."""
    lora = (config.get("lora_r") or 0) > 0
    model = out / (MERGED_DIR if lora else FINAL_DIR)
    if model.is_dir():
        first, start = "", f"start a new run from {model}"
    elif lora and (out / FINAL_DIR).is_dir():
        first, start = f"write {model} (--resume with --merge-adapters added), then ", "start a new run from it"
    else:
        added = ", --merge-adapters added" if lora else ""
        first, start = f"let this run finish first (--resume with its own settings{added}), then ", f"start a new run from {model}"
    return f"; to train further, {first}{start}: --model {model}, another --out, no --resume (its optimizer state and LR schedule start afresh)"
