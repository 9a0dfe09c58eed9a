"""Checkpoints: OUT/checkpoint-STEP/ = HF model dir + optimizer + scheduler + RNG + position.

Saved atomically (temp dir, then rename), so a crash mid-save leaves the previous checkpoint as
the latest. Loading never unpickles arbitrary objects: weights are safetensors, and the
optimizer/scheduler/RNG states go through `torch.load(weights_only=True)`, which accepts only
tensors and plain containers. An FSDP checkpoint's DCP shards (train/sharding.py) are read through
formats/compute/safe_dcp.py: its .metadata unpickled into DCP's metadata classes only, its bytes
items weights_only.

Every checkpoint carries `checksums.json`, the sha256 of each of its files (an FSDP checkpoint's
every rank's shard and RNG state included), written into the temp folder after the last file and
before the rename makes the checkpoint visible, as a cache's journal is for its shards.

A checkpoint is *usable* when every file has exactly its recorded sha256 (no file missing, none
added), its trainer_state.json parses, every *.safetensors file's header parses and accounts
for the file's exact size and holds only finite floats, and optimizer.pt, scheduler.pt and
rng.pt load (weights_only, memory-mapped). `--resume` takes the newest usable one and sets
newer corrupt ones aside as `checkpoint-STEP.corrupt`, saying which file failed and why.

torch.save writes through `save_torch`: torch's C++ writer reports a full disk as "[enforce fail
at inline_container.cc] unexpected pos", which says nothing of why; save_torch keeps the
OSError ENOSPC that the write met and raises it instead, for `disk_full_names`.
"""

from __future__ import annotations

import contextlib
import json
import numbers
import os
import re
import shutil
import struct
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from kto.formats.atomic import aside_path, atomic_dir, free_name
from kto.formats.compute.library_bars import library_bars_off
from kto.formats.compute.policy_dirs import save_model_dir  # the writer kto-inspect export shares
from kto.formats.errors import InputError
from kto.formats.files import read_json, uniform_permissions
from kto.formats.runrecord import CHECKPOINT_RE, checkpoint_dir
from kto.formats.shards import sha256_file, tree_hashes

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

STATE_NAME = "trainer_state.json"
CHECKSUMS_NAME = "checksums.json"
CHECKSUMS_KIND = "kto-train checkpoint"
FINAL_KIND = "kto-train final"  # the same record in final/ and final-merged/: which files are ours
# What kto-train saves into final/ and final-merged/ (save_pretrained's model, peft's adapters,
# the tokenizer's files, the model card): the files that are ours in one saved before it carried
# checksums.json. Anything else there is a user's, which a rewrite of the folder would delete.
SAVED_NAMES = re.compile(
    r"^(config|generation_config|adapter_config|tokenizer|tokenizer_config|special_tokens_map|added_tokens|vocab|chat_template)\.json$"
    r"|^(README\.md|chat_template\.jinja|merges\.txt|vocab\.txt|tokenizer\.model|spiece\.model|[^/]+\.safetensors|[^/]+\.safetensors\.index\.json)$"
    # Tokenizers' other vocabulary files, and the code save_pretrained copies for --trust-remote-code.
    r"|^(tokenizer\.model\.v\d+|sentencepiece\.bpe\.model|spm\.model|[^/]+\.tiktoken|vocab\.(model|txt|json))$"
    r"|^(modeling|configuration|tokenization|processing|image_processing)_[A-Za-z0-9_]+\.py$"
)
TRAINING_STATE = ("optimizer.pt", "scheduler.pt", "rng.pt")


