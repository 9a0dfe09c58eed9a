"""Sharded (FSDP) checkpoints of kto-train: where their torch.distributed.checkpoint (DCP) shards
lie and how one process reads them back onto a model.

train/sharding.py writes them and `kto-inspect score` (through adapters.py) and --model's
refusal of a checkpoint folder (sources.py) read them; this one module says what the folder and
its keys are called, so the writer and the readers cannot drift apart.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import InputError

if TYPE_CHECKING:
    import torch


SHARDED_DIR = "sharded"
"""The folder of a kto-train FSDP checkpoint that holds its torch.distributed.checkpoint (DCP)
shards (train/sharding.py writes it): {"model": the state dict of CompletionLogps, keys
"lm.<the policy's key>", "optimizer": …}; one .distcp file per process, and .metadata."""
SHARDED_MODEL = "model.lm."  # how DCP flattens the policy's keys there


def is_sharded_checkpoint(path: Path | None) -> bool:
    return path is not None and (Path(path) / SHARDED_DIR).is_dir()


def load_sharded_weights(module: torch.nn.Module, checkpoint: Path, flag: str = "--model") -> torch.nn.Module:
    """`module` (the policy as kto-train built it: the HF model, or a PeftModel on it) with its
    weights read from FSDP checkpoint `checkpoint`'s DCP shards, in this one process: DCP reads a
    checkpoint saved by N processes into whole tensors without a process group (`no_dist`),
    converting dtypes as it copies. The checkpoint must hold every trainable parameter of
    `module` (every weight of a full fine-tune; the adapters under LoRA, the only ones kto-train
    saves) and nothing that `module` lacks (another model's checkpoint). Its .metadata and bytes
    items are read without unpickling anything but checkpoint metadata and plain data (safe_dcp.py)."""
    from torch.distributed.checkpoint.api import CheckpointException

    from .safe_dcp import DcpFolder, load, read_metadata

    folder = DcpFolder(Path(checkpoint) / SHARDED_DIR, flag, checkpoint)
    metadata = read_metadata(folder)  # checkpoint metadata classes only, or one line: nothing else unpickled
    held = {k.removeprefix(SHARDED_MODEL) for k in metadata.state_dict_metadata if k.startswith(SHARDED_MODEL)}
    own = module.state_dict()
    wanted = {name for name, p in module.named_parameters() if p.requires_grad}  # a tied weight once
    if foreign := sorted(held - own.keys()):
        raise InputError(f"{flag} {checkpoint}: its sharded weights hold {foreign[0]}, which the model it is loaded onto lacks; is that its base model?")
    if missing := sorted(wanted - held):
        raise InputError(f"{flag} {checkpoint}: its sharded weights lack {missing[0]}")
    try:
        with warnings.catch_warnings():  # DCP's "torch.distributed is disabled ... assuming ... a single process": so it is
            warnings.filterwarnings("ignore", message=r"torch\.distributed is disabled", category=UserWarning)
            # Into own: the module's tensors; a key stored as bytes is refused before anything is read.
            load({"model": {f"lm.{k}": own[k] for k in held}}, folder, metadata, no_dist=True)
    except InputError:  # safe_dcp's refusals, already one line
        raise
    except (CheckpointException, RuntimeError, ValueError) as exc:  # CheckpointException is a BaseException
        raise InputError(f"{flag} {checkpoint}: cannot read its sharded weights ({str(exc).strip().splitlines()[-1]})") from None
    return module
