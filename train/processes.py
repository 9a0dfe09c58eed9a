"""What one training run borrows from its process: accelerate's per-process state and, under a
launcher (torchrun, accelerate launch), torch.distributed's default process group.

accelerate keeps both in process-wide singletons (`PartialState`, `AcceleratorState`), and its
`Accelerator.end_training` destroys the default group. Called at the end of every run, as it
was, that broke a script calling `kto.train.run` twice in one launch (a sweep; train, evaluate,
train again): the second run found a `PartialState` counting 2 processes with no group to talk
through, and a caller's own group was torn down under it. So:
- each run configures accelerate afresh (its mixed precision, its FSDP plugin; train/sharding.py
  even marks the process FSDP in `PartialState`) and gives the state back as it found it;
- a run never destroys the default group. One it made stays for the next call in the same
  launch: destroying it and making a new default group in the same launch is not dependable
  (torch names every default group "0" in the launcher's store, and a second gloo rendezvous
  of a 2-process kto.train.run script hung in ProcessGroupGloo's construction on both ranks).
  The command, kto-train, is the whole life of its process: it destroys the group it made when
  the run ends (`end_own_process_group`), as `end_training` did. A script ends its group with
  `torch.distributed.destroy_process_group()` when it is done with it.
"""

from __future__ import annotations

import contextlib
import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Iterator

# The environment variables accelerate sets for a run's settings (ACCELERATE_USE_FSDP,
# ACCELERATE_MIXED_PRECISION, FSDP_* ...).
_ACCELERATE_ENV = ("ACCELERATE_", "FSDP_")


def process_group_exists() -> bool:
    """torch.distributed's default group is up (made by the caller, or by an earlier run)."""
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized()


@contextlib.contextmanager
def borrowed_accelerate_state() -> Iterator[None]:
    """accelerate's singletons for one run: `AcceleratorState` emptied so that this run's
    `Accelerator(...)` sets it up with this run's settings (an already set one refuses another
    mixed precision and keeps its FSDP plugin), and the three singletons put back as they were
    when the run returns or raises: `GradientState` too, which the run's `Accelerator(...)` sets
    to one accumulation step (a caller's own accumulating Accelerator then synced every batch). A caller's own `PartialState` stays usable; an empty one stays
    empty, and a `PartialState()` made later reads the world from the group that is up."""
    from accelerate.state import AcceleratorState, GradientState, PartialState

    singletons = (PartialState._shared_state, AcceleratorState._shared_state, GradientState._shared_state)
    saved = [dict(shared) for shared in singletons]
    # accelerate also writes its settings into the environment (an FSDP plugin sets
    # ACCELERATE_USE_FSDP=true, which train/sharding.py reads as "--fsdp"): put those back too,
    # or every later run in the process would be sharded.
    environment = {k: v for k, v in os.environ.items() if k.startswith(_ACCELERATE_ENV)}
    AcceleratorState._shared_state.clear()
    try:
        yield
    finally:
        for key in [k for k in os.environ if k.startswith(_ACCELERATE_ENV)]:
            del os.environ[key]
        os.environ.update(environment)
        # In place: the shared dicts are the __dict__ of every state object the caller holds.
        for shared, before in zip(singletons, saved, strict=True):
            shared.clear()
            shared.update(before)


@contextlib.contextmanager
def borrowed_rng_state() -> Iterator[None]:
    """The caller's random generators, given back as they were when the run returns or raises:
    the run seeds torch with --seed (train/setup.py), draws from it (dropout) and, resumed, sets
    a checkpoint's states; a notebook's next `torch.rand` must not continue the run's stream.
    Python's and numpy's global generators are put back too, and the current CUDA device's
    where the caller had initialized CUDA (reading it otherwise would make a CUDA context on a
    device before accelerate picks each process's; a caller who never used CUDA has no stream
    to continue)."""
    import random

    import numpy as np
    import torch

    devices = [torch.cuda.current_device()] if torch.cuda.is_available() and torch.cuda.is_initialized() else []
    python, numpy = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=devices, device_type="cuda"):  # the CPU's always
        try:
            yield
        finally:
            random.setstate(python)
            np.random.set_state(numpy)


def end_own_process_group(existed_before: bool, main_process_busy: bool = False) -> None:
    """kto-train's end: destroy the default group if the run made it (`existed_before` False).
    Every rank gets here (the run returned, or a signal stopped every rank after the same step),
    so each first waits for the others in a bounded barrier, unless the main process is still
    busy after the run (`main_process_busy`: uploading final/ with --push-to-hub, for as long as
    that takes); formats.errors.end_process_group says why the group must also be freed before
    the interpreter exits (a SIGABRT otherwise)."""
    if not existed_before and process_group_exists():
        from kto.formats.errors import end_process_group

        end_process_group(every_rank_here=not main_process_busy)