@dataclass(frozen=True)
class Position:
    """Where training stands: the next step to run is `global_step` (0-based)."""

    global_step: int
    epoch: int
    step_in_epoch: int
    unlogged: tuple[float, ...] = ()
    """The summed StepStats (stacked, reduced over ranks) of the steps after the last logged
    line, when a signal stop saved between two lines; a resumed run adds its steps to them, so
    that its next line covers the steps the uninterrupted run's did. Empty otherwise."""
    skipped_updates: tuple[int, ...] = ()
    """The steps so far whose update fp16's loss scaler skipped (train/loop.py): a resumed run
    counts them on, in its lines and its last word, as the uninterrupted run would."""

    def __post_init__(self) -> None:
        # Read from trainer_state.json: a value of another type fails here (checkpoint_problem
        # says the file is unreadable), not later, in the middle of the resumed run.
        whole = lambda v: isinstance(v, numbers.Integral) and not isinstance(v, bool) and v >= 0
        number = lambda v: isinstance(v, numbers.Real) and not isinstance(v, bool)
        if not (whole(self.global_step) and whole(self.epoch) and whole(self.step_in_epoch)):
            raise ValueError("position: global_step, epoch and step_in_epoch must be whole numbers")
        if not isinstance(self.unlogged, (list, tuple)) or not all(map(number, self.unlogged)):
            raise ValueError("position: unlogged must be a list of numbers")
        if not isinstance(self.skipped_updates, (list, tuple)) or not all(map(whole, self.skipped_updates)):
            raise ValueError("position: skipped_updates must be a list of step numbers")

    def to_json(self) -> dict:
        """trainer_state.json's `position`; `unlogged` and `skipped_updates` only when there are
        any, so a checkpoint without them reads as one saved before the fields existed."""
        state = asdict(self)
        for key in ("unlogged", "skipped_updates"):
            if not state[key]:
                del state[key]
        return state


class _KeepsWriteError:
    """A file for torch.save that keeps the OSError of a failed write: torch's C++ writer swallows
    it and fails later with "[enforce fail at inline_container.cc:672] unexpected pos" (measured
    on a full 64 KiB tmpfs, for a path and for a Python file alike)."""

    def __init__(self, f):
        self.f, self.error = f, None

    def write(self, data) -> int:
        try:
            return self.f.write(data)
        except OSError as exc:
            self.error = self.error or exc
            raise

    def flush(self) -> None:
        self.f.flush()


def rng_states() -> dict:
    """The random generators a resumed run must continue: the CPU's, and on CUDA the current
    device's (dropout on a GPU draws from it, not from the CPU generator)."""
    cuda = torch.cuda.get_rng_state() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
    return {"torch": torch.get_rng_state(), "cuda": cuda}


def restore_rng_states(path: Path, rank: int = 0) -> None:
    """Set the generators `rng_states` saved at `path`: this rank's where the file holds every
    rank's (`ranks`, the replicated checkpoint; rank 0's for a rank it lacks), else the one state
    it holds (an FSDP rank's own file, or a checkpoint from before `ranks`). A checkpoint from
    before the CUDA state was saved, or one made without a GPU, sets the CPU's alone."""
    states = torch.load(path, weights_only=True, map_location="cpu")
    ranks = states.get("ranks") or [states]
    states = ranks[rank] if rank < len(ranks) else ranks[0]
    torch.set_rng_state(states["torch"])
    if states.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(states["cuda"])


def save_torch(obj: object, path: Path) -> None:
    """torch.save that fails with the OSError (ENOSPC) a write met, for the caller's
    `disk_full_names` block (naming the checkpoint) to turn into one line."""
    with open(path, "wb") as f:
        writer = _KeepsWriteError(f)
        try:
            torch.save(obj, writer)
        except RuntimeError:
            if writer.error is not None:
                raise writer.error from None
            raise


def record_checksums(folder: Path, kind: str = CHECKSUMS_KIND) -> None:
    """checksums.json: the sha256 of every file now in `folder`, the last file written into a
    checkpoint's (or final/'s: `kind` FINAL_KIND) temp folder before it is renamed into place."""
    files = tree_hashes(folder)
    files.pop(CHECKSUMS_NAME, None)
    # Each file's size and mtime as saved: a later check of a file still so (foreign_file) needs
    # no hash of gigabytes; renaming the folder into place keeps both.
    stats = {name: _size_and_mtime(folder / name) for name in files}
    record = {"kind": kind, "files": files, "stat": stats}
    (folder / CHECKSUMS_NAME).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")


def _size_and_mtime(path: Path) -> list[int]:
    st = path.stat()
    return [st.st_size, st.st_mtime_ns]


