"""Checkpoints: OUT/checkpoint-STEP/ = HF model dir + optimizer + scheduler + RNG + position.

Saved atomically (temp dir, then rename), so a crash mid-save leaves the previous checkpoint as
the latest. Loading never unpickles arbitrary objects: weights are safetensors, and the
optimizer/scheduler/RNG states go through `torch.load(weights_only=True)`, which accepts only
tensors and plain containers.

A checkpoint is *usable* when its trainer_state.json parses, every *.safetensors file's header
parses and accounts for the file's exact size, and optimizer.pt, scheduler.pt and rng.pt load
(weights_only, memory-mapped: cheap). `--resume` takes the newest usable one and sets newer
corrupt ones aside as `checkpoint-STEP.corrupt`, saying so.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import struct
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from kto.formats.atomic import aside_path, atomic_dir
from kto.formats.errors import InputError

STATE_NAME = "trainer_state.json"
CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
TRAINING_STATE = ("optimizer.pt", "scheduler.pt", "rng.pt")


@dataclass(frozen=True)
class Position:
    """Where training stands: the next step to run is `global_step` (0-based)."""

    global_step: int
    epoch: int
    step_in_epoch: int


def save_model_dir(lm, tokenizer, path: Path) -> None:
    lm.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)


def umask() -> int:
    """The process umask, read from /proc where possible: os.umask() can only be read by setting
    it, which would briefly change it for every thread."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def uniform_permissions(root: Path) -> None:
    """Every file 0666 & ~umask, every directory 0777 & ~umask, as a plain open()/mkdir() gives.

    transformers writes model.safetensors through a private temporary file (mode 0600) while the
    files beside it get the umask's default: a checkpoint would be half unreadable to the group."""
    mask = umask()
    for p in [root, *root.rglob("*")]:
        if not p.is_symlink():
            os.chmod(p, (0o777 if p.is_dir() else 0o666) & ~mask)


@contextlib.contextmanager
def saved_dir(path: Path) -> Iterator[Path]:
    """atomic_dir, with uniform permissions before the rename makes it visible."""
    with atomic_dir(path) as tmp:
        yield tmp
        uniform_permissions(tmp)


def save_checkpoint(out: Path, lm, tokenizer, optimizer, scheduler, position: Position, plan: dict) -> Path:
    """`plan`: what the data order and LR schedule depend on (see setup.plan_identity); a resume
    must match it, or rows would be seen twice or skipped."""
    path = out / f"checkpoint-{position.global_step}"
    with saved_dir(path) as tmp:
        save_model_dir(lm, tokenizer, tmp)
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
        torch.save({"torch": torch.get_rng_state()}, tmp / "rng.pt")
        (tmp / STATE_NAME).write_text(json.dumps({"position": asdict(position), "plan": plan}, indent=2))
    return path


def checkpoints(out: Path) -> list[tuple[int, Path]]:
    """(step, path) of every checkpoint-STEP directory, oldest first, usable or not."""
    found = [(int(m.group(1)), p) for p in out.glob("checkpoint-*") if (m := CHECKPOINT_RE.match(p.name)) and p.is_dir()]
    return sorted(found)


def safetensors_problem(path: Path) -> str | None:
    """Why a .safetensors file cannot be loaded (header, or size against the header), or None."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            if n > size - 8:
                return "truncated header"
            header = json.loads(f.read(n))
        end = max((t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"), default=0)
    except (OSError, ValueError, struct.error, KeyError, TypeError, IndexError) as exc:
        return f"unreadable ({type(exc).__name__})"
    if 8 + n + end != size:
        return f"{size} bytes, its header describes {8 + n + end}"
    return None


def checkpoint_problem(path: Path) -> str | None:
    """Why `path` cannot be resumed from (see the module docstring), or None when it can."""
    try:
        state = json.loads((path / STATE_NAME).read_text())
        Position(**state["position"])
        dict(state["plan"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return f"{STATE_NAME} unreadable ({type(exc).__name__})"
    if (path / "sharded").is_dir():
        return sharded_problem(path)
    weights = sorted(path.glob("*.safetensors"))
    if not weights:
        return "no .safetensors weights"
    for w in weights:
        if problem := safetensors_problem(w):
            return f"{w.name}: {problem}"
    for name in TRAINING_STATE:
        try:
            torch.load(path / name, weights_only=True, mmap=True, map_location="cpu")
        except Exception as exc:  # noqa: BLE001 - whatever torch.load raises, the file cannot be resumed from
            return f"{name}: cannot be loaded ({type(exc).__name__})"
    return None


def sharded_problem(path: Path) -> str | None:
    """An FSDP checkpoint (train/sharding.py): DCP's metadata, the scheduler and rank 0's RNG.
    The shards themselves are checked by DCP when it loads them."""
    if not (path / "sharded" / ".metadata").is_file():
        return "sharded/.metadata missing"
    for name in ("scheduler.pt", "rng-0.pt"):
        try:
            torch.load(path / name, weights_only=True, mmap=True, map_location="cpu")
        except Exception as exc:  # noqa: BLE001 - whatever torch.load raises, the file cannot be resumed from
            return f"{name}: cannot be loaded ({type(exc).__name__})"
    return None


def usable_checkpoint(out: Path, log: Callable[[str], None]) -> Path | None:
    """The newest usable checkpoint; newer corrupt ones are renamed aside (`.corrupt`), so that
    neither --save-total-limit nor a later --resume counts them. None: there is no checkpoint.
    InputError when there are checkpoints and none is usable."""
    found = checkpoints(out)
    corrupt = []
    for _, path in reversed(found):
        problem = checkpoint_problem(path)
        if problem is None:
            for bad, why in corrupt:
                aside = bad.with_name(bad.name + ".corrupt")
                shutil.rmtree(aside, ignore_errors=True)
                os.replace(bad, aside)
                log(f"--resume: {bad} is corrupt ({why}); moved it to {aside.name} and fell back to {path.name}")
            return path
        corrupt.append((path, problem))
    if corrupt:
        raise InputError(f"--resume: no usable checkpoint in {out}: " + "; ".join(f"{p.name}: {why}" for p, why in corrupt))
    return None


def prune_checkpoints(out: Path, keep: int) -> list[Path]:
    """Delete all but the newest `keep` checkpoints (keep = 0: none). Each is renamed to a hidden
    name first, so a kill mid-delete never leaves a half-deleted checkpoint-STEP that looks real;
    the next start removes the leftover."""
    if keep <= 0:
        return []
    removed = []
    for _, path in checkpoints(out)[:-keep]:
        doomed = aside_path(path, "deleted")
        os.replace(path, doomed)
        shutil.rmtree(doomed)
        removed.append(path)
    return removed


def load_training_state(path: Path, optimizer, scheduler) -> tuple[Position, dict]:
    optimizer.load_state_dict(torch.load(path / "optimizer.pt", weights_only=True))
    scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=True))
    torch.set_rng_state(torch.load(path / "rng.pt", weights_only=True)["torch"])
    state = json.loads((path / STATE_NAME).read_text())
    return Position(**state["position"]), state["plan"]
