"""Checkpoints: OUT/checkpoint-STEP/ = HF model dir + optimizer + scheduler + RNG + position.

Saved atomically (temp dir, then rename), so a crash mid-save leaves the previous checkpoint as
the latest. Loading never unpickles arbitrary objects: weights are safetensors, and the
optimizer/scheduler/RNG states go through `torch.load(weights_only=True)`, which accepts only
tensors and plain containers.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from kto.formats.atomic import atomic_dir

STATE_NAME = "trainer_state.json"
CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")


@dataclass(frozen=True)
class Position:
    """Where training stands: the next step to run is `global_step` (0-based)."""

    global_step: int
    epoch: int
    step_in_epoch: int


def save_model_dir(lm, tokenizer, path: Path) -> None:
    lm.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)


def save_checkpoint(out: Path, lm, tokenizer, optimizer, scheduler, position: Position, plan: dict) -> Path:
    """`plan`: what the data order and LR schedule depend on (see setup.plan_identity); a resume
    must match it, or rows would be seen twice or skipped."""
    path = out / f"checkpoint-{position.global_step}"
    with atomic_dir(path) as tmp:
        save_model_dir(lm, tokenizer, tmp)
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
        torch.save({"torch": torch.get_rng_state()}, tmp / "rng.pt")
        (tmp / STATE_NAME).write_text(json.dumps({"position": asdict(position), "plan": plan}, indent=2))
    return path


def latest_checkpoint(out: Path) -> Path | None:
    found = [(int(m.group(1)), p) for p in out.glob("checkpoint-*") if (m := CHECKPOINT_RE.match(p.name)) and (p / STATE_NAME).is_file()]
    return max(found)[1] if found else None


def load_training_state(path: Path, optimizer, scheduler) -> tuple[Position, dict]:
    optimizer.load_state_dict(torch.load(path / "optimizer.pt", weights_only=True))
    scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=True))
    torch.set_rng_state(torch.load(path / "rng.pt", weights_only=True)["torch"])
    state = json.loads((path / STATE_NAME).read_text())
    return Position(**state["position"]), state["plan"]