def _checksum_record(folder: Path) -> dict | None:
    """`folder`'s checksums.json when kto-train wrote it (a checkpoint's or final/'s), else None."""
    try:
        record = read_json(folder / CHECKSUMS_NAME)
    except InputError:
        return None
    return record if isinstance(record, dict) and record.get("kind") in (CHECKSUMS_KIND, FINAL_KIND) else None


def foreign_file(folder: Path) -> str | None:
    """'NAME: why' for the first file in `folder` (a checkpoint, final/ or final-merged/ that a
    save would replace whole) that kto-train did not save there, or saved and that was changed
    since (a model card edited before a push): replacing the folder would lose it. None: every
    file is ours as saved. Without a record (a final/ saved before it had one), the files of
    SAVED_NAMES at its top are ours."""
    if not folder.is_dir():
        return None
    present = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file() or p.is_symlink())
    record = _checksum_record(folder) or {}
    recorded, stats = record.get("files"), record.get("stat")
    recorded = recorded if isinstance(recorded, dict) and all(isinstance(v, str) for v in recorded.values()) else None
    stats = stats if isinstance(stats, dict) else {}
    for name in present:
        if recorded is None:
            if not SAVED_NAMES.match(name):
                return f"{name}: not a file kto-train saves"
        elif name == CHECKSUMS_NAME:
            continue
        elif (folder / name).is_symlink() or name not in recorded:
            return f"{name}: not recorded in its {CHECKSUMS_NAME}, so not saved by kto-train"
        elif stats.get(name) != _size_and_mtime(folder / name) and sha256_file(folder / name) != recorded[name]:
            # Hashed only when its size or mtime moved since the save: weights still as saved cost
            # no read of gigabytes at each --resume; weights a user saved over them are found.
            return f"{name}: changed since kto-train saved it"
    return None


def refuse_replacing(folder: Path, flag: str) -> None:
    """InputError, one line naming the first file of `folder` that replacing it would lose."""
    if (problem := foreign_file(folder)) is not None:
        raise InputError(
            f"{flag}: {folder}/{problem}; writing {folder.name}/ again replaces the whole folder, which would delete it: move it out of {folder.name}/ first"
        )


def checksum_problem(path: Path) -> str | None:
    """Which file of checkpoint `path` differs from its record (or the record's own problem)."""
    try:
        record = read_json(path / CHECKSUMS_NAME)
    except InputError as exc:
        return f"{CHECKSUMS_NAME} {str(exc).removeprefix(f'{path / CHECKSUMS_NAME}: ')}, so its files cannot be checked"
    files = record.get("files") if isinstance(record, dict) and record.get("kind") == CHECKSUMS_KIND else None
    if not isinstance(files, dict) or not all(isinstance(v, str) for v in files.values()):
        return f"{CHECKSUMS_NAME} is not a checkpoint checksum record, so its files cannot be checked"
    present = {str(p.relative_to(path)) for p in path.rglob("*") if p.is_file()} - {CHECKSUMS_NAME}
    if missing := sorted(set(files) - present):
        return f"{missing[0]}: missing (recorded in {CHECKSUMS_NAME})"
    if added := sorted(present - set(files)):
        return f"{added[0]}: not recorded in {CHECKSUMS_NAME} (added since the save)"
    for name in sorted(files):
        if (actual := sha256_file(path / name)) != files[name]:
            return f"{name}: sha256 {actual[:12]}… is not the {str(files[name])[:12]}… recorded when it was saved"
    return None


def nonfinite_problem(weights: Path) -> str | None:
    """The first tensor of a .safetensors file holding a NaN or an infinity, or None."""
    from safetensors import safe_open

    from .guard import finite

    with safe_open(weights, framework="pt") as f:
        for key in f.keys():
            if not bool(finite(f.get_tensor(key))):
                return f"{weights.name}: {key} holds non-finite values"
    return None


@dataclass(frozen=True)
class FinalFiles:
    """Text files (name -> text) that final/ and final-merged/ hold beside the weights: their
    README.md model cards. Written into the temp folder before the rename, so that neither
    folder is ever visible without them."""

    final: Mapping[str, str] = field(default_factory=dict)
    merged: Mapping[str, str] = field(default_factory=dict)


