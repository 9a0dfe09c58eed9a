"""Every process of one launch runs with the same settings, or none runs.

Each process of a launch (torchrun, `accelerate launch`, one per machine under --nnodes) parses
its own command line. Nothing made them agree: node 1 given another --max-length staged its rows
cut at that length into the cache node 0's manifest described; another --lr trained under a run
record saying node 0's; another --batch-size waited in a collective forever. So, once the
processes can talk and before any of them writes, each hands the others the settings that decide
the result (`launch_settings`), and all refuse alike with the first that differs
(`first_difference`). One process: nothing to compare, no collective.

kto-precompute (precompute/pipeline.py) and kto-train (train/setup.py, train/eval_only.py) share
it, so it lives here; it imports neither."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from .errors import InputError

SAME = "every process of a launch must be given the same settings"
PATH = "a path"
"""What a path setting is compared as: given or not, never where it points."""


def launch_settings(cfg: Any, *, text_paths: Iterable[str] = (), extra: Mapping[str, object] | None = None) -> dict[str, str]:
    """`cfg`'s fields (a command's config dataclass) as text, keyed `--flag`, then `extra`
    (versions, the tokenizer's identity) under their own names.

    Paths are left out, shown as PATH: each machine may keep the cache, the data, the model and
    the run directory under its own mount point, so paths may legitimately differ between the
    processes of one launch (what the files hold is checked by the fingerprints and identities).
    `text_paths`: fields given as text that may be a local path (--model), left out alike."""
    skip = set(text_paths)
    settings = {}
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        settings[f"--{f.name.replace('_', '-')}"] = PATH if f.name in skip and value is not None else _shown(value)
    settings.update({name: str(value) for name, value in (extra or {}).items()})
    return settings


def _shown(value: object) -> str:
    if isinstance(value, Path):
        return PATH
    if isinstance(value, (tuple, list)):
        return str(type(value)(_shown(v) if isinstance(v, Path) else v for v in value))
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return repr(value)
    return str(value)


def first_difference(gathered: Sequence[Mapping[str, str]]) -> str | None:
    """The line naming the first setting in which a process differs from the main one (process
    0, `gathered[0]`), with both values; None when all agree."""
    main = gathered[0]
    for index, other in enumerate(gathered[1:], start=1):
        for name in (*main, *(n for n in other if n not in main)):
            mine, theirs = main.get(name, "(not set)"), other.get(name, "(not set)")
            if mine != theirs:
                return f"{name}: {theirs} on process {index}, {mine} on the main process: {SAME}"
    return None


def check_launch_agreement(settings: Callable[[], dict[str, str]], state: Any) -> None:
    """Refuse on every process alike (InputError, said once by the main process) when the
    processes of `state`'s launch (an accelerate `Accelerator` or `PartialState`) were given
    different `settings()`, built only when there are several (a single process pays nothing).
    Call it once the process group exists and before anything is written.

    all_gather_object works over gloo (CPU) and NCCL; NCCL's object collectives need this
    process's CUDA device set, which accelerate's state did when it was made."""
    if state.num_processes == 1:
        return
    import torch.distributed as dist  # several processes: torch is loaded and the group is up

    gathered: list[Any] = [None] * state.num_processes
    dist.all_gather_object(gathered, settings())
    line = first_difference(gathered)
    if line is not None:
        raise InputError(line, every_rank=True)  # every process read the same list: the same line


def versions() -> dict[str, str]:
    """The versions of the code that computes the numbers: this package's, torch's and
    transformers'. Another version on one machine may compute other numbers."""
    import importlib.metadata

    import torch
    import transformers

    try:
        ours = importlib.metadata.version("kto-offline")
    except importlib.metadata.PackageNotFoundError:  # run from a source tree, not installed
        ours = "not installed"
    return {
        "kto-offline version": ours,
        "torch version": torch.__version__,
        "transformers version": transformers.__version__,
    }