@contextlib.contextmanager
def saved_dir(path: Path, files: Mapping[str, str] | None = None, kind: str = FINAL_KIND) -> Iterator[Path]:
    """atomic_dir, with `files` (name -> text) written last, after the block's own files (peft's
    save_pretrained writes a placeholder README.md that the model card replaces), then
    checksums.json of `kind` over all of them, and uniform permissions before the rename makes
    it visible. An existing `path` holding a file we did not save is refused, not replaced
    (kto-train checks this at start, open_run_dir; this is the last guard, for a file put there
    since)."""
    with atomic_dir(path) as tmp, library_bars_off():
        yield tmp
        for name, text in (files or {}).items():
            (tmp / name).write_text(text)
        record_checksums(tmp, kind)  # last: it covers every file above
        uniform_permissions(tmp)
        refuse_replacing(path, "kto-train")


def save_checkpoint(
    out: Path,
    lm: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    position: Position,
    plan: dict,
    rank_rng: list[dict] | None = None,
) -> Path:
    """`plan`: what the data order and LR schedule depend on (see setup.plan_identity); a resume
    must match it, or rows would be seen twice or skipped. `rank_rng`: every process's
    `rng_states()`, in rank order (default: this process's alone)."""
    path = checkpoint_dir(out, position.global_step)
    with saved_dir(path, kind=CHECKSUMS_KIND) as tmp:
        save_model_dir(lm, tokenizer, tmp)
        save_torch(optimizer.state_dict(), tmp / "optimizer.pt")
        save_torch(scheduler.state_dict(), tmp / "scheduler.pt")
        # Every rank's generators: each rank draws its dropout masks on batches of its own rows
        # and shapes (all seeded alike by --seed), so a rank resumed with rank 0's state would
        # draw others than it would have.
        save_torch({"ranks": rank_rng or [rng_states()]}, tmp / "rng.pt")
        (tmp / STATE_NAME).write_text(json.dumps({"position": position.to_json(), "plan": plan}, indent=2))
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
    except (OSError, ValueError, struct.error, KeyError, TypeError, IndexError, RecursionError) as exc:  # RecursionError: nested too deeply
        return f"unreadable ({type(exc).__name__})"
    if 8 + n + end != size:
        return f"{size} bytes, its header describes {8 + n + end}"
    return None


def checkpoint_problem(path: Path) -> str | None:
    """Why `path` cannot be resumed from (see the module docstring), or None when it can."""
    if problem := checksum_problem(path):
        return problem
    try:
        state = json.loads((path / STATE_NAME).read_text())
        Position(**state["position"])
        dict(state["plan"])
    except (OSError, ValueError, KeyError, TypeError, RecursionError) as exc:  # RecursionError: nested too deeply
        return f"{STATE_NAME} unreadable ({type(exc).__name__})"
    if (path / "sharded").is_dir():
        return sharded_problem(path)
    weights = sorted(path.glob("*.safetensors"))
    if not weights:
        return "no .safetensors weights"
    for w in weights:
        if problem := safetensors_problem(w):
            return f"{w.name}: {problem}"
        if problem := nonfinite_problem(w):
            return problem
    for name in TRAINING_STATE:
        try:
            torch.load(path / name, weights_only=True, mmap=True, map_location="cpu")
        except Exception as exc:
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
        except Exception as exc:
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
                aside = free_name(bad.with_name(bad.name + ".corrupt"))  # an earlier one set aside stays
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


def load_training_state(path: Path, optimizer: torch.optim.Optimizer, scheduler: torch.optim.lr_scheduler.LRScheduler, rank: int = 0) -> tuple[Position, dict]:
    # On the CPU first, memory-mapped: the state was saved from the main process's GPU, and every
    # rank loading it there would put N copies on that one device (or N in host memory without
    # the map); load_state_dict moves each tensor to its parameter's device.
    optimizer.load_state_dict(torch.load(path / "optimizer.pt", weights_only=True, map_location="cpu", mmap=True))
    scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=True, map_location="cpu"))
    restore_rng_states(path / "rng.pt", rank)
    state = json.loads((path / STATE_NAME).read_text())
    return Position(**state["position"]), state["plan"]
